"""Traffic routing as a pure, typed value: primary / canary by weight, sticky by entity, shadow copies.

Sticky assignment hashes `deployment:key=value` (BLAKE2b) into 10,000 buckets, so an entity
stays on the same variant for a given weight, and raising the weight only moves entities
from primary to canary, never back. A request is routed as a whole: every row of it goes to
one variant, the one the first row's sticky key value picks (the caller passes that value).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Literal

Variant = Literal["primary", "canary"]
BUCKETS = 10_000


@dataclass(frozen=True)
class TrafficSplit:
    """Which variant answers a request: the models of one deployment revision, the canary's weight, the sticky key."""

    deployment: str
    primary: str  # model reference, e.g. "churn:3"
    canary: str | None = None
    canary_weight: float = 0.0  # percent, 0..100
    sticky_key: str | None = None
    shadow: str | None = None
    revision: int = 0

    def bucket(self, key_value: Any) -> int:
        if isinstance(key_value, float) and key_value.is_integer():
            key_value = int(key_value)  # 7 and 7.0 are the same entity
        digest = hashlib.blake2b(f"{self.deployment}:{self.sticky_key}={key_value}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") % BUCKETS

    def route(self, key_value: Any = None, draw: float | None = None) -> Variant:
        """The variant for one request. `key_value` is the sticky key's value when the split is sticky;
        `draw` (0 <= draw < 1) replaces the random draw otherwise (tests pass it to be deterministic)."""
        if not self.canary or self.canary_weight <= 0:
            return "primary"
        if self.canary_weight >= 100:
            return "canary"
        threshold = self.canary_weight / 100
        if self.sticky_key is not None and key_value is not None:
            return "canary" if self.bucket(key_value) < threshold * BUCKETS else "primary"
        u = random.random() if draw is None else draw
        return "canary" if u < threshold else "primary"

    def model_for(self, variant: Variant) -> str:
        return self.canary if variant == "canary" and self.canary else self.primary
