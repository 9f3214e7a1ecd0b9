"""Pulse, the home screen: server up or down, deployments and their split, the job queue, alerts, audit, disk."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Footer, Static

from mlbox.tui.client import Pulse
from mlbox.tui.screens.base import BoxScreen
from mlbox.tui.widgets import size, status
from mlbox.types import printable

JOB_ORDER = ("queued", "running", "succeeded", "failed", "cancelled", "timed_out")


class PulseScreen(BoxScreen):
    """The whole box on one screen, in boxes that each fit 80×24."""

    TITLE = "pulse"

    def compose(self) -> ComposeResult:
        yield self.header()
        with Vertical(id="pulse"):
            yield Static(id="server", classes="panel")
            with Horizontal(classes="row"):
                yield Static(id="deployments", classes="panel")
                yield Static(id="jobs", classes="panel")
            with Horizontal(classes="row"):
                yield Static(id="audit", classes="panel")
                yield Static(id="alerts", classes="panel")
        yield Footer()

    def load(self) -> Pulse:
        return self.client.pulse()

    def show(self, data: Pulse) -> None:
        p = data
        s = p.server
        self._panel("server", "server", [f"{status(s.state)}  {s.url}  {s.detail}".rstrip()])
        deps = [
            f"{d['name']}  {d['primary']}"
            + (f" | {d['canary']}  {d['split']}" if d["canary"] else "  100%")
            + (f"  shadow {d['shadow']}" if d["shadow"] else "")
            for d in p.deployments
        ]
        self._panel("deployments", f"deployments {len(p.deployments)}", deps or ["(none)"])
        jobs = [f"{status(k)} {p.jobs[k]}" for k in JOB_ORDER if p.jobs.get(k)]
        gpus = [f"GPU {g} → job {j}" for g, j in sorted(p.gpus.items())]
        self._panel("jobs", "jobs", (jobs or ["(no jobs)"]) + (gpus or ["GPUs: none in use"]))
        audit = [f"{a['seq']} {a['actor']} {a['action']} {a['target']}" for a in p.audit]
        self._panel("audit", "latest audit", audit or ["(hidden: needs audit.read)" if not self.me.may("audit list") else "(none)"])
        alerts = [f"{status(v['verdict'])}  {v['deployment']} {v['kind']}" for v in p.verdicts]
        disk = "  ".join(f"{k} {size(v)}" for k, v in sorted(p.disk.items()) if k != "total" and v >= 1 << 20)
        self._panel("alerts", "monitoring", (alerts or ["no checks yet"]) + [f"disk {size(p.disk.get('total', 0))}", disk])

    def _panel(self, widget_id: str, title: str, lines: list[str]) -> None:
        body = "\n".join(printable(line) for line in lines if line)
        self.query_one(f"#{widget_id}", Static).update(Text(f"{printable(title)}\n", style="bold") + Text(body))
