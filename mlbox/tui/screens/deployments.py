"""Deployments: primary, canary and shadow with their weights; `p` the prediction log (tui/predlog.py), `W` canary
weight, `C` canary model (and its weight), `R` roll back, `S` shadow.

Under the table, the selected deployment's shadow-vs-primary disagreement, A/B verdict and quality
(tui/deploypanel.py). That detail scans a day of the prediction log, so it is loaded when the
selection moves to a deployment not seen for DETAIL_S seconds, on `r`, and after a change, never on
every refresh tick; one load runs at a time, and the newest selection is loaded when it ends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.worker import Worker, WorkerState

from mlbox.errors import MlboxError
from mlbox.tui.choose import Choose
from mlbox.tui.confirm import Change, Confirm
from mlbox.tui.deploypanel import DeploymentPanel
from mlbox.tui.screens.base import TableScreen
from mlbox.tui.client import Row, split_text
from mlbox.tui.split import SplitEditor
from mlbox.tui.widgets import BoxTable

DETAIL_S = 60.0  # a deployment's detail is loaded again on a refresh tick only once it is this old


class DeploymentsScreen(TableScreen):
    """Every deployment and its traffic split."""

    TITLE = "deployments"
    KEY = "name"
    # the weights are filterable (/canary_weight>5) without a column each: `split` shows both in 80 columns
    COLUMNS = ("name", "primary", "canary", "split", "shadow", "sticky_key", "revision", "updated_by")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "predictions", "predictions", id="mlbox.deploy.predictions"),
        Binding("W", "weights", "canary weight", id="mlbox.deploy.weights"),
        Binding("C", "canary", "canary model", id="mlbox.deploy.canary"),
        Binding("R", "rollback", "roll back", id="mlbox.deploy.rollback"),
        Binding("S", "shadow", "shadow", id="mlbox.deploy.shadow"),
    ]
    REMOVE = "-"  # the shadow choice that removes it (no model reference is "-")

    def __init__(self) -> None:
        super().__init__()
        self.details: dict[str, tuple[float, Row]] = {}  # deployment -> (monotonic time loaded, its detail)
        self._detail_running: str | None = None  # the deployment whose detail is being loaded
        self._detail_wanted: str | None = None  # the one to load once that load ends
        self._ticking = False
        self._force_detail = False

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            yield widget
            if isinstance(widget, BoxTable):
                yield DeploymentPanel(id="detail")

    @property
    def panel(self) -> DeploymentPanel:
        return self.query_one(DeploymentPanel)

    def load(self) -> list[dict[str, Any]]:
        return self.client.deployments()

    def show(self, data: list[dict[str, Any]]) -> None:
        self.set_rows(data)
        force, self._force_detail = self._force_detail, False
        self.want_detail(force=force)

    def _tick(self) -> None:
        self._ticking = True  # a timed refresh: the detail is kept until it is DETAIL_S old
        try:
            super()._tick()
        finally:
            self._ticking = False

    def action_reload(self) -> None:
        if not self._ticking:  # `r`, the screen shown again, or after a change: the detail is read anew
            self._force_detail = True
        super().action_reload()

    def want_detail(self, force: bool = False) -> None:
        """Show the selected deployment's detail: the one loaded, and load it when asked, new or stale."""
        row = self.table.selected()
        if row is None:
            self.panel.show_nothing()
            return
        name = str(row["name"])
        cached = self.details.get(name)
        if cached is not None:
            self.panel.show_detail(name, cached[1])
        elif self.panel.deployment != name:
            self.panel.show_loading(name)
        if cached is not None and not force and time.monotonic() - cached[0] < DETAIL_S:
            return
        self._detail_wanted = name
        if self._detail_running is None:
            self._load_detail(name)

    def _load_detail(self, name: str) -> None:
        self._detail_running, self._detail_wanted = name, None
        self.run_worker(lambda: self.client.deployment_detail(name), thread=True, group="detail", exit_on_error=False)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)
        if event.worker.group != "detail" or event.state not in (WorkerState.SUCCESS, WorkerState.ERROR):
            return
        name, self._detail_running = self._detail_running, None
        assert name is not None
        row = self.table.selected()
        current = row is not None and str(row["name"]) == name
        if event.state == WorkerState.SUCCESS:
            detail = event.worker.result
            assert isinstance(detail, dict)
            self.details[name] = (time.monotonic(), detail)
            if current:
                self.panel.show_detail(name, detail)
        elif current:
            error = event.worker.error
            self.panel.show_error(name, error.message if isinstance(error, MlboxError) else repr(error))
        wanted = self._detail_wanted
        if wanted is not None and wanted != name:
            self._load_detail(wanted)  # the selection moved on meanwhile: its detail now
        self._detail_wanted = None

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "predictions":
            return self.me.may("deploy log")
        if action == "weights":
            if not self.me.may("deploy canary"):
                return False  # the role lacks it: not shown, not runnable
            row = self.table.selected() if self.is_mounted else None
            return None if row is None or not row["canary"] else True  # dimmed without a canary to weigh
        if action == "canary":
            if not self.me.may("deploy canary"):
                return False
            return None if not self.is_mounted or self.table.selected() is None else True
        if action in ("rollback", "shadow"):
            if not self.me.may(f"deploy {action}"):
                return False
            row = self.table.selected() if self.is_mounted else None
            if row is None:
                return None
            return True if action == "shadow" or rollback_of(row) is not None else None  # nothing to roll back
        return True

    def on_data_table_row_highlighted(self) -> None:
        for action in ("weights", "canary", "rollback", "shadow"):
            self.rebind(action)
        self.want_detail()

    def action_predictions(self) -> None:
        from mlbox.tui.predlog import PredictionsScreen

        row = self.table.selected()
        if row is not None:
            self.app.push_screen(PredictionsScreen(str(row["name"])))

    def action_weights(self) -> None:
        row = self.table.selected()
        if row is None or not row["canary"]:
            return
        name, before = str(row["name"]), float(row["canary_weight"])

        def edited(weight: float | None) -> None:
            if weight is None or weight == before:
                return
            change = Change(
                title=f"Change the traffic split of {name}",
                diff=f"{split_text(100 - before, before)} → {split_text(100 - weight, weight)}"
                f"  ({row['primary']} / {row['canary']})",
                affects=f"every request to {name}; servers pick it up within serve.reload_seconds",
                command=f"mlbox deploy canary {name} --model {row['canary']} --weight {weight:g}",
            )
            self.app.push_screen(Confirm(change), lambda reason: self._apply(name, weight, reason))

        self.app.push_screen(SplitEditor(name, str(row["primary"]), str(row["canary"]), before), edited)

    def _apply(self, name: str, weight: float, reason: str | None) -> None:
        if reason is None:
            return

        def work() -> str:
            d = self.client.set_canary_weight(name, weight, reason)
            return f"{d['name']}: {split_text(d['primary_weight'], d['canary_weight'])} (revision {d['revision']})"

        self.act(work)

    def action_canary(self) -> None:
        row = self.table.selected()
        if row is not None:
            self.run_worker(self._pick_canary(dict(row)), exclusive=True, group="pick", exit_on_error=False)

    async def _pick_canary(self, row: dict[str, Any]) -> None:
        """`C`: choose the canary's model, then its weight in the split editor, then confirm."""
        models = await self._versions()
        if models is None:
            return
        current = str(row["canary"] or "")
        now = "  (the canary now)"
        choices = [(str(m["model"]), f"{m['model']}  {m['aliases']}".rstrip() + (now if m["model"] == current else ""))
                   for m in models if not m["archived"] and m["model"] != row["primary"]]  # fmt: skip
        if not choices:
            self.notify("no other model version to send canary traffic to", severity="warning")
            return
        name, before = str(row["name"]), float(row["canary_weight"]) if current else 0.0

        def chosen(model: str | None) -> None:
            if model is None:
                return

            def edited(weight: float | None) -> None:
                if weight is None or (model == current and weight == before):
                    return
                change = Change(
                    title=f"{'Change the canary of' if current else 'Start a canary on'} {name}",
                    diff=f"canary {current or '–'} → {model}; split {split_text(100 - before, before)} → "
                         f"{split_text(100 - weight, weight)}  ({row['primary']} / {model})",
                    affects=f"{weight:g}% of the requests to {name} go to {model}; "
                            "servers pick it up within serve.reload_seconds",
                    command=f"mlbox deploy canary {name} --model {model} --weight {weight:g}",
                )  # fmt: skip

                def work(reason: str) -> str:
                    d = self.client.set_canary(name, model, weight, reason)
                    split = split_text(d["primary_weight"], d["canary_weight"])
                    return f"{d['name']}: canary {d['canary']} at {split} (revision {d['revision']})"

                self.app.push_screen(Confirm(change), lambda reason: self._confirmed(work, reason))

            start = before if model == current else max(before, 10.0)  # a new canary starts at 10%
            self.app.push_screen(SplitEditor(name, str(row["primary"]), model, start), edited)

        self.app.push_screen(Choose(f"Canary model for {name} (primary {row['primary']})", choices), chosen)

    def action_rollback(self) -> None:
        row = self.table.selected()
        what = None if row is None else rollback_of(row)
        if row is None or what is None:
            return
        name = str(row["name"])
        change = Change(
            title=f"Roll back {name}", diff=what,
            affects=f"every request to {name}; servers pick it up within serve.reload_seconds",
            command=f"mlbox deploy rollback {name}",
        )  # fmt: skip

        def work(reason: str) -> str:
            d = self.client.rollback(name, reason)
            return f"{d['name']}: primary {d['primary']}, split {d['split']} (revision {d['revision']})"

        self.app.push_screen(Confirm(change), lambda reason: self._confirmed(work, reason))

    def action_shadow(self) -> None:
        row = self.table.selected()
        if row is None:
            return
        self.run_worker(self._pick_shadow(dict(row)), exclusive=True, group="pick", exit_on_error=False)

    async def _pick_shadow(self, row: dict[str, Any]) -> None:
        models = await self._versions()
        if models is None:
            return
        taken = {row["primary"], row["shadow"]}
        choices = [(str(m["model"]), f"{m['model']}  {m['aliases']}".rstrip()) for m in models
                   if not m["archived"] and m["model"] not in taken]  # fmt: skip
        if row["shadow"]:
            choices.append((self.REMOVE, f"remove the shadow {row['shadow']}"))
        if not choices:
            self.notify("no other model version to shadow with", severity="warning")
            return
        name, before = str(row["name"]), str(row["shadow"])

        def chosen(value: str | None) -> None:
            if value is None:
                return
            model = None if value == self.REMOVE else value
            change = Change(
                title=f"{'Remove the shadow of' if model is None else 'Shadow'} {name}",
                diff=f"shadow {before or '–'} → {model or '–'}",
                affects=f"every request to {name} is mirrored to the shadow; its answers are logged, never returned"
                if model else f"{name} stops mirroring requests to {before}",
                command=f"mlbox deploy shadow {name} " + (f"--model {model}" if model else "--remove"),
            )

            def work(reason: str) -> str:
                d = self.client.set_shadow(name, model, reason)
                return f"{d['name']}: shadow {d['shadow'] or 'removed'} (revision {d['revision']})"

            self.app.push_screen(Confirm(change), lambda reason: self._confirmed(work, reason))

        self.app.push_screen(Choose(f"Shadow model for {name} (primary {row['primary']})", choices), chosen)

    async def _versions(self) -> list[Row] | None:
        """The model versions to choose from (a read: off the event loop like every other); None after an error."""
        try:
            return await asyncio.to_thread(self.client.models)
        except MlboxError as exc:
            self.problem(exc)
            return None

    def _confirmed(self, work: Any, reason: str | None) -> None:
        if reason is not None:
            self.act(lambda: work(reason))


def rollback_of(row: Mapping[str, Any]) -> str | None:
    """What `mlbox deploy rollback` would do to this deployment, as a diff; None when there is nothing to undo."""
    weight = float(row["canary_weight"])
    if row["canary"] and weight > 0:
        pair = f"{row['primary']} / {row['canary']}"
        return f"{split_text(100 - weight, weight)} → 100/0  ({pair}: the canary gets no traffic)"
    if row["previous"]:
        return f"primary {row['primary']} → {row['previous']}  (the previous primary back)"
    return None
