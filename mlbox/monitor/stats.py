"""Drift statistics: exact two-sample tests, their profile-based versions, and the per-feature and dataset verdicts.

The exact functions (`ks_2samp`, `chi2_homogeneity`, `js_distance`, `wasserstein`, `psi`) take
two samples or two count vectors and agree with scipy. `compare` is what a check runs: one
feature's current window against its stored reference profile (`mlbox.flavors.profile`), from
one sort of the current values plus searches over at most 1001 grid points — the reference is
never reread. Definitions, binning and precision: docs/monitoring-statistics.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import special
from scipy import stats as sps

from mlbox.errors import UsageError
from mlbox.monitor.verdict import KIND_FLOORS, DatasetVerdict, FeatureDrift, FeatureThresholds, Histogram

PSI_EPS = 1e-4  # share given to an empty bin in PSI, so ln(c/r) stays finite
EXACT_KS_MAX_N = 10_000  # scipy's ks_2samp uses its exact p-value up to this sample size ('auto')
SUBSTEPS = 8  # pieces per step of a quantile grid in the Wasserstein integral
UNSEEN = "(unseen)"  # the categorical bin of levels the reference never saw


# -- exact two-sample statistics ------------------------------------------------------------------


def ks_2samp(a: Any, b: Any) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov–Smirnov (D, p-value), as `scipy.stats.ks_2samp` (method 'auto').

    D is computed here; p is scipy's exact p-value when both samples have at most 10,000 values,
    else Smirnov's asymptotic distribution (`ks_pvalue`), exactly what scipy's default does.
    """
    x, y = np.sort(_sample(a, "ks_2samp")), np.sort(_sample(b, "ks_2samp"))
    both = np.concatenate([x, y])
    diff = np.searchsorted(x, both, side="right") / x.size - np.searchsorted(y, both, side="right") / y.size
    d = float(np.max(np.abs(diff)))
    if max(x.size, y.size) <= EXACT_KS_MAX_N:
        return d, float(sps.ks_2samp(x, y, method="exact").pvalue)
    return d, ks_pvalue(d, x.size, y.size)


def ks_pvalue(d: float, n1: int, n2: int) -> float:
    """Asymptotic two-sided KS p-value of D for samples of n1 and n2 values (scipy's method='asymp')."""
    en = round(n1 * n2 / (n1 + n2))
    return float(np.clip(sps.kstwo.sf(d, en), 0.0, 1.0))


FAST_KS_MIN_N = 10_000  # above this effective size the profile path uses Stephens' approximation


def ks_pvalue_fast(d: float, n1: int, n2: int) -> float:
    """`ks_pvalue`, but for effective sizes above 10,000 Stephens' approximation of it (the profile path's).

    Q_KS((√n + 0.12 + 0.11/√n)·D) with n = n1·n2/(n1+n2) (Stephens 1970). Measured against scipy's
    `kstwo.sf`: relative error under 1e-3 at p = 0.01 and under 5e-3 at p = 1e-4 for n ≥ 50,000
    (docs/monitoring-statistics.md). Why not scipy's: `kstwo.sf` takes 85–415 ms per call at
    n = 1e5–5e5 when p is small, about 1 s of a 50-feature, two-variant check of 1M rows; this takes
    microseconds.
    """
    en = n1 * n2 / (n1 + n2)
    if en <= FAST_KS_MIN_N:
        return ks_pvalue(d, n1, n2)
    root = math.sqrt(en)
    return float(np.clip(special.kolmogorov((root + 0.12 + 0.11 / root) * d), 0.0, 1.0))


