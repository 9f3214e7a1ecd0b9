"""Simulation behind the drift defaults: false-alarm rate on unchanged data and power on known shifts.

`python -m mlbox.monitor.calibrate` prints the table in docs/monitoring-statistics.md: a
reference of 100,000 rows, current windows of 1k, 100k and 1M rows; numeric features unchanged
or shifted by 0.2 sd (normal and lognormal), categorical mixes (5, 10 or 20 levels) unchanged or
changed by total-variation distance 0.05 and 0.10 in a random direction. Each rule is applied to
the same simulated statistics, so the rows compare like with like.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from mlbox.flavors.profile import categorical_entry, numeric_entry
from mlbox.monitor.stats import compare
from mlbox.monitor.verdict import CATEGORICAL_DEFAULTS, KIND_FLOORS, NUMERIC_DEFAULTS, FeatureDrift, FeatureThresholds

REFERENCE_ROWS = 100_000
SIZES = (1_000, 100_000, 1_000_000)
REPS = {1_000: 1000, 100_000: 400, 1_000_000: 100}  # fewer at 1M: each draw there costs ~60 ms
RAW = FeatureThresholds(alpha=0.5, min_rows=1)  # lets every statistic through; rules are applied afterwards

Rule = Callable[[FeatureDrift], bool]


def rule(th: FeatureThresholds) -> Rule:
    """The verdict `compare` reaches under `th`, applied to statistics computed once."""

    def flagged(f: FeatureDrift) -> bool:
        p = f.ks_p_value if f.kind == "numeric" else f.chi2_p_value
        effects = {"psi": f.psi, "ks": f.ks_statistic, "js": f.js, "wasserstein": f.wasserstein}
        floors = [(effects[k], getattr(th, k)) for k in KIND_FLOORS[f.kind] if getattr(th, k) is not None]
        return _p(p) < th.alpha and (not floors or any(v is not None and v >= fl for v, fl in floors))

    return flagged


NUMERIC_RULES: dict[str, Rule] = {
    "default": rule(NUMERIC_DEFAULTS),
    "KS p<0.05 alone": lambda f: _p(f.ks_p_value) < 0.05,
    "KS p<0.01 alone": lambda f: _p(f.ks_p_value) < 0.01,
    "W/sd>=0.1 alone (Evidently)": lambda f: (f.wasserstein or 0) >= 0.1,
    "PSI>=0.1 alone": lambda f: (f.psi or 0) >= 0.1,
}
CATEGORICAL_RULES: dict[str, Rule] = {
    "default": rule(CATEGORICAL_DEFAULTS),
    "chi2 p<0.05 alone": lambda f: _p(f.chi2_p_value) < 0.05,
    "chi2 p<0.01 and JS>=0.05": lambda f: _p(f.chi2_p_value) < 0.01 and (f.js or 0) >= 0.05,
    "JS(base e)>=0.1 alone (Evidently)": lambda f: (f.js or 0) * np.sqrt(np.log(2)) >= 0.1,
    "PSI>=0.1 alone": lambda f: (f.psi or 0) >= 0.1,
}


def _p(value: float | None) -> float:
    return 1.0 if value is None else value


@dataclass(frozen=True)
class Scenario:
    """One simulated situation: a kind, a label and a generator of (reference entry, current) pairs."""

    kind: str
    label: str
    draw: Callable[[np.random.Generator, int], tuple[Mapping[str, object], object]]


def _numeric(shift: float, dist: str) -> Callable[[np.random.Generator, int], tuple[Mapping[str, object], object]]:
    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(size=n) if dist == "normal" else rng.lognormal(sigma=0.5, size=n)

    sd = 1.0 if dist == "normal" else float(np.sqrt((np.exp(0.25) - 1) * np.exp(0.25)))

    def draw(rng: np.random.Generator, n: int) -> tuple[Mapping[str, object], object]:
        return numeric_entry(sample(rng, REFERENCE_ROWS)), sample(rng, n) + shift * sd

    return draw


def mix_change(rng: np.random.Generator, p: np.ndarray, tv: float) -> np.ndarray:
    """A distribution at total-variation distance `tv` from `p`, in a random direction."""
    while True:
        d = rng.normal(size=p.size)
        d -= d.mean()
        q = p + d * (2 * tv / np.abs(d).sum())
        if (q >= 0).all():
            out: np.ndarray = q
            return out


def _categorical(tv: float) -> Callable[[np.random.Generator, int], tuple[Mapping[str, object], object]]:
    def draw(rng: np.random.Generator, n: int) -> tuple[Mapping[str, object], object]:
        k = int(rng.choice([5, 10, 20]))
        p = rng.dirichlet(np.full(k, 2.0))
        q = mix_change(rng, p, tv) if tv else p
        names = [f"l{i}" for i in range(k)]
        ref = rng.multinomial(REFERENCE_ROWS, p)
        cur = rng.multinomial(n, q)
        entry = categorical_entry(dict(zip(names, ref.tolist(), strict=True)))
        return entry, {name: int(c) for name, c in zip(names, cur, strict=True)}

    return draw


SCENARIOS = (
    Scenario("numeric", "normal, unchanged", _numeric(0.0, "normal")),
    Scenario("numeric", "normal, +0.2 sd", _numeric(0.2, "normal")),
    Scenario("numeric", "lognormal, unchanged", _numeric(0.0, "lognormal")),
    Scenario("numeric", "lognormal, +0.2 sd", _numeric(0.2, "lognormal")),
    Scenario("categorical", "mix unchanged", _categorical(0.0)),
    Scenario("categorical", "mix TV 0.05", _categorical(0.05)),
    Scenario("categorical", "mix TV 0.10", _categorical(0.10)),
)


def simulate(scale: float = 1.0, seed: int = 11) -> dict[tuple[str, int], list[FeatureDrift]]:
    """Raw comparisons per (scenario label, current rows)."""
    rng = np.random.default_rng(seed)
    out: dict[tuple[str, int], list[FeatureDrift]] = {}
    for scenario in SCENARIOS:
        for n in SIZES:
            reps = max(int(REPS[n] * scale), 5)
            out[(scenario.label, n)] = [compare("x", *scenario.draw(rng, n), RAW) for _ in range(reps)]
    return out


def table(results: Mapping[tuple[str, int], list[FeatureDrift]]) -> str:
    """Markdown: rate flagged per rule, scenario and window size (reps in brackets)."""
    lines = ["| rule | scenario | " + " | ".join(f"{n:,} rows" for n in SIZES) + " |", "|---|---|" + "---|" * len(SIZES)]
    for kind, rules in (("numeric", NUMERIC_RULES), ("categorical", CATEGORICAL_RULES)):
        for rule, test in rules.items():
            for scenario in (s for s in SCENARIOS if s.kind == kind):
                cells = []
                for n in SIZES:
                    runs = results[(scenario.label, n)]
                    cells.append(f"{sum(map(test, runs)) / len(runs):.1%} ({len(runs)})")
                lines.append(f"| {rule} | {scenario.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def effect_summary(results: Mapping[tuple[str, int], list[FeatureDrift]]) -> str:
    """Where the effect floors sit: extreme quantiles of W/sd, D and JS per scenario and size."""
    lines = ["| scenario | rows | W/sd p99 (unchanged) or p1 (shifted) | KS D | JS |", "|---|---|---|---|---|"]
    for (label, n), runs in results.items():
        q = 99 if "unchanged" in label else 1
        cols = []
        for attr in ("wasserstein", "ks_statistic", "js"):
            vals = [getattr(f, attr) for f in runs if getattr(f, attr) is not None]
            cols.append(f"{np.percentile(vals, q):.4f}" if vals else "–")
        lines.append(f"| {label} | {n:,} | " + " | ".join(cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the repetitions (default 1)")
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = simulate(args.scale, args.seed)
    print(f"reference {REFERENCE_ROWS:,} rows; defaults numeric {NUMERIC_DEFAULTS.as_dict()}")
    print(f"categorical {CATEGORICAL_DEFAULTS.as_dict()}\n")
    print(table(results))
    print()
    print(effect_summary(results))
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
