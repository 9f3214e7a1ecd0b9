"""Drift thresholds and drift results: what counts as drift per feature, and what a check reports."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

from mlbox.errors import UsageError
from mlbox.types import check_keys

Status = Literal["ok", "drift", "insufficient", "empty"]
FLOORS = ("psi", "ks", "js", "wasserstein")
# Effect floors that apply to each kind of feature (KS and Wasserstein need an ordered axis).
KIND_FLOORS: dict[str, tuple[str, ...]] = {"numeric": FLOORS, "categorical": ("psi", "js")}


def _check_fields(data: Mapping[str, Any], where: str) -> None:
    """Raise a UsageError naming the first value out of its range."""
    for key, value in data.items():
        if key == "alpha":
            if not _is_number(value) or not 0 < value < 1:
                raise UsageError(f"{where}: alpha must be a number between 0 and 1, got {value!r}")
        elif key in FLOORS:
            if value is not None and (not _is_number(value) or value < 0):
                raise UsageError(f"{where}: {key} must be a non-negative number or null, got {value!r}")
        elif key == "min_rows":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{where}: min_rows must be a whole number of at least 1, got {value!r}")
        elif key == "ignore" and not isinstance(value, bool):
            raise UsageError(f"{where}: ignore must be true or false, got {value!r}")


def _check_share(value: Any) -> None:
    if not _is_number(value) or not 0 < value <= 1:
        raise UsageError(f"drift thresholds: dataset_share must be a number in (0, 1], got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, kw_only=True)
class FeatureThresholds:
    """When one feature counts as drifted: significance below `alpha` AND at least one set effect floor reached.

    The significance test is KS for numeric features and the chi-squared homogeneity test for
    categorical ones. A floor of None is not used; with no floor set, significance alone decides.
    Fewer than `min_rows` non-null current values give status "insufficient"; `ignore` keeps the
    feature out of the verdict (it is still measured and shown).
    """

    alpha: float = 0.01
    psi: float | None = None
    ks: float | None = None
    js: float | None = None
    wasserstein: float | None = None  # normalised by the reference standard deviation
    min_rows: int = 100
    ignore: bool = False

    def __post_init__(self) -> None:
        _check_fields(self.as_dict(), "thresholds")

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "thresholds", base: FeatureThresholds | None = None) -> FeatureThresholds:
        """`data` laid over `base` (the class defaults when None), keys checked strictly."""
        check_keys(data, set(THRESHOLD_KEYS), where)
        _check_fields(data, where)
        return replace(base or cls(), **dict(data))


THRESHOLD_KEYS = tuple(f.name for f in fields(FeatureThresholds))

# Chosen by simulation (python -m mlbox.monitor.calibrate; docs/monitoring-statistics.md has the table).
NUMERIC_DEFAULTS = FeatureThresholds(alpha=0.01, wasserstein=0.1, ks=0.1)
CATEGORICAL_DEFAULTS = FeatureThresholds(alpha=0.01, js=0.03)
DATASET_SHARE = 0.25


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    """Drift thresholds of a deployment: defaults per feature kind, per-feature overrides, the dataset share.

    `features` maps a feature name to a partial override (e.g. `{"wasserstein": 0.2}`) laid over
    the default of its kind. The dataset drifts when the (importance-weighted) share of drifted
    features reaches `dataset_share`.
    """

    numeric: FeatureThresholds = NUMERIC_DEFAULTS
    categorical: FeatureThresholds = CATEGORICAL_DEFAULTS
    features: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dataset_share: float = DATASET_SHARE

    def __post_init__(self) -> None:
        for name, override in self.features.items():
            check_keys(override, set(THRESHOLD_KEYS), f"thresholds for feature {name!r}")
            _check_fields(override, f"thresholds for feature {name!r}")
        _check_share(self.dataset_share)

    def for_feature(self, name: str, kind: str) -> FeatureThresholds:
        """The thresholds that apply to feature `name` of `kind` ("numeric" or "categorical")."""
        base = self.categorical if kind == "categorical" else self.numeric
        override = self.features.get(name)
        return replace(base, **dict(override)) if override else base

    def as_dict(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric.as_dict(),
            "categorical": self.categorical.as_dict(),
            "features": {name: dict(o) for name, o in sorted(self.features.items())},
            "dataset_share": self.dataset_share,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Thresholds:
        """From a policy's `drift:` section or `as_dict()`; missing keys keep their defaults."""
        check_keys(data, {"numeric", "categorical", "features", "dataset_share"}, "drift thresholds")
        numeric = FeatureThresholds.from_dict(data.get("numeric") or {}, "drift thresholds: numeric", NUMERIC_DEFAULTS)
        categorical = FeatureThresholds.from_dict(
            data.get("categorical") or {}, "drift thresholds: categorical", CATEGORICAL_DEFAULTS
        )
        raw = data.get("features") or {}
        if not isinstance(raw, Mapping):
            raise UsageError("drift thresholds: features must map feature names to thresholds")
        features: dict[str, dict[str, Any]] = {}
        for name, override in raw.items():
            if not isinstance(name, str) or not name:
                raise UsageError(f"drift thresholds: feature name {name!r} must be a non-empty string")
            where = f"drift thresholds for feature {name!r}"
            check_keys(override, set(THRESHOLD_KEYS), where)
            _check_fields(override, where)
            features[name] = dict(override)
        share = data.get("dataset_share", DATASET_SHARE)
        return cls(numeric=numeric, categorical=categorical, features=features, dataset_share=share)