def chi2_homogeneity(ref_counts: Any, cur_counts: Any, *, correction: bool = True) -> tuple[float, float, int]:
    """Chi-squared test that two count vectors come from one distribution: (statistic, p-value, dof).

    The 2×k homogeneity test, equal to `scipy.stats.chi2_contingency` on the table with its empty
    columns dropped (Yates' correction when dof is 1, as scipy's default). Either row empty: NaNs.
    """
    table = np.vstack([np.asarray(ref_counts, dtype=np.float64), np.asarray(cur_counts, dtype=np.float64)])
    table = table[:, table.sum(axis=0) > 0]
    rows = table.sum(axis=1)
    if table.shape[1] == 0 or rows.min() <= 0:
        return float("nan"), float("nan"), max(table.shape[1] - 1, 0)
    dof = table.shape[1] - 1
    if dof == 0:
        return 0.0, 1.0, 0
    expected = np.outer(rows, table.sum(axis=0)) / rows.sum()
    if dof == 1 and correction:
        diff = expected - table
        table = table + np.sign(diff) * np.minimum(0.5, np.abs(diff))
    statistic = float(np.sum((table - expected) ** 2 / expected))
    return statistic, float(sps.chi2.sf(statistic, dof)), dof


def js_distance(p: Any, q: Any) -> float:
    """Jensen–Shannon distance in base 2 (in [0, 1]) of two count or probability vectors, as scipy's `jensenshannon`."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2.0
    divergence = (np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / np.log(2.0)
    return float(np.sqrt(max(divergence, 0.0) / 2.0))


def wasserstein(a: Any, b: Any) -> float:
    """First Wasserstein distance of two samples, ∫|F_a − F_b| dx, as `scipy.stats.wasserstein_distance`."""
    x, y = np.sort(_sample(a, "wasserstein")), np.sort(_sample(b, "wasserstein"))
    both = np.sort(np.concatenate([x, y]))
    deltas = np.diff(both)
    fx = np.searchsorted(x, both[:-1], side="right") / x.size
    fy = np.searchsorted(y, both[:-1], side="right") / y.size
    return float(np.sum(np.abs(fx - fy) * deltas))


def psi(ref_counts: Any, cur_counts: Any, eps: float = PSI_EPS) -> float:
    """Population stability index Σ (c − r)·ln(c / r) over bins of shares; an empty bin's share becomes `eps`."""
    r = _shares(np.asarray(ref_counts, dtype=np.float64))
    c = _shares(np.asarray(cur_counts, dtype=np.float64))
    r, c = np.where(r > 0, r, eps), np.where(c > 0, c, eps)
    return float(np.sum((c - r) * np.log(c / r)))


def _sample(values: Any, what: str) -> np.ndarray:
    out = np.asarray(values, dtype=np.float64).ravel()
    if out.size == 0:
        raise UsageError(f"{what} needs two non-empty samples")
    return out


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


# -- profile-based comparison ---------------------------------------------------------------------


