"""Pulse, the home screen: server up or down, deployments with their split and traffic sparklines, jobs, alerts, disk."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Footer, Sparkline, Static

from mlbox.tui.client import Pulse, Row
from mlbox.tui.screens.base import BoxScreen
from mlbox.console.traffic import Traffic
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
                with VerticalScroll(id="deployments", classes="panel"):
                    yield Static(id="deployments-title")
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
        self._deployments(p)
        jobs = [f"{status(k)} {p.jobs[k]}" for k in JOB_ORDER if p.jobs.get(k)]
        self._panel("jobs", "jobs and GPUs", (jobs or ["(no jobs)"]) + gpu_lines(p))
        audit = [f"{a['seq']} {a['actor']} {a['action']} {a['target']}" for a in p.audit]
        self._panel("audit", "latest audit", audit or ["(hidden: needs audit.read)" if not self.me.may("audit list") else "(none)"])
        alerts = [f"{status(v['verdict'])}  {v['deployment']} {v['kind']}" for v in p.verdicts]
        disk = "  ".join(f"{k} {size(v)}" for k, v in sorted(p.disk.items()) if k != "total" and v >= 1 << 20)
        self._panel("alerts", "monitoring", (alerts or ["no checks yet"]) + [f"disk {size(p.disk.get('total', 0))}", disk])

    def _deployments(self, p: Pulse) -> None:
        """One block per deployment; blocks are kept and updated in place while the set of deployments is the same."""
        title = Text(f"deployments {len(p.deployments)}", style="bold") + Text("" if p.deployments else "\n(none)")
        self.query_one("#deployments-title", Static).update(title)
        panel = self.query_one("#deployments", VerticalScroll)
        blocks = list(panel.query(DeploymentTraffic))
        if [b.deployment for b in blocks] != [d["name"] for d in p.deployments]:
            for block in blocks:
                block.remove()
            panel.mount_all(DeploymentTraffic(d, p.traffic.get(d["name"])) for d in p.deployments)
        else:
            for block, d in zip(blocks, p.deployments, strict=True):
                block.set_traffic(d, p.traffic.get(d["name"]))

    def _panel(self, widget_id: str, title: str, lines: list[str]) -> None:
        body = "\n".join(printable(line) for line in lines if line)
        self.query_one(f"#{widget_id}", Static).update(Text(f"{printable(title)}\n", style="bold") + Text(body))


def gpu_lines(p: Pulse) -> list[str]:
    """The GPU board: each GPU's memory in use, its load and the job holding it (`free` when none), in words."""
    if not p.devices:
        held = [f"GPU {g} → job {j}" for g, j in sorted(p.gpus.items())]
        return held or ["GPUs: none (cpu)"]
    return [
        f"GPU {d['index']} {d['memory_used_mb'] / 1024:.1f}/{d['memory_total_mb'] / 1024:.0f} GiB {d['utilization_pct']}% "
        + (f"→ job {d['job']}" if d["job"] is not None else "free")
        for d in p.devices
    ]


def deployment_line(d: Row) -> str:
    return (
        f"{d['name']}  {d['primary']}"
        + (f" | {d['canary']}  {d['split']}" if d["canary"] else "  100%")
        + (f"  shadow {d['shadow']}" if d["shadow"] else "")
    )


def latest_words(traffic: Traffic | None) -> tuple[str, str, str]:
    """The newest bucket's requests/s, error rate and p99 in words: the sparklines read without colour too."""
    if traffic is None or not traffic.requests:
        return "–", "–", "–"
    p99 = traffic.p99_ms[-1]
    return f"{traffic.rps[-1]:.3g}/s", f"{traffic.error_rate[-1]:.1%}", "–" if p99 is None else f"{p99:.3g} ms"


def series(traffic: Traffic | None) -> tuple[list[float], list[float], list[float]]:
    """What the three sparklines draw: requests/s, error rate (0–1), p99 in ms (0 for a bucket without requests)."""
    if traffic is None:
        return [], [], []
    return traffic.rps, traffic.error_rate, [p or 0.0 for p in traffic.p99_ms]


class DeploymentTraffic(Vertical):
    """A deployment's split on one line, then requests/s, error rate and p99 over the last minutes as sparklines."""

    LABELS = ("req/s", "err", "p99")

    def __init__(self, row: Row, traffic: Traffic | None) -> None:
        super().__init__(classes="traffic")
        self.deployment = str(row["name"])
        self.row, self.traffic = row, traffic

    def compose(self) -> ComposeResult:
        yield Static(Text(printable(deployment_line(self.row))), classes="split")
        for label, data, words in zip(self.LABELS, series(self.traffic), latest_words(self.traffic), strict=True):
            with Horizontal(classes="spark-row"):
                yield Static(label, classes="spark-label")
                yield Sparkline(data, classes=f"spark-{label.replace('/', '')}")
                yield Static(words, classes="spark-value")

    def set_traffic(self, row: Row, traffic: Traffic | None) -> None:
        self.row, self.traffic = row, traffic
        self.query_one(".split", Static).update(Text(printable(deployment_line(row))))
        for spark, value, data, words in zip(self.query(Sparkline), self.query(".spark-value").results(Static),
                                             series(traffic), latest_words(traffic), strict=True):  # fmt: skip
            if list(spark.data or []) != data:
                spark.data = data
            value.update(words)
