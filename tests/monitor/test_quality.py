"""Delayed-label quality: real log and label Parquet files joined in DuckDB, metrics checked against sklearn directly."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    r2_score,
    roc_auc_score,
)

from mlbox.errors import NotFound, UsageError, ValidationError
from mlbox.monitor.quality import labelled_rows, quality

from ._quality_logs import T0, Rec, probs, write_labels, write_log

CLASSES = ["no", "yes"]


def ece_loop(conf: np.ndarray, correct: np.ndarray) -> float:
    """Expected calibration error written the slow, obvious way: 10 bins [0, .1), ..., [.9, 1]."""
    total = 0.0
    for b in range(10):
        inside = [i for i, c in enumerate(conf) if (b / 10 <= c < (b + 1) / 10) or (b == 9 and c == 1.0)]
        if inside:
            total += len(inside) / len(conf) * abs(np.mean(correct[inside]) - np.mean(conf[inside]))
    return total


def normalised(rows: list[dict[str, float]], classes: list[str]) -> np.ndarray:
    p = np.array([[r[c] for c in classes] for r in rows])
    return p / p.sum(axis=1, keepdims=True)


def test_binary_metrics_equal_sklearn_on_multirow_requests_with_whole_request_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    records, label_rows = [], []
    truth: dict[str, list[tuple[dict[str, float], str | None]]] = {"primary": [], "canary": [], "shadow": []}
    for i in range(300):
        variant, model = ("canary", "m:2") if i % 4 == 0 else ("primary", "m:1")
        n_rows = int(rng.integers(1, 4))
        outs = [probs(float(rng.random())) for _ in range(n_rows)]
        shadow_outs = [probs(float(rng.random())) for _ in range(n_rows)]
        ts = T0 + timedelta(seconds=i)
        records.append(Rec(f"r{i}", outs, variant=variant, model=model, ts=ts))
        records.append(Rec(f"r{i}", shadow_outs, variant="shadow", model="s:1", ts=ts))
        kind = i % 3  # 0: no label, 1: one label for the whole request, 2: labels for some rows
        labels: list[str | None] = [None] * n_rows
        if kind == 1:
            whole = CLASSES[int(rng.integers(0, 2))]
            label_rows.append((f"r{i}", None, whole))
            labels = [whole] * n_rows
        elif kind == 2:
            for row in range(n_rows):
                if rng.random() < 0.7:
                    labels[row] = CLASSES[int(rng.integers(0, 2))]
                    label_rows.append((f"r{i}", row, labels[row]))
        truth[variant] += list(zip(outs, labels, strict=True))
        truth["shadow"] += list(zip(shadow_outs, labels, strict=True))  # the shadow shares the primary's request_id
    log = write_log(tmp_path / "log.parquet", records)
    lab = write_labels(tmp_path / "labels.parquet", label_rows)

    frame = labelled_rows([log], [lab], None, None)
    assert list(frame.columns) == ["ts", "variant", "model", "request_id", "row", "prediction", "label"]
    assert len(frame) == sum(len(v) for v in truth.values())
    result = quality(frame, "classification", CLASSES)
    assert set(result) == {"primary", "canary", "shadow"}
    for variant, rows in truth.items():
        q = result[variant]
        got = [(o, y) for o, y in rows if y is not None]
        p = normalised([o for o, _ in got], CLASSES)
        y = np.array([CLASSES.index(lab) for _, lab in got])
        pred = p.argmax(axis=1)
        assert q.rows == len(rows) and q.labelled == len(got) == q.scored
        assert q.coverage == pytest.approx(len(got) / len(rows))
        m = q.metrics
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred), abs=1e-12)
        assert m["f1"] == pytest.approx(f1_score(y, pred, pos_label=1), abs=1e-12)
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p[:, 1]), abs=1e-12)
        assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=[0, 1]), abs=1e-12)
        assert m["calibration_error"] == pytest.approx(ece_loop(p.max(axis=1), (pred == y).astype(float)), abs=1e-12)
        assert q.status == "ok" and q.unknown_labels == 0
    assert result["primary"].model == "m:1" and result["shadow"].model == "s:1"
    assert result["canary"].as_dict()["calibration_bins"] == 10


def test_multiclass_macro_f1_and_one_vs_rest_auc_equal_sklearn(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    classes = ["a", "b", "c"]
    outs = [dict(zip(classes, (w / w.sum()).round(6).tolist(), strict=True)) for w in rng.random((400, 3))]
    labels = [classes[int(i)] for i in rng.integers(0, 3, 400)]
    log = write_log(tmp_path / "log.parquet", [Rec(f"r{i}", [o]) for i, o in enumerate(outs)])
    lab = write_labels(tmp_path / "l.parquet", [(f"r{i}", 0, y) for i, y in enumerate(labels)])
    q = quality(labelled_rows([log], [lab], None, None), "classification", classes)["primary"]
    p = normalised(outs, classes)
    y = np.array([classes.index(v) for v in labels])
    assert q.metrics["f1"] == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"), abs=1e-12)
    assert q.metrics["roc_auc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"), abs=1e-12)
    assert q.metrics["log_loss"] == pytest.approx(log_loss(y, p), abs=1e-12)
    assert q.metrics["accuracy"] == pytest.approx(accuracy_score(y, p.argmax(axis=1)))


def test_regression_metrics_equal_sklearn_and_numeric_labels_of_any_type(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(10, 3, 250)
    yhat = y + rng.normal(0, 1, 250)
    log = write_log(tmp_path / "log.parquet", [Rec(f"r{i}", [float(v)]) for i, v in enumerate(yhat)])
    half = 125  # labels split across a DOUBLE file and a VARCHAR file: both read as numbers
    a = write_labels(tmp_path / "a.parquet", [(f"r{i}", 0, float(y[i])) for i in range(half)], pa.float64())
    b = write_labels(tmp_path / "b.parquet", [(f"r{i}", None, repr(float(y[i]))) for i in range(half, 250)], pa.string())
    q = quality(labelled_rows([log], [a, b], None, None), "regression", [])["primary"]
    assert q.metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(y, yhat)), rel=1e-12)
    assert q.metrics["mae"] == pytest.approx(mean_absolute_error(y, yhat), rel=1e-12)
    assert q.metrics["r2"] == pytest.approx(r2_score(y, yhat), rel=1e-12)
    assert q.coverage == 1.0 and q.as_dict()["calibration_bins"] is None


def test_newest_label_file_wins_and_a_rows_own_label_beats_its_requests_in_one_file(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.parquet", [Rec("r1", [probs(0.9)] * 3), Rec("r2", [probs(0.9)] * 2)])
    old = write_labels(tmp_path / "old.parquet", [("r1", 0, "no"), ("r1", 1, "no"), ("r2", None, "no")])
    # newer: r1 row 0 relabelled; r1 whole-request "yes" below row 2's own "no" in the same file; r2 row 1 only
    new = write_labels(tmp_path / "new.parquet", [("r1", 0, "yes"), ("r1", None, "yes"), ("r1", 2, "no"), ("r2", 1, "yes")])
    frame = labelled_rows([log], [old, new], None, None)
    labels = {(r.request_id, r.row): r.label for r in frame.itertuples()}
    assert labels == {("r1", 0): "yes", ("r1", 1): "yes", ("r1", 2): "no", ("r2", 0): "no", ("r2", 1): "yes"}
    # reversed order: the other file is now the newest
    frame = labelled_rows([log], [new, old], None, None)
    labels = {(r.request_id, r.row): r.label for r in frame.itertuples()}
    assert labels == {("r1", 0): "no", ("r1", 1): "no", ("r1", 2): "no", ("r2", 0): "no", ("r2", 1): "no"}


def test_a_later_line_wins_inside_one_file_and_null_labels_are_no_labels(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.parquet", [Rec("r1", [probs(0.9)]), Rec("r2", [probs(0.9)])])
    lab = write_labels(tmp_path / "l.parquet", [("r1", 0, "no"), ("r1", 0, "yes"), ("r2", 0, None)])
    old = write_labels(tmp_path / "old.parquet", [("r2", 0, "no")])
    frame = labelled_rows([log], [old, lab], None, None)
    assert dict(zip(frame["request_id"], frame["label"], strict=True)) == {"r1": "yes", "r2": "no"}


def test_nan_labels_are_no_labels_and_a_missing_file_is_named(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.parquet", [Rec("r1", [1.0]), Rec("r2", [2.0])])
    lab = write_labels(tmp_path / "l.parquet", [("r1", 0, float("nan")), ("r2", 0, 2.5)], pa.float64())
    q = quality(labelled_rows([log], [lab], None, None), "regression", [])["primary"]
    assert (q.labelled, q.unknown_labels, q.metrics["mae"]) == (1, 0, 0.5)
    with pytest.raises(NotFound, match="gone.parquet"):
        labelled_rows([log], [tmp_path / "gone.parquet"], None, None)
    with pytest.raises(NotFound):
        labelled_rows([tmp_path / "gone.parquet"], [], None, None)


def test_unknown_labels_count_as_errors_and_are_reported(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.parquet", [Rec(f"r{i}", [probs(0.8)]) for i in range(4)])
    lab = write_labels(tmp_path / "l.parquet", [("r0", 0, "yes"), ("r1", 0, "yes"), ("r2", 0, "maybe"), ("r3", 0, "YES")])
    q = quality(labelled_rows([log], [lab], None, None), "classification", CLASSES)["primary"]
    assert q.unknown_labels == 2 and set(q.unknown_examples) == {"maybe", "YES"}
    assert q.metrics["accuracy"] == 0.5  # the two unknown labels are wrong predictions
    assert q.metrics["f1"] == pytest.approx(f1_score([1, 1, 0, 0], [1, 1, 1, 1]))
    assert q.metrics["roc_auc"] is None  # the known labels hold one class only
    assert q.metrics["log_loss"] == pytest.approx(-math.log(0.8))  # known labels only
    assert "2 labels are not a known class" in q.reason


def test_labels_match_classes_as_text_booleans_and_integral_numbers(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log.parquet", [Rec(f"r{i}", [probs(0.7, ("False", "True"))]) for i in range(3)])
    lab = write_labels(tmp_path / "l.parquet", [("r0", 0, True), ("r1", 0, False), ("r2", 0, True)], pa.bool_())
    frame = labelled_rows([log], [lab], None, None)
    assert frame["label"].tolist() == ["True", "False", "True"]
    assert quality(frame, "classification", ["False", "True"])["primary"].metrics["accuracy"] == pytest.approx(2 / 3)
    log = write_log(tmp_path / "log2.parquet", [Rec(f"r{i}", [probs(0.7, ("0", "1"))]) for i in range(2)])
    lab = write_labels(tmp_path / "l2.parquet", [("r0", 0, 1.0), ("r1", 0, 0.0)], pa.float64())
    q = quality(labelled_rows([log], [lab], None, None), "classification", ["0", "1"])["primary"]
    assert q.unknown_labels == 0 and q.metrics["accuracy"] == 0.5


def test_window_is_since_inclusive_until_exclusive_and_naive_times_are_utc(tmp_path: Path) -> None:
    recs = [Rec(f"r{i}", [probs(0.6)], ts=T0 + timedelta(minutes=i)) for i in range(5)]
    log = write_log(tmp_path / "log.parquet", recs)
    frame = labelled_rows([log], [], T0 + timedelta(minutes=1), T0 + timedelta(minutes=3))
    assert frame["request_id"].tolist() == ["r1", "r2"]
    naive = datetime(2026, 11, 30, 12, 3)  # T0 + 3 min as naive UTC
    assert labelled_rows([log], [], naive, None)["request_id"].tolist() == ["r3", "r4"]
    assert labelled_rows([log], [], None, naive)["request_id"].tolist() == ["r0", "r1", "r2"]
    with pytest.raises(UsageError):
        labelled_rows([log], [], T0, T0)


def test_empty_windows_no_labels_and_failed_requests_give_clear_results(tmp_path: Path) -> None:
    empty = labelled_rows([], [], None, None)
    assert list(empty.columns) == ["ts", "variant", "model", "request_id", "row", "prediction", "label"] and empty.empty
    out = quality(empty, "classification", CLASSES, variants=("primary", "canary"))
    assert {v: q.status for v, q in out.items()} == {"canary": "empty", "primary": "empty"}
    assert out["primary"].coverage == 0.0 and all(v is None for v in out["primary"].metrics.values())
    assert quality(empty, "regression", []) == {}

    records = [Rec("r1", [probs(0.9)]), Rec("r2", None, error="boom", inputs=[{"a": 1}, {"a": 2}])]
    log = write_log(tmp_path / "log.parquet", records)
    q = quality(labelled_rows([log], [], None, None), "classification", CLASSES)["primary"]
    assert (q.status, q.rows, q.labelled, q.coverage) == ("no labels", 3, 0, 0.0)
    assert all(v is None for v in q.metrics.values())
    lab = write_labels(tmp_path / "l.parquet", [("r2", None, "yes")])
    frame = labelled_rows([log], [lab], None, None)
    assert frame["prediction"].isna().sum() == 2  # the failed request's two rows
    q = quality(frame, "classification", CLASSES)["primary"]
    assert (q.labelled, q.scored, q.status) == (2, 0, "no labels") and q.coverage == pytest.approx(2 / 3)
    # a window that holds nothing, over a file that exists
    assert labelled_rows([log], [lab], T0 + timedelta(days=1), None).empty
    assert labelled_rows([log], [write_labels(tmp_path / "none.parquet", [])], None, None)["label"].isna().all()


def test_files_with_typed_columns_and_without_read_together(tmp_path: Path) -> None:
    new = write_log(tmp_path / "new.parquet", [Rec("r1", [probs(0.9)])], extra={"x.a": pa.array([[1.0]], pa.list_(pa.float64()))})
    old = write_log(tmp_path / "old.parquet", [Rec("r2", [probs(0.9)])])
    assert sorted(labelled_rows([old, new], [], None, None)["request_id"]) == ["r1", "r2"]


def test_bad_input_raises_mlbox_errors(tmp_path: Path) -> None:
    frame = labelled_rows([], [], None, None)
    with pytest.raises(UsageError):
        quality(frame, "ranking", CLASSES)
    with pytest.raises(UsageError):
        quality(frame, "classification", ["only"])
    with pytest.raises(ValidationError):
        quality(frame.drop(columns=["label"]), "classification", CLASSES)
    log = write_log(tmp_path / "log.parquet", [Rec("r1", [0.5])])
    lab = write_labels(tmp_path / "l.parquet", [("r1", 0, "yes")])
    with pytest.raises(ValidationError, match="not \\{class: probability\\}"):
        quality(labelled_rows([log], [lab], None, None), "classification", CLASSES)
    bad = tmp_path / "bad.parquet"
    write_log(bad, [Rec("r1", [0.5])])
    with pytest.raises(ValidationError, match="not a label batch"):
        labelled_rows([log], [bad], None, None)


def test_labels_from_a_real_labels_ingest_on_a_log_a_real_prediction_log_wrote(tmp_path: Path) -> None:
    from mlbox.box import Box
    from mlbox.config import load_settings
    from mlbox.serve.labels import ingest_labels, prediction_files
    from mlbox.serve.predlog.wire import Record
    from mlbox.serve.predlog.writer import PredictionLog

    from ..conftest import OS_USER

    home = tmp_path / "box"
    Box.create(load_settings(home, environ={}), OS_USER).close()
    ps = [0.9, 0.2, 0.7, 0.4]
    with Box(load_settings(home, environ={})) as box:
        log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600)
        log.extend(
            [
                Record(1.7e9 + i, f"q{i}", "dep", "m:1", "primary", False, 2.0, None, json.dumps([{"x": 1}] * 2),
                       json.dumps([probs(p), probs(1 - p)]), None)  # fmt: skip
                for i, p in enumerate(ps)
            ]
        )
        assert log.flush() == 4
        source = tmp_path / "labels.csv"
        source.write_text("request_id,row,label\nq0,0,yes\nq0,1,no\nq1,,no\nq2,1,yes\nnowhere,0,yes\n")
        result = ingest_labels(box.db, box.audit, box.paths.predictions, "dep", source, OS_USER)
        assert (result.rows, result.matched) == (5, 4)
        files = prediction_files(box.db, box.paths.predictions, "dep")
        batches = box.db.query("SELECT path FROM label_batches WHERE deployment = ? ORDER BY id", ("dep",))
        label_files = [home / r["path"] for r in batches]
    frame = labelled_rows(files, label_files, None, None)
    got = {(r.request_id, r.row): r.label for r in frame.itertuples() if isinstance(r.label, str)}
    # labels ingest reads the label column as text, as written (DuckDB's sniffer would make yes/no booleans)
    assert got == {("q0", 0): "yes", ("q0", 1): "no", ("q1", 0): "no", ("q1", 1): "no", ("q2", 1): "yes"}
    q = quality(frame, "classification", CLASSES)["primary"]
    # q0: 0.9→yes ✓, 0.1→no ✓; q1: 0.2→no ✓, 0.8→yes ✗; q2 row 1: 0.3→no ✗
    assert (q.rows, q.labelled, q.metrics["accuracy"]) == (8, 5, pytest.approx(3 / 5))
