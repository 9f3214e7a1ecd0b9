"""The rows `mlbox bench monitor` reports, from what its measured child processes printed."""

from __future__ import annotations

import statistics
from typing import Any

from mlbox.bench.monitor_data import CATEGORICAL_SHIFTS, NUMERIC_SHIFTED
from mlbox.bench.report import Recorder, Row

GIB = 1024**3
FLOOR = "numpy/scipy, arrays in memory"
PHASES = {"read_window": "reading the log (its Parquet files, one pass for every variant)", "compare_rows": "the statistics (every test, every column)"}


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def _detection(variant: str, found: dict[str, Any]) -> Row:
    """Whether the check flagged exactly the shifted features of one variant."""
    shifted = set(NUMERIC_SHIFTED) | set(CATEGORICAL_SHIFTS)
    drifted = {name for name, tests in found["features"].items() if tests["drifted"]}
    hit, false = len(drifted & shifted), len(drifted - shifted)
    unchanged = len(found["features"]) - len(shifted)
    return Row(f"drift found ({variant}, {found['rows']:,} rows): {hit}/{len(shifted)} shifted features, "
               f"{false}/{unchanged} unchanged ones flagged{' (' + ', '.join(sorted(drifted - shifted)) + ')' if false else ''}; "
               f"the variant's verdict: {'drift' if found['drifted'] else 'no drift'} ({found['share']:.0%} of features)",
               float(hit), None, "features", "every shifted, no unchanged", hit == len(shifted) and not false)  # fmt: skip


BINNED = ("psi.value", "js.value", "chi2.statistic", "chi2.p_value")  # on the same bins: equal up to rounding
SKETCHED = ("ks.statistic", "wasserstein.value")  # from the profile's quantile grid, not the raw reference


def _agreement(mlbox: dict[str, Any], floor: dict[str, Any]) -> list[Row]:
    """The largest difference between the check's statistics and the floor's, per test, over every column and variant."""
    worst = dict.fromkeys((*BINNED, *SKETCHED), 0.0)
    for variant, ours in mlbox.items():
        for group in ("features", "outputs"):
            for name, tests in ours[group].items():
                other = floor[variant][group].get(name, {})
                for key in worst:
                    a, b = tests.get(key), other.get(key)
                    if a is not None and b is not None:
                        worst[key] = max(worst[key], abs(a - b) / max(abs(b), 1.0))  # relative above 1 (chi² statistics)
    binned, sketched = max(worst[k] for k in BINNED), max(worst[k] for k in SKETCHED)
    return [
        Row("agreement with the floor, PSI, JS and chi2 (statistic, p-value) on the same decile bins: largest difference",
            binned, None, "abs diff", "<= 1e-6", binned <= 1e-6),
        Row(f"agreement with the floor, KS D ({worst['ks.statistic']:.1e}) and Wasserstein/sd ({worst['wasserstein.value']:.1e}) "
            "from the profile's 1,001-point quantile grid against the raw reference: largest difference",
            sketched, None, "abs diff", "report", None),
    ]  # fmt: skip


def report(rec: Recorder, runs: dict[str, list[dict[str, Any]]], *, rows: int, rounds: int, full: bool, logged: int,
           files: int) -> None:  # fmt: skip
    """The rows: seconds and peak RSS against the floor, where the time goes, detection per variant, agreement,
    context, the log. `runs` holds what each measured child process printed, by side."""
    took, floor = median_of(runs["mlbox"], "seconds"), median_of(runs["floor"], "seconds")
    rss, floor_rss = median_of(runs["mlbox"], "peak_bytes") / GIB, median_of(runs["floor"], "peak_bytes") / GIB
    found = runs["mlbox"][-1]["variants"]
    features = len(next(iter(found.values()))["features"])
    outputs = len(next(iter(found.values()))["outputs"])
    shape = f"{rows:,} logged rows x {features} features + {outputs} outputs, {len(found)} variants"
    rec.add(Row(f"drift check, every test on every column: {shape} (floor/mlbox {floor / took:.1f}x; median of {rounds})",
                took, floor, "s", "< 3 s" if full else "report", took < 3 if full else None, FLOOR))  # fmt: skip
    rec.add(Row(f"  peak RSS of the check's process (median of {rounds})", rss, floor_rss, "GiB",
                "< 2 GiB" if full else "report", rss < 2 if full else None, FLOOR))  # fmt: skip
    for name, label in PHASES.items():
        spent = [r["phases"][name] for r in runs["mlbox"] if name in r.get("phases", {})]
        if spent:
            rec.add(Row(f"  where the check's time goes: {label}, all variants (median of {len(spent)})",
                        statistics.median(spent), None, "s", "report", None))  # fmt: skip
    for variant, result in found.items():
        rec.add(_detection(variant, result))
    for row in _agreement(found, runs["floor"][-1]["variants"]):
        rec.add(row)
    for name, seconds in (("Evidently 0.7: 130 s (PSI on every column) to 290 s (default preset), 3.6 GiB", 130.0),
                          ("NannyML 0.13 (KS + chi2 + JS, 10 chunks): about 60 s, 2.5 GiB", 60.0)):  # fmt: skip
        label = f"{name.split(':')[0]}, 1M rows (issue's figure, not measured here)"
        rec.add(Row(f"context, not measured here: {name}, same shape at 1M rows", took, seconds if full else None, "s",
                    "report", None, label))  # fmt: skip
    rec.add(Row(f"prediction log read by the check: {logged:,} single-row records in {files} Parquet file(s) "
                "(written by the real writer with typed columns; not timed)", float(logged), None, "records",
                "report", None))  # fmt: skip
