"""A drift check: a window of one deployment's log against each deployed model's reference profile.

Per variant (primary, canary) the rows its current model answered are compared, feature by
feature, with that model's profile (`stats.compare`), and so is the output distribution. The
variant's verdict is the dataset-level one (share of drifted features, weighted by importance
when the profile has it); outputs are reported beside it and do not count towards the share.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mlbox import clock
from mlbox.monitor.logread import Rows
from mlbox.monitor.stats import compare, dataset_verdict
from mlbox.monitor.verdict import FeatureDrift, Thresholds


@dataclass(frozen=True, kw_only=True)
class VariantDrift:
    """One variant's result: its model, rows, the dataset-level verdict, each feature's and output's drift."""

    variant: str
    model: str
    rows: int
    drifted: bool
    share: float
    weighted_share: float
    features: dict[str, FeatureDrift]
    outputs: dict[str, FeatureDrift]

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "rows": self.rows, "drifted": self.drifted, "share": self.share,
            "weighted_share": self.weighted_share,
            "features": {n: f.as_dict() for n, f in self.features.items()},
            "outputs": {n: f.as_dict() for n, f in self.outputs.items()},
        }  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """A whole check: the deployment, when, the window read, the thresholds used and every variant's result."""

    deployment: str
    checked_at: datetime
    window: dict[str, Any]
    thresholds: Thresholds
    variants: dict[str, VariantDrift] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return any(v.drifted for v in self.variants.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "deployment": self.deployment,
            "checked_at": clock.iso(self.checked_at),
            "window": self.window,
            "drifted": self.drifted,
            "thresholds": self.thresholds.as_dict(),
            "variants": {name: v.as_dict() for name, v in self.variants.items()},
        }


def compare_rows(rows: Rows, profile: dict[str, Any], thresholds: Thresholds) -> VariantDrift:
    """Every feature and output of `rows` against `profile`."""
    features: dict[str, FeatureDrift] = {}
    for name, entry in profile.get("features", {}).items():
        current: Any = rows.numeric.get(name) if entry.get("kind") == "numeric" else rows.categorical.get(name)
        if current is None:
            current = {} if entry.get("kind") == "categorical" else _empty()
        features[name] = compare(name, entry, current, thresholds.for_feature(name, entry.get("kind", "numeric")))
    outputs: dict[str, FeatureDrift] = {}
    for name, entry in (profile.get("outputs") or {}).items():
        current = rows.outputs.get(name)
        if current is None:
            current = {} if entry.get("kind") == "categorical" else _empty()
        outputs[name] = compare(name, entry, current, thresholds.for_feature(name, entry.get("kind", "numeric")))
    verdict = dataset_verdict(list(features.values()), profile.get("importance"), thresholds.dataset_share)
    return VariantDrift(
        variant=rows.variant, model=rows.model, rows=rows.rows, drifted=verdict.drifted, share=verdict.share,
        weighted_share=verdict.weighted_share, features=features, outputs=outputs,
    )  # fmt: skip


def _empty() -> Any:
    import numpy as np

    return np.empty(0, dtype=np.float64)