def compare(name: str, entry: Mapping[str, Any], current: Any, thresholds: FeatureThresholds) -> FeatureDrift:
    """One feature's current window against its reference profile entry; never raises on data.

    `current` is a float ndarray (NaN = null) for a numeric entry, or `{level | None: count}`
    (None = nulls) for a categorical one. The result's status is "empty" (no rows), "insufficient"
    (all null, fewer than `min_rows` values, an unusable reference) or the verdict "ok" / "drift".
    """
    kind = entry.get("kind")
    if kind == "numeric":
        if isinstance(current, Mapping):
            return _unusable(name, "numeric", 0, "current values are level counts, but the reference is numeric")
        try:
            values = np.asarray(current, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            return _unusable(name, "numeric", 0, "current values are not numbers")
        return _compare_numeric(name, entry, values, thresholds)
    if kind == "categorical":
        if not isinstance(current, Mapping):
            return _unusable(name, "categorical", 0, "current values are not level counts, but the reference is categorical")
        return _compare_categorical(name, entry, current, thresholds)
    return _unusable(name, str(kind), 0, f"the reference profile has an unknown kind {kind!r}")


def _unusable(name: str, kind: str, rows: int, reason: str) -> FeatureDrift:
    return FeatureDrift(name=name, kind=kind, status="insufficient", rows=rows, reason=reason)


def _compare_numeric(name: str, entry: Mapping[str, Any], current: np.ndarray, th: FeatureThresholds) -> FeatureDrift:
    rows = int(current.size)
    grid = np.asarray(entry.get("grid") or [], dtype=np.float64)
    ref_n = int(entry.get("rows", 0)) - int(entry.get("nulls", 0))
    if grid.size == 0 or ref_n <= 0:
        return _unusable(name, "numeric", rows, "the reference has no non-null values to compare with")
    edges = np.asarray(entry.get("edges") or [], dtype=np.float64)
    ref_counts = np.asarray(entry["counts"], dtype=np.float64)
    labels = _bin_labels(edges)
    if rows == 0:
        hist = Histogram(labels, tuple(_shares(ref_counts).tolist()), (0.0,) * len(labels))
        return FeatureDrift(name=name, kind="numeric", status="empty", rows=0, reason="no rows in the window", histogram=hist)
    s = np.sort(current)  # NaN sorts last; ±inf are kept out as nulls too (no distance is defined to them)
    x = s[np.searchsorted(s, -np.inf, side="right") : np.searchsorted(s, np.inf, side="left")]
    m = int(x.size)
    null_rate = (rows - m) / rows
    if m == 0:
        hist = Histogram(labels, tuple(_shares(ref_counts).tolist()), (0.0,) * len(labels))
        return FeatureDrift(
            name=name, kind="numeric", status="insufficient", rows=rows, null_rate=null_rate, histogram=hist,
            reason=f"all {rows} values are null (reference: {_pct(int(entry.get('nulls', 0)) / int(entry['rows']))} null)",
        )  # fmt: skip
    cdf = np.asarray(entry["cdf"], dtype=np.float64)
    right = np.searchsorted(x, grid, side="right") / m  # F_cur(g)
    left = np.searchsorted(x, grid, side="left") / m  # F_cur(g-)
    exact = _grid_is_exact(entry, grid, cdf)
    # With every distinct reference value in the grid, F_ref stays at cdf[j] up to the next grid point
    # while F_cur climbs from right[j] to left[j+1]: the sup is at one of those ends, so D is exact.
    # On a quantile grid F_ref's value just below a grid point is unknown (within 1/1000); the grid
    # points alone give D without that upward bias, low by at most one step (docs: precision).
    between = np.max(np.abs(cdf[:-1] - left[1:]), initial=0.0) if exact else 0.0
    d = float(max(np.max(np.abs(cdf - right)), between, left[0]))
    p = ks_pvalue_fast(d, ref_n, m)
    cur_counts = np.diff(np.concatenate([[0], np.searchsorted(x, edges, side="right"), [m]])).astype(np.float64)
    chi2, chi2_p, dof = chi2_homogeneity(ref_counts, cur_counts)
    std = float(entry.get("std") or 0.0)
    w = _wasserstein_from_profile(entry, grid, cdf, x, exact) / std if std > 0 else None
    lo, hi = float(entry["min"]), float(entry["max"])
    out_of_range = (int(np.searchsorted(x, lo, side="left")) + m - int(np.searchsorted(x, hi, side="right"))) / m
    result = {"psi": psi(ref_counts, cur_counts), "ks": d, "js": js_distance(ref_counts, cur_counts), "wasserstein": w}
    status, reason = _decide("numeric", "KS", p, result, m, th)
    return FeatureDrift(
        name=name, kind="numeric", status=status, rows=rows, reason=reason, null_rate=null_rate,
        out_of_range_rate=out_of_range, psi=result["psi"], ks_statistic=d, ks_p_value=p, chi2_statistic=chi2,
        chi2_p_value=chi2_p, chi2_dof=dof, js=result["js"], wasserstein=w, ignored=th.ignore,
        histogram=Histogram(labels, tuple(_shares(ref_counts).tolist()), tuple((cur_counts / m).tolist())),
    )  # fmt: skip


def _wasserstein_from_profile(entry: Mapping[str, Any], grid: np.ndarray, cdf: np.ndarray, x: np.ndarray, exact: bool) -> float:
    """∫₀¹ |Q_ref(u) − Q_cur(u)| du from the grid and the sorted current values, in O(grid · log m).

    Q_ref is taken as a step function. When the grid holds every distinct reference value it is
    exact: grid[j] on (cdf[j-1], cdf[j]]. For a quantile grid the reference values of a step lie
    between two grid points; the step is cut into SUBSTEPS pieces valued along the straight line
    between them (the reference taken as uniform inside a step), except the two extreme steps,
    which follow an exponential tail (`_tail_steps`). Sums of |v − x_i| over index ranges come
    from one prefix sum of the centred current values: no per-row work beyond it.
    """
    centre = float(entry.get("mean") or 0.0)  # centring keeps the prefix sums precise for large offsets
    m = x.size
    y = np.subtract(x, centre)
    prefix = np.empty(m + 1)
    prefix[0] = 0.0
    np.cumsum(y, out=prefix[1:])
    g = grid - centre
    upper, lower = cdf, np.concatenate([[0.0], cdf[:-1]])
    if exact or g.size < 4:
        values = g
    else:
        frac = (np.arange(SUBSTEPS) + 0.5) / SUBSTEPS
        low_g = np.concatenate([g[:1], g[:-1]])  # the first step holds only the minimum
        table = low_g[:, None] + (g - low_g)[:, None] * frac
        cuts = lower[:, None] + (upper - lower)[:, None] * (np.arange(SUBSTEPS + 1) / SUBSTEPS)
        n = int(entry["rows"]) - int(entry["nulls"])
        _tail_steps(table, cuts, g, n)
        values = table.ravel()
        lower, upper = cuts[:, :-1].ravel(), cuts[:, 1:].ravel()
    split = np.searchsorted(y, values, side="left")  # current values below each step's value
    return float(np.sum(_abs_integral(upper, values, split, y, prefix) - _abs_integral(lower, values, split, y, prefix)))


def _tail_steps(table: np.ndarray, cuts: np.ndarray, g: np.ndarray, n: int) -> None:
    """Replace the straight line in the two extreme steps by an exponential tail through the min / max.

    A straight line from the 0.999 quantile to the maximum puts the tail's mass far too high for any
    unbounded distribution. Q(1 − p) = Q(1 − P) + B·ln(P / p), with B set so that p = 1/n reaches the
    maximum, gives the normal tail's mean almost exactly and heavy tails far better (docs: precision).
    """
    top_mass = 1.0 - cuts[-1, 0]
    if top_mass * n > 2.0:
        b = (g[-1] - g[-2]) / np.log(top_mass * n)
        hi = (1.0 - cuts[-1, :-1]) / top_mass  # substeps as shares of the tail, from its inner end outwards
        lo = (1.0 - cuts[-1, 1:]) / top_mass
        table[-1] = np.minimum(g[-2] + b * _mean_log_inverse(lo, hi), g[-1])
    low_mass = cuts[1, -1]
    if low_mass * n > 2.0:
        b = (g[1] - g[0]) / np.log(low_mass * n)
        lo, hi = cuts[1, :-1] / low_mass, cuts[1, 1:] / low_mass
        table[1] = np.maximum(g[1] - b * _mean_log_inverse(lo, hi), g[0])


def _mean_log_inverse(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Mean of ln(1/f) for f uniform on [lo, hi] ⊂ [0, 1]."""
    def antiderivative(f: np.ndarray) -> np.ndarray:  # ∫ −ln f df = f − f·ln f
        out: np.ndarray = f - f * np.log(np.where(f > 0, f, 1.0))
        return out

    lo, hi = np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)
    width = np.where(hi > lo, hi - lo, 1.0)
    return np.asarray((antiderivative(hi) - antiderivative(lo)) / width)


def _abs_integral(u: np.ndarray, v: np.ndarray, split: np.ndarray, y: np.ndarray, prefix: np.ndarray) -> np.ndarray:
    """∫₀ᵘ |v − Q_cur(t)| dt for each (u, v): whole current values below u·m by prefix sums, plus the partial one."""
    m = y.size
    pos = np.clip(u * m, 0.0, float(m))
    k = np.minimum(np.floor(pos).astype(np.int64), m)
    t = np.minimum(k, split)
    whole = t * v - prefix[t] + (prefix[k] - prefix[t]) - (k - t) * v
    partial = (pos - k) * np.abs(v - y[np.minimum(k, m - 1)])
    out: np.ndarray = (whole + partial) / m
    return out


def _grid_is_exact(entry: Mapping[str, Any], grid: np.ndarray, cdf: np.ndarray) -> bool:
    """Whether the grid holds every distinct reference value: then the grid's step mean is the reference mean.

    A quantile grid puts each step's mass at its upper end, so its step mean exceeds the true mean.
    """
    mean = float(entry.get("mean") or 0.0)
    steps = float(np.dot(grid, np.diff(np.concatenate([[0.0], cdf]))))
    return abs(steps - mean) <= 1e-9 * (abs(mean) + float(entry.get("std") or 0.0)) + 1e-300


def _compare_categorical(name: str, entry: Mapping[str, Any], current: Mapping[Any, Any], th: FeatureThresholds) -> FeatureDrift:
    ref_levels: Mapping[str, Any] = entry.get("levels") or {}
    ref_counts = np.asarray([int(c) for c in ref_levels.values()], dtype=np.float64)
    if ref_counts.sum() <= 0:
        return _unusable(name, "categorical", 0, "the reference has no non-null values to compare with")
    try:
        nulls = int(current.get(None, 0) or 0)
        seen = {str(k): int(v) for k, v in current.items() if k is not None and int(v) > 0}
    except (TypeError, ValueError):
        return _unusable(name, "categorical", 0, "current level counts are not whole numbers")
    rows = nulls + sum(seen.values())
    unseen = sum(n for level, n in seen.items() if level not in ref_levels)
    other = UNSEEN
    while other in ref_levels:  # a training level literally named "(unseen)" keeps its own bin
        other = f"({other})"
    labels = tuple(ref_levels) + ((other,) if unseen else ())
    ref_vec = np.concatenate([ref_counts, [0.0] if unseen else []])
    cur_vec = np.asarray([seen.get(level, 0) for level in ref_levels] + ([unseen] if unseen else []), dtype=np.float64)
    m = int(cur_vec.sum())
    hist = Histogram(labels, tuple(_shares(ref_vec).tolist()), tuple(_shares(cur_vec).tolist()))
    if rows == 0:
        return FeatureDrift(name=name, kind="categorical", status="empty", rows=0, reason="no rows in the window", histogram=hist)
    null_rate = nulls / rows
    if m == 0:
        return FeatureDrift(
            name=name, kind="categorical", status="insufficient", rows=rows, null_rate=null_rate, histogram=hist,
            reason=f"all {rows} values are null (reference: {_pct(int(entry.get('nulls', 0)) / max(int(entry.get('rows', 0)), 1))} null)",
        )  # fmt: skip
    chi2, chi2_p, dof = chi2_homogeneity(ref_vec, cur_vec)
    result = {"psi": psi(ref_vec, cur_vec), "js": js_distance(ref_vec, cur_vec)}
    status, reason = _decide("categorical", "chi-squared", chi2_p, result, m, th)
    return FeatureDrift(
        name=name, kind="categorical", status=status, rows=rows, reason=reason, null_rate=null_rate,
        unseen_rate=unseen / m, psi=result["psi"], chi2_statistic=chi2, chi2_p_value=chi2_p, chi2_dof=dof,
        js=result["js"], histogram=hist, ignored=th.ignore,
    )  # fmt: skip


EFFECT_NAMES = {"psi": "PSI", "ks": "KS D", "js": "JS", "wasserstein": "Wasserstein/sd"}


def _decide(kind: str, test: str, p: float, effects: Mapping[str, float | None], m: int, th: FeatureThresholds) -> tuple[Any, str]:
    """(status, reason): drift iff p < alpha and at least one set effect floor is reached (or none is set)."""
    if m < th.min_rows:
        return "insufficient", f"only {m} non-null values, fewer than min_rows {th.min_rows}"
    floors = [(key, effects.get(key), getattr(th, key)) for key in KIND_FLOORS[kind] if getattr(th, key) is not None]
    reached = [f"{EFFECT_NAMES[k]} {v:.3g} ≥ {f:g}" for k, v, f in floors if v is not None and v >= f]
    missed = [f"{EFFECT_NAMES[k]} {v:.3g} < {f:g}" if v is not None else f"{EFFECT_NAMES[k]} undefined" for k, v, f in floors
              if v is None or v < f]  # fmt: skip
    significant = bool(p < th.alpha)  # NaN p (a degenerate table) is never significant
    drift = significant and (bool(reached) or not floors)
    prefix = "ignored by its thresholds; " if th.ignore else ""
    if drift:
        text = f"{test} p = {p:.2g} < {th.alpha:g}" + (f" and {', '.join(reached)}" if reached else "")
    elif not significant:
        text = f"no significant change ({test} p = {p:.2g} ≥ {th.alpha:g})"
    else:
        text = f"significant ({test} p = {p:.2g}) but small: {', '.join(missed)}"
    return ("ok" if th.ignore or not drift else "drift"), prefix + text


def _bin_labels(edges: np.ndarray) -> tuple[str, ...]:
    if edges.size == 0:
        return ("all values",)
    cuts = [f"{e:.4g}" for e in edges.tolist()]
    middle = [f"({a}, {b}]" for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    return (f"≤ {cuts[0]}", *middle, f"> {cuts[-1]}")


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


# -- dataset verdict ------------------------------------------------------------------------------


def dataset_verdict(features: Sequence[FeatureDrift], importance: Mapping[str, Any] | None, share: float) -> DatasetVerdict:
    """Drifted when the share of drifted features (importance-weighted when given) reaches `share`.

    Only features with enough rows that are not ignored count ("ok" or "drift"); a feature missing
    from `importance` weighs 0. Without usable weights the plain share decides.
    """
    counted = [f for f in features if f.counted]
    drifted = tuple(f.name for f in counted if f.drifted)
    if not counted:
        return DatasetVerdict(
            drifted=False, share=0.0, weighted_share=0.0, dataset_share=share, counted=0, drifted_features=(),
            weighted=False, reason="no feature had enough non-null values to judge",
        )  # fmt: skip
    plain = len(drifted) / len(counted)
    weights = {f.name: _weight(importance, f.name) for f in counted} if importance else {}
    total = sum(weights.values())
    weighted = total > 0
    weighted_share = sum(weights[n] for n in drifted) / total if weighted else plain
    decider = weighted_share if weighted else plain
    is_drift = bool(drifted) and decider >= share
    how = f", {_pct(weighted_share)} by importance" if weighted else ""
    verdict = "at or above" if is_drift else "below"
    reason = f"{len(drifted)} of {len(counted)} features drifted ({_pct(plain)}{how}), {verdict} the dataset share {_pct(share)}"
    return DatasetVerdict(
        drifted=is_drift, share=plain, weighted_share=weighted_share, dataset_share=share, counted=len(counted),
        drifted_features=drifted, weighted=weighted, reason=reason,
    )  # fmt: skip


def _weight(importance: Mapping[str, Any] | None, name: str) -> float:
    try:
        value = float((importance or {}).get(name, 0.0))
    except (TypeError, ValueError):
        return 0.0
    return value if np.isfinite(value) and value > 0 else 0.0
