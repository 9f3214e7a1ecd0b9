"""What the TUI reads and changes, behind one interface: `BoxClient`, and the records it returns.

Every screen talks to a `BoxClient` only: `mlbox.tui.local.LocalClient` reads the box on this
machine; a remote client (the management API of `mlbox serve` over HTTP) implements the same methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from mlbox.cli.permissions import COMMANDS, Needs
from mlbox.security.roles import allowed
from mlbox.tui.traffic import Traffic

PAGE = 200  # rows per page of a table; the table says when there are more
Row = dict[str, Any]


@dataclass(frozen=True)
class Me:
    """Who the TUI acts as: the box user and role the CLI would act as."""

    name: str
    role: str

    def may(self, command: str) -> bool:
        """Whether this role may run `mlbox COMMAND` (the CLI's permission table decides)."""
        need = COMMANDS[command]
        return isinstance(need, Needs) and all(allowed(self.role, a) for a in need.actions)


@dataclass(frozen=True)
class Page:
    """One page of rows, newest first; `more` when older rows exist beyond it."""

    rows: list[Row]
    more: bool


@dataclass(frozen=True)
class Server:
    """Whether `mlbox serve` answers on the box's configured address (`up`, `down`), and that address."""

    state: str
    url: str
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class Pulse:
    """The home screen's whole picture, read in one call."""

    box: str
    server: Server
    deployments: list[Row]
    jobs: dict[str, int]
    gpus: dict[int, int]
    audit: list[Row]
    verdicts: list[Row]
    disk: dict[str, int] = field(default_factory=dict)
    traffic: dict[str, Traffic] = field(default_factory=dict)  # deployment -> its recent traffic


@dataclass(frozen=True)
class Verified:
    """The audit chain's verification: ok, how many entries were checked, and the first bad one."""

    ok: bool
    checked: int
    bad_seq: int | None
    problem: str


class BoxClient(Protocol):
    """Everything the screens read and change; `LocalClient` here, a remote client against `mlbox serve` later."""

    def me(self) -> Me: ...
    def pulse(self) -> Pulse: ...
    def deployments(self) -> list[Row]: ...
    def jobs(self, limit: int = PAGE) -> Page: ...
    def audit(self, limit: int = PAGE) -> Page: ...
    def runs(self, limit: int = PAGE) -> Page: ...
    def models(self) -> list[Row]: ...
    def features(self) -> list[Row]: ...
    def checks(self, limit: int = PAGE) -> Page: ...
    def verify_audit(self) -> Verified: ...
    def set_canary_weight(self, name: str, weight: float, reason: str) -> Row: ...
    def cancel_job(self, job_id: int, reason: str) -> Row: ...
    def retry_job(self, job_id: int, reason: str) -> Row: ...
    def train_spec(self) -> str: ...
    def submit_train(self, spec: str, reason: str) -> Row: ...
    def drift_check(self, name: str) -> Row: ...
    def rollback(self, name: str, reason: str) -> Row: ...
    def set_shadow(self, name: str, model: str | None, reason: str) -> Row: ...
    def promote_model(self, ref: str, alias: str, expected: int | None, reason: str) -> Row: ...
    def archive_model(self, ref: str, reason: str) -> Row: ...


def split_text(primary_weight: float, canary_weight: float) -> str:
    """`90/10`: the primary's share, then the canary's."""
    return f"{primary_weight:g}/{canary_weight:g}"
