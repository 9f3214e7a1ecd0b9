"""Hostile paths: over-long and control-character path arguments to every file-taking command, NUL bytes through the
Python API, and symlinks inside the box that would send a write (a feature batch, a labels batch) outside it.

A path argument is the caller's own file (the CLI runs as the box owner, docs/security.md), so a
path is not refused for pointing elsewhere; what must hold is a clean refusal for what is not a
readable regular file, and no write through a box folder that a symlink has sent outside.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlbox.box import Box
from mlbox.errors import UsageError, ValidationError
from mlbox.features.definitions import Entity, FeatureView, Field

from ..conftest import OS_USER
from ._hostile import assert_refused, tree

T0 = pd.Timestamp("2025-01-01T00:00:00Z")
CUSTOMER = Entity("customer", {"customer_id": "int64"})
VIEW = FeatureView("usage", "customer", "ts", (Field("calls", "int64"),))
LONG = "x" * 5000
BAD_PATHS = [LONG, f"{'d/' * 2100}f.csv", "x\x1b[31m.csv", "/etc", "~nosuchuser/x.csv"]  # devices: see the report (OOM)
DEFECTS: dict[str, str] = {}  # a defect found here is an xfail(strict=True) entry until it is fixed
FILE_ARGS = {
    "features ingest": ["features", "ingest", "usage", "{}"],
    "features push": ["features", "push", "usage", "{}"],
    "features apply": ["features", "apply", "--file", "{}"],
    "features plan": ["features", "plan", "--file", "{}"],
    "monitor apply": ["monitor", "apply", "{}"],
    "train --spec": ["train", "{}"],
    "features training-set": ["features", "training-set", "{}", "--features", "usage:calls", "--out", "o.parquet"],
}


@pytest.fixture
def fs_box(box: Box) -> Box:
    box.features.apply([CUSTOMER, VIEW], OS_USER)
    return box


def frame() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [1, 2], "ts": [T0, T0], "calls": [3, 4]})


@pytest.mark.parametrize("args", [
    pytest.param(args, id=name, marks=[pytest.mark.xfail(strict=True, reason=DEFECTS[name])] if name in DEFECTS else [])
    for name, args in FILE_ARGS.items()
])  # fmt: skip
def test_bad_path_arguments_are_one_clean_error(cli_run, fs_box: Box, args: list[str]) -> None:  # type: ignore[no-untyped-def]
    home = fs_box.paths.home
    outside = tree(home.parent, skip=home)
    failures = []
    for bad in BAD_PATHS:
        result = cli_run("--home", str(home), *[a.replace("{}", bad) for a in args])
        try:
            assert_refused(result)
        except AssertionError as exc:
            failures.append(f"{bad[:40]!r}: {str(exc).splitlines()[0][:200]}")
    assert not failures, "\n".join(failures)
    assert tree(home.parent, skip=home) == outside


@pytest.mark.parametrize("source", ["x\x00y.csv", LONG + ".csv", "/etc", "/dev/null"])
def test_the_python_api_refuses_bad_sources_cleanly(fs_box: Box, source: str) -> None:
    with pytest.raises(UsageError, match="source"):
        fs_box.features.ingest("usage", source, OS_USER)


def test_a_symlinked_batch_folder_never_receives_a_batch(fs_box: Box, tmp_path: Path) -> None:
    """features/usage/v1 replaced by a symlink to a folder outside: the ingest refuses, the folder stays empty."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder = fs_box.paths.features / "usage" / "v1"
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValidationError, match="outside the box"):
        fs_box.features.ingest("usage", frame(), OS_USER)
    assert list(elsewhere.iterdir()) == []
    assert fs_box.features.catalog.batches("usage", 1) == []
    folder.unlink()
    assert fs_box.features.ingest("usage", frame(), OS_USER).batch.row_count == 2


def test_a_symlinked_labels_folder_never_receives_labels(fs_box: Box, tmp_path: Path) -> None:
    from mlbox.serve.labels import ingest_labels

    root = fs_box.paths.predictions
    log = root / "churn" / "log.parquet"
    log.parent.mkdir(parents=True)
    pq.write_table(pa.table({"request_id": ["r1"], "ts": pa.array([T0.to_pydatetime()], pa.timestamp("us", tz="UTC")),
                             "shadow": [False], "entity": pa.array([None], pa.string())}), log)  # fmt: skip
    fs_box.db.execute(
        "INSERT INTO prediction_batches (deployment, path, rows, min_ts, max_ts, created_at) VALUES (?, ?, 1, ?, ?, ?)",
        ("churn", str(log.relative_to(fs_box.paths.home)), "2025-01-01", "2025-01-01", "2025-01-01"),
    )
    labels = tmp_path / "labels.csv"
    labels.write_text("request_id,label\nr1,1\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "churn" / "labels").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(ValidationError, match="outside the box"):
        ingest_labels(fs_box.db, fs_box.audit, root, "churn", labels, OS_USER)
    assert list(elsewhere.iterdir()) == []
    (root / "churn" / "labels").unlink()
    assert ingest_labels(fs_box.db, fs_box.audit, root, "churn", labels, OS_USER).matched == 1


def test_a_symlinked_source_to_a_device_is_refused(fs_box: Box) -> None:
    link = fs_box.paths.home / "data.csv"
    link.symlink_to("/dev/zero")
    with pytest.raises(UsageError, match="regular file"):
        fs_box.features.ingest("usage", "data.csv", OS_USER)


@pytest.mark.parametrize("args", [
    pytest.param(["train", "/dev/zero"], id="train --spec"),
    pytest.param(["features", "plan", "--file", "/dev/zero"], id="features plan"),
    pytest.param(["monitor", "apply", "/dev/zero"], id="monitor apply"),
    pytest.param(["features", "push", "usage", "/dev/zero"], id="features push"),
    pytest.param(["predict", "churn:1", "--input", "/dev/zero", "--out", "o.csv"], id="predict --input"),
])  # fmt: skip
def test_endless_devices_are_never_read(fs_box: Box, args: list[str]) -> None:
    """/dev/zero as a YAML or data file: a clean refusal, in a subprocess whose address space is capped at 3 GB
    (without the cap, a reader that reads it whole takes the machine's memory)."""
    import resource
    import subprocess

    from ..conftest import MLBOX_SCRIPT

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 * 1024**3, 3 * 1024**3))

    result = subprocess.run([str(MLBOX_SCRIPT), "--home", str(fs_box.paths.home), *args], capture_output=True, text=True,
                            timeout=60, preexec_fn=cap, cwd=fs_box.paths.home)  # fmt: skip
    assert result.returncode not in (0, 1), result.stderr
    assert "MemoryError" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
