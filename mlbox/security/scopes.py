"""Token scopes: the deployments and feature views a token is limited to (least privilege for applications).

A token without scopes is unrestricted, as before. A token with any scope is an allow-list on both kinds:
it reaches only the deployments and only the feature views it names, so a token scoped to one deployment
reads no feature view directly (its predictions still look features up internally).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from mlbox.errors import PermissionDenied, UsageError
from mlbox.types import check_name

ScopeKind = Literal["deployment", "view"]
KINDS: tuple[ScopeKind, ...] = ("deployment", "view")


@dataclass(frozen=True)
class Scopes:
    """The resources a scoped token may name; `Scopes.parse` builds one from `deployment:NAME` / `view:NAME` words."""

    deployments: frozenset[str] = frozenset()
    views: frozenset[str] = frozenset()

    @classmethod
    def of(cls, deployments: Iterable[str] = (), views: Iterable[str] = ()) -> Scopes | None:
        """Checked scopes, or None (unrestricted) when both lists are empty."""
        deps = frozenset(check_name(d, "deployment name") for d in deployments)
        vws = frozenset(check_name(v, "feature view name") for v in views)
        return cls(deps, vws) if deps or vws else None

    @classmethod
    def parse(cls, words: Iterable[str]) -> Scopes | None:
        """Scopes from words such as `deployment:churn view:customers` (an OIDC scope claim)."""
        deployments: list[str] = []
        views: list[str] = []
        for word in words:
            kind, sep, name = word.partition(":")
            if not sep or kind not in KINDS:
                raise UsageError(f"scope {word[:80]!r} is not deployment:NAME or view:NAME")
            (deployments if kind == "deployment" else views).append(name)
        return cls.of(deployments, views)

    def names(self, kind: ScopeKind) -> frozenset[str]:
        return self.deployments if kind == "deployment" else self.views

    def allows(self, kind: ScopeKind, name: str) -> bool:
        return name in self.names(kind)

    def refusal(self, kind: ScopeKind, names: Iterable[str]) -> PermissionDenied | None:
        """The 403 for the first of `names` outside this scope, else None."""
        for name in names:
            if not self.allows(kind, name):
                held = ", ".join(sorted(self.names(kind))) or "none"
                return PermissionDenied(
                    f"this token is not scoped to {kind} {name!r}",
                    hint=f"its {kind}s: {held}; create a token with --{kind} {name}",
                )
        return None

    def as_words(self) -> list[str]:
        return [f"deployment:{d}" for d in sorted(self.deployments)] + [f"view:{v}" for v in sorted(self.views)]


def refusal(scopes: Scopes | None, resources: Iterable[tuple[ScopeKind, str]]) -> PermissionDenied | None:
    """The 403 for the first resource `scopes` does not cover (None: unrestricted, nothing refused)."""
    if scopes is None:
        return None
    for kind, name in resources:
        denied = scopes.refusal(kind, (name,))
        if denied is not None:
            return denied
    return None
