"""The floor of `mlbox bench monitor`: the same drift tests written plainly with numpy/scipy on arrays in memory.

The reference's raw values against each variant's raw values, feature by feature: numeric
features get PSI on reference deciles, `ks_2samp`, the two-sample `chi2_contingency` on the
decile counts, `jensenshannon(base=2)` of them and `wasserstein_distance` over the reference
sd; categorical ones chi², JS and PSI on their level counts. The outputs (P(class 1) and the
predicted class) are tested alike, as the check tests them. Nulls are left out of the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-4  # share given to an empty bin in PSI, whose log is undefined at 0


def _psi(ref: np.ndarray, cur: np.ndarray) -> float:
    r, c = ref / max(ref.sum(), 1), cur / max(cur.sum(), 1)
    r, c = np.where(r > 0, r, EPS), np.where(c > 0, c, EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def _binned(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import chi2_contingency

    used = (ref + cur) > 0
    out: dict[str, Any] = {"psi.value": _psi(ref, cur), "js.value": float(jensenshannon(ref, cur, base=2))}
    if used.sum() >= 2 and ref.sum() and cur.sum():
        chi = chi2_contingency(np.vstack([ref[used], cur[used]]))
        out.update({"chi2.statistic": float(chi.statistic), "chi2.p_value": float(chi.pvalue), "chi2.dof": int(chi.dof)})
    return out


def numeric(ref: np.ndarray, cur: np.ndarray) -> dict[str, Any]:
    from scipy.stats import ks_2samp, wasserstein_distance

    ref = ref[~np.isnan(ref)].astype(np.float64)
    cur = cur[~np.isnan(cur)].astype(np.float64)
    if not len(ref) or not len(cur):
        return {}
    # the sample deciles (the smallest value whose empirical CDF reaches each tenth), the last bin
    # keeping the maximum: the bins the profile stores, so both sides test the same bins
    edges = np.unique(np.quantile(ref, np.arange(1, 10) / 10, method="inverted_cdf"))
    edges = edges[edges < ref.max()]
    bins = len(edges) + 1  # (-inf, e1], (e1, e2], ..., (ek, inf)
    out = _binned(np.bincount(np.searchsorted(edges, ref, side="left"), minlength=bins),
                  np.bincount(np.searchsorted(edges, cur, side="left"), minlength=bins))  # fmt: skip
    ks = ks_2samp(ref, cur)
    sd = float(ref.std())
    out.update({"ks.statistic": float(ks.statistic), "ks.p_value": float(ks.pvalue),
                "wasserstein.value": float(wasserstein_distance(ref, cur)) / sd if sd > 0 else 0.0})  # fmt: skip
    return out


def categorical(ref: np.ndarray, cur: np.ndarray, levels: int) -> dict[str, Any]:
    ref = ref[~np.isnan(ref)].astype(np.int64)
    cur = cur[~np.isnan(cur)].astype(np.int64)
    if not len(ref) or not len(cur):
        return {}
    return _binned(np.bincount(ref, minlength=levels), np.bincount(cur, minlength=levels))


def floor_check(arrays: dict[str, np.ndarray], names: list[str], levels: dict[str, int]) -> dict[str, Any]:
    """variant -> {"rows", "features": {name: tests}, "outputs": {"p_1", "class"}}: every test on every column."""
    ref_X, cur_X, ref_p, cur_p, canary = (arrays[k] for k in ("ref_X", "cur_X", "ref_p", "cur_p", "variant"))
    out: dict[str, Any] = {}
    for index, (variant, mask) in enumerate((("primary", ~canary), ("canary", canary))):
        cur = cur_X[mask]
        features = {}
        for j, name in enumerate(names):
            if name in levels:
                features[name] = categorical(ref_X[:, j], cur[:, j], levels[name])
            else:
                features[name] = numeric(ref_X[:, j], cur[:, j])
        p_ref, p_cur = ref_p[:, index].astype(np.float64), cur_p[mask].astype(np.float64)
        outputs = {"p_1": numeric(p_ref, p_cur),
                   "class": categorical((p_ref > 0.5).astype(np.float64), (p_cur > 0.5).astype(np.float64), 2)}  # fmt: skip
        out[variant] = {"rows": int(mask.sum()), "features": features, "outputs": outputs}
    return out
