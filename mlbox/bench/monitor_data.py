"""The synthetic table of `mlbox bench monitor`: a reference and a current window with known shifts, seeded.

40 numeric features of five families (normal, lognormal, exponential, uniform, Poisson counts;
two with 2% nulls on both sides) and 10 categorical ones with 5–20 levels of Zipf-like shares.
The current window shifts 8 numeric features by 0.2 reference sd (a count's rate so that its
mean moves as much) and moves 10–20% of 3 categorical mixes from the commonest level to the
rarer half (total-variation distance 0.10–0.20); the other 39 features come from the reference
distribution. Numbers are sent rounded to 4 decimals, as a client would, and the model sees
their float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

NUMERIC = 40
LEVELS = (5, 6, 8, 10, 11, 13, 15, 16, 18, 20)  # levels of each categorical feature
NUMERIC_SHIFTED = tuple(f"n{j:02d}" for j in range(8))
CATEGORICAL_SHIFTS = {"c00": 0.10, "c01": 0.15, "c02": 0.20}  # total-variation distance moved
NULLABLE = {"n38": 0.02, "n39": 0.02}
SHIFT_SD = 0.2


def _draw(rng: np.random.Generator, j: int, n: int, shifted: bool) -> np.ndarray:
    """Feature `n{j}`: family j % 5, its parameters from j; `shifted` moves its mean by 0.2 sd."""
    family = j % 5
    if family == 4:  # counts: shift the rate so the mean moves by 0.2 sd (sqrt(rate))
        lam = 3.0 + j % 5
        return rng.poisson(lam + (SHIFT_SD * np.sqrt(lam) if shifted else 0.0), n).astype(np.float64)
    if family == 0:
        loc, sd = float(10 * (j % 7)), 1.0 + j % 3
        x = rng.normal(loc, sd, n)
    elif family == 1:
        scale, sigma = 1.0 + j % 4, 0.6
        x = scale * rng.lognormal(0.0, sigma, n)
        sd = scale * float(np.sqrt((np.exp(sigma**2) - 1) * np.exp(sigma**2)))
    elif family == 2:
        sd = 2.0 + j % 3
        x = rng.exponential(sd, n)
    else:
        x = rng.uniform(0.0, 100.0, n)
        sd = 100.0 / np.sqrt(12.0)
    return x + SHIFT_SD * sd if shifted else x


def mix(levels: int, moved: float = 0.0) -> np.ndarray:
    """Zipf-like shares of `levels` levels; `moved` of the commonest level's share spread over the rarer half."""
    p = 1.0 / np.arange(1, levels + 1) ** 0.7
    p /= p.sum()
    if moved:
        rare = np.arange(levels // 2, levels)
        p[0] -= moved
        p[rare] += moved / len(rare)
    return p


@dataclass
class Side:
    """One side of the table: sent numeric values (float64, NaN null) by column, and level codes by column."""

    numeric: np.ndarray  # [NUMERIC, rows] float64, rounded as sent
    codes: np.ndarray  # [categorical, rows] int16

    def encoded(self) -> np.ndarray:
        """The model's float32 matrix [rows, features]: numbers as float32, categoricals as level index."""
        return np.ascontiguousarray(np.vstack([self.numeric.astype(np.float32), self.codes.astype(np.float32)]).T)


def _side(seed: int, n: int, shifted: bool) -> Side:
    rng = np.random.default_rng(seed)
    numeric = np.empty((NUMERIC, n), dtype=np.float64)
    for j in range(NUMERIC):
        name = f"n{j:02d}"
        x = np.round(_draw(rng, j, n, shifted and name in NUMERIC_SHIFTED), 4)
        if name in NULLABLE:
            x[rng.random(n) < NULLABLE[name]] = np.nan
        numeric[j] = x
    codes = np.empty((len(LEVELS), n), dtype=np.int16)
    for k, levels in enumerate(LEVELS):
        moved = CATEGORICAL_SHIFTS.get(f"c{k:02d}", 0.0) if shifted else 0.0
        codes[k] = rng.choice(levels, size=n, p=mix(levels, moved))
    return Side(numeric, codes)


@dataclass
class Synthetic:
    """The reference, the current window, and what each benchmark side needs from them."""

    reference: Side
    current: Side
    seed: int

    @property
    def names(self) -> list[str]:
        return [f"n{j:02d}" for j in range(NUMERIC)] + [f"c{k:02d}" for k in range(len(LEVELS))]

    @property
    def level_counts(self) -> dict[str, int]:
        return {f"c{k:02d}": levels for k, levels in enumerate(LEVELS)}

    def level_names(self, k: int) -> np.ndarray:
        return np.array([f"c{k:02d}_{i:02d}" for i in range(LEVELS[k])], dtype=object)  # sorted = index order

    def current_rows(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Rows `start:stop` of the current window as a client sends them (None for nulls)."""
        columns: list[list[Any]] = []
        for j in range(NUMERIC):
            values = self.current.numeric[j, start:stop]
            column: list[Any] = values.tolist()
            if np.isnan(values).any():
                column = [None if v != v else v for v in column]  # NaN != NaN
            columns.append(column)
        columns += [self.level_names(k)[self.current.codes[k, start:stop]].tolist() for k in range(len(LEVELS))]
        names = self.names
        return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]

    def training_frame(self, rows: int) -> Any:
        """`rows` fresh reference rows with a binary target `y` that depends on 10 numeric and 1 categorical feature."""
        import pandas as pd

        side = _side(self.seed + 2, rows, shifted=False)
        frame = pd.DataFrame({f"n{j:02d}": side.numeric[j] for j in range(NUMERIC)})
        for k in range(len(LEVELS)):
            frame[f"c{k:02d}"] = self.level_names(k)[side.codes[k]]
        z = np.nan_to_num((side.numeric[:10] - np.nanmean(side.numeric[:10], axis=1, keepdims=True))
                          / np.nanstd(side.numeric[:10], axis=1, keepdims=True))  # fmt: skip
        score = (np.array([0.8, -0.6, 0.5, -0.4, 0.3, 0.7, -0.5, 0.4, -0.3, 0.6]) @ z) + 0.9 * (side.codes[3] == 0)
        noise = np.random.default_rng(self.seed + 3).logistic(size=rows)
        frame["y"] = (score + noise > 0.3).astype(np.int64)
        return frame


def synthesize(rows: int, seed: int = 11) -> Synthetic:
    """A reference of `rows` rows and a current window of `rows` rows with the shifts above."""
    return Synthetic(_side(seed, rows, shifted=False), _side(seed + 1, rows, shifted=True), seed)
