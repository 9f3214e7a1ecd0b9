"""Serving statistics from real log files: request/row/error counts, error rates, latency percentiles against numpy."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from mlbox.errors import NotFound, UsageError
from mlbox.monitor.serving import serving_stats

from ._quality_logs import T0, Rec, probs, write_log


def traffic(tmp_path: Path) -> tuple[list[Path], dict[str, np.ndarray], dict[str, tuple[int, int]]]:
    """Two log files of primary and canary traffic; the latencies and (rows, errors) written per variant."""
    rng = np.random.default_rng(0)
    latencies = {"primary": rng.lognormal(1.0, 0.5, 900), "canary": rng.lognormal(1.5, 0.7, 300)}
    files, i = [], 0
    expected = {"primary": (0, 0), "canary": (0, 0)}
    for part in range(2):  # two files, like two flushes
        records = []
        for variant, lat in latencies.items():
            model = "m:2" if variant == "canary" else "m:1"
            half = lat[part * len(lat) // 2 : (part + 1) * len(lat) // 2]
            for value in half:
                failed = variant == "canary" and i % 10 == 0  # every tenth canary request fails
                rows = 1 + i % 3
                records.append(Rec(f"r{i}", None if failed else [probs(0.5)] * rows, variant=variant, model=model,
                                   ts=T0 + timedelta(seconds=i), latency_ms=float(value), error="boom" if failed else None,
                                   inputs=[{"a": 1}] * rows))  # fmt: skip
                expected[variant] = (expected[variant][0] + rows, expected[variant][1] + failed)
                i += 1
        files.append(write_log(tmp_path / f"log{part}.parquet", records))
    return files, latencies, expected


def test_counts_error_rates_and_percentiles_match_numpy(tmp_path: Path) -> None:
    files, latencies, expected = traffic(tmp_path)
    stats = serving_stats(files, None, None)
    assert list(stats) == ["canary", "primary"]
    for variant, lat in latencies.items():
        s = stats[variant]
        assert (s.requests, (s.rows, s.errors)) == (len(lat), expected[variant])
        assert s.p50_ms == pytest.approx(np.percentile(lat, 50), rel=1e-9)
        assert s.p99_ms == pytest.approx(np.percentile(lat, 99), rel=1e-9)
    canary = stats["canary"]
    assert canary.errors == 30 and canary.error_rate == pytest.approx(30 / 300)
    assert stats["primary"].error_rate == 0.0
    d = canary.as_dict()
    assert set(d) == {"variant", "model", "requests", "rows", "errors", "error_rate", "p50_ms", "p99_ms", "first_ts", "last_ts"}
    assert d["model"] == "m:2" and d["first_ts"].endswith("Z")


def test_rows_count_outputs_or_a_failed_requests_inputs_and_errors_are_exact(tmp_path: Path) -> None:
    records = [
        Rec("a", [probs(0.1)] * 3, latency_ms=1.0),
        Rec("b", None, error="ValueError: bad", inputs=[{"a": 1}] * 2, latency_ms=3.0),
        Rec("c", [probs(0.1)], variant="shadow", model="s:1", latency_ms=2.0),
        Rec("d", [probs(0.1)], variant="canary", model="m:2", latency_ms=5.0, ts=T0 + timedelta(hours=1)),
    ]
    stats = serving_stats([write_log(tmp_path / "log.parquet", records)], None, None)
    assert (stats["primary"].requests, stats["primary"].rows, stats["primary"].errors) == (2, 5, 1)
    assert stats["primary"].error_rate == 0.5
    assert stats["primary"].p50_ms == pytest.approx(np.percentile([1.0, 3.0], 50))
    assert stats["shadow"].model == "s:1" and stats["canary"].first_ts == T0 + timedelta(hours=1)


def test_window_bounds_and_empty_results(tmp_path: Path) -> None:
    records = [Rec(f"r{i}", [probs(0.5)], latency_ms=float(i), ts=T0 + timedelta(minutes=i)) for i in range(10)]
    log = write_log(tmp_path / "log.parquet", records)
    s = serving_stats([log], T0 + timedelta(minutes=2), T0 + timedelta(minutes=5))["primary"]
    assert s.requests == 3 and s.p50_ms == 3.0
    assert s.first_ts == T0 + timedelta(minutes=2) and s.last_ts == T0 + timedelta(minutes=4)
    none = serving_stats([log], T0 + timedelta(days=1), None, variants=("primary", "canary"))
    assert {v: (x.requests, x.error_rate, x.p99_ms) for v, x in none.items()} == {
        "canary": (0, None, None), "primary": (0, None, None)}  # fmt: skip
    assert serving_stats([], None, None) == {}
    assert serving_stats([], None, None, variants=("canary",))["canary"].as_dict()["first_ts"] is None
    with pytest.raises(UsageError):
        serving_stats([log], T0 + timedelta(minutes=5), T0)
    with pytest.raises(NotFound):
        serving_stats([tmp_path / "gone.parquet"], None, None)