@dataclass(frozen=True)
class Histogram:
    """Shares of the reference and of the current window per bin (numeric) or level (categorical), for plots."""

    bins: tuple[str, ...]
    reference: tuple[float, ...]
    current: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        return {"bins": list(self.bins), "reference": list(self.reference), "current": list(self.current)}


@dataclass(frozen=True, kw_only=True)
class FeatureDrift:
    """One feature's (or output's) comparison of the current window with its reference profile.

    Test values are None when a test was not run (empty window, all null) or does not apply
    (KS and Wasserstein on categorical features; Wasserstein on a constant reference).
    """

    name: str
    kind: str
    status: Status
    rows: int
    reason: str
    null_rate: float | None = None
    out_of_range_rate: float | None = None  # numeric: share of non-null values outside reference [min, max]
    unseen_rate: float | None = None  # categorical: share of non-null values at levels the reference lacks
    psi: float | None = None
    ks_statistic: float | None = None
    ks_p_value: float | None = None
    chi2_statistic: float | None = None
    chi2_p_value: float | None = None
    chi2_dof: int | None = None
    js: float | None = None
    wasserstein: float | None = None  # Wasserstein-1 divided by the reference standard deviation
    histogram: Histogram | None = None
    ignored: bool = False  # measured but kept out of the dataset verdict by its thresholds

    @property
    def drifted(self) -> bool:
        return self.status == "drift"

    @property
    def counted(self) -> bool:
        """Whether it takes part in the dataset verdict: measured with enough rows and not ignored."""
        return self.status in ("ok", "drift") and not self.ignored

    def as_dict(self) -> dict[str, Any]:
        tests: dict[str, Any] = {}
        if self.psi is not None:
            tests["psi"] = {"value": self.psi}
        if self.ks_statistic is not None:
            tests["ks"] = {"statistic": self.ks_statistic, "p_value": self.ks_p_value}
        if self.chi2_statistic is not None:
            tests["chi2"] = {"statistic": self.chi2_statistic, "p_value": self.chi2_p_value, "dof": self.chi2_dof}
        if self.js is not None:
            tests["js"] = {"value": self.js}
        if self.wasserstein is not None:
            tests["wasserstein"] = {"value": self.wasserstein}
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "drifted": self.drifted,
            "rows": self.rows,
            "null_rate": self.null_rate,
            "out_of_range_rate": self.out_of_range_rate,
            "unseen_rate": self.unseen_rate,
            "reason": self.reason,
            "tests": tests,
            "histogram": self.histogram.as_dict() if self.histogram else {"bins": [], "reference": [], "current": []},
        }


@dataclass(frozen=True, kw_only=True)
class DatasetVerdict:
    """The dataset-level verdict: drifted when the (importance-weighted) share of drifted features reaches the threshold."""

    drifted: bool
    share: float  # drifted / counted features
    weighted_share: float  # the same weighted by importance (equal to `share` without importance)
    dataset_share: float  # the threshold it was held against
    counted: int  # features that took part (enough rows, not ignored)
    drifted_features: tuple[str, ...]
    weighted: bool  # whether importance weights decided
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "share": self.share,
            "weighted_share": self.weighted_share,
            "dataset_share": self.dataset_share,
            "counted": self.counted,
            "drifted_features": list(self.drifted_features),
            "weighted": self.weighted,
            "reason": self.reason,
        }
