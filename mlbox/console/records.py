"""The records the console returns: plain data, turned into JSON for the management API and back, unchanged."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from mlbox.cli.permissions import COMMANDS, Needs
from mlbox.console.traffic import Traffic
from mlbox.security.roles import allowed

PAGE = 200  # rows per page of a table; the table says when there are more
Row = dict[str, Any]


@dataclass(frozen=True)
class Me:
    """Who the console acts as: the box user and role the CLI would act as."""

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
    """Whether `mlbox serve` answers on the box's address (`up`, `down`), and that address."""

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
    devices: list[Row] = field(default_factory=list)  # the GPU board: each GPU's memory, load and the job holding it

    def as_json(self) -> Row:
        out = asdict(self)
        out["traffic"] = {name: {**asdict(t), "until": t.until.isoformat()} for name, t in self.traffic.items()}
        return out

    @classmethod
    def from_json(cls, d: Row) -> Pulse:
        traffic = {name: Traffic(**{**t, "until": datetime.fromisoformat(t["until"])}) for name, t in d["traffic"].items()}
        return cls(
            box=d["box"], server=Server(**d["server"]), deployments=d["deployments"], jobs=d["jobs"],
            gpus={int(k): int(v) for k, v in d["gpus"].items()},  # JSON object keys are strings
            audit=d["audit"], verdicts=d["verdicts"], disk=d["disk"], traffic=traffic, devices=d.get("devices", []),
        )  # fmt: skip


@dataclass(frozen=True)
class Verified:
    """The audit chain's verification: ok, how many entries were checked, and the first bad one."""

    ok: bool
    checked: int
    bad_seq: int | None
    problem: str


def split_text(primary_weight: float, canary_weight: float) -> str:
    """`90/10`: the primary's share, then the canary's."""
    return f"{primary_weight:g}/{canary_weight:g}"
