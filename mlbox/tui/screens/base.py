"""What every screen shares: the one-line header, a refresh loop in a worker, and the table screen with its filter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, Static
from textual.worker import Worker, WorkerState

from mlbox.errors import MlboxError
from mlbox.tui.client import PAGE
from mlbox.tui.filters import NO_FILTER, parse
from mlbox.tui.widgets import BoxTable
from mlbox.types import printable

if TYPE_CHECKING:
    from mlbox.tui.app import MlboxApp
    from mlbox.tui.client import BoxClient, Me


class BoxScreen(Screen[None]):
    """A screen that loads its data in a thread worker and re-arms its refresh only after each load finished."""

    TITLE: ClassVar[str] = ""
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("r", "reload", "refresh", id="mlbox.screen.refresh"),
    ]

    @property
    def box_app(self) -> MlboxApp:
        from mlbox.tui.app import MlboxApp

        assert isinstance(self.app, MlboxApp)
        return self.app

    @property
    def client(self) -> BoxClient:
        return self.box_app.client

    @property
    def me(self) -> Me:
        return self.box_app.me

    def header(self) -> Static:
        me = self.me
        return Static(Text(f" mlbox › {self.TITLE}  [{printable(me.name)}: {printable(me.role)}]"), classes="crumbs")

    _timer: Timer | None = None

    def on_screen_resume(self) -> None:
        self.action_reload()  # first shown, or back on top: paint fresh data now, not at the next tick

    def action_reload(self) -> None:
        self.run_worker(self.load, thread=True, exclusive=True, group="load", exit_on_error=False)

    def load(self) -> Any:
        """Read this screen's data (runs in a thread worker; touches no widget)."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Put loaded data on screen (runs on the event loop)."""
        raise NotImplementedError

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        worker = event.worker
        if worker.group == "load":
            if event.state == WorkerState.SUCCESS:
                self.show(worker.result)
            elif event.state == WorkerState.ERROR:
                self.problem(worker.error)
            if event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
                self._arm()  # re-armed after the load finished: loads never pile up
        elif worker.group == "act" and event.state == WorkerState.ERROR:
            self.problem(worker.error)
        elif worker.group == "act" and event.state == WorkerState.SUCCESS:
            self.notify(printable(worker.result))
            self.action_reload()

    def _arm(self) -> None:
        """One pending tick per screen, however many loads ended."""
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(self.box_app.refresh_s, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self not in self.app.screen_stack:
            return  # hidden (another screen's mode): no loads until it is shown again (on_screen_resume)
        if self.app.screen is self and not self.box_app.paused:
            self.action_reload()
        else:
            self._arm()  # under a dialog, or paused: skip this load, look again at the next tick

    def rebind(self, action: str) -> None:
        """Refresh the footer only when `action`'s state (shown, dimmed) changed: a cursor move is not a redraw."""
        state = self.check_action(action, ())
        if state != getattr(self, "_bound", {}).get(action, "unset"):
            self._bound = {**getattr(self, "_bound", {}), action: state}
            self.refresh_bindings()

    def problem(self, error: BaseException | None) -> None:
        if isinstance(error, MlboxError):
            hint = f" ({error.hint})" if error.hint else ""
            self.notify(printable(f"{error.message}{hint}"), title="error", severity="error")
        else:
            self.notify(printable(repr(error)), title="error", severity="error")

    def act(self, work: Any) -> None:
        """Run a change (a callable returning a message) in a worker; errors become one notification."""
        self.run_worker(work, thread=True, exclusive=True, group="act", exit_on_error=False)



class DetailScreen(BoxScreen):
    """A screen pushed over a list (a version, a view, a check, a log, a comparison); `close` (its `esc`) pops it."""

    LIVE: ClassVar[bool] = True  # False: read when shown and on `r` only, never on the refresh timer

    def crumb(self) -> str:
        """What the header names after `mlbox ›`."""
        return self.TITLE

    def header(self) -> Static:
        me = self.me
        return Static(Text(printable(f" mlbox › {self.crumb()}  [{me.name}: {me.role}]")), classes="crumbs")

    def _arm(self) -> None:
        if self.LIVE:
            super()._arm()

    def action_close(self) -> None:
        self.dismiss(None)

class TableScreen(BoxScreen):
    """A screen around one filterable table: `/` filters, `esc` clears the filter, `n` loads the next page."""

    COLUMNS: ClassVar[Sequence[str]] = ()
    KEY: ClassVar[str] = "id"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "filter", key_display="/", id="mlbox.table.filter"),
        Binding("n", "more", "more rows", id="mlbox.table.more"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.limit = PAGE
        self.more = False
        self.loaded = False  # rows arrived at least once: a filter's keys can be checked against them
        self.pending_filter: str | None = None  # from the command line, before the first load

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static("", id="title", classes="title")
        yield BoxTable(self.COLUMNS, self.KEY, id="table")
        box = Input(placeholder="/text  /!text  /key=value  /auc>0.9   (enter applies, esc closes)", id="filter",
                    select_on_focus=False)  # fmt: skip
        box.cursor_blink = False  # over SSH every blink is a redraw
        yield box
        yield Footer()

    @property
    def table(self) -> BoxTable:
        return self.query_one(BoxTable)

    def set_rows(self, rows: Sequence[Mapping[str, Any]], more: bool = False) -> None:
        self.more = more
        self.loaded = True
        self.table.set_rows(rows)
        self._title()
        if self.pending_filter is not None:
            self.command_filter(self.pending_filter)

    def command_filter(self, text: str) -> None:
        """Filter by a `:` command's terms, now or, before the first load, once the rows are there."""
        if not self.loaded:
            self.pending_filter = text
            return
        self.pending_filter = None
        try:
            self.apply_filter(text)
        except MlboxError as exc:
            self.problem(exc)

    def _title(self) -> None:
        table = self.table
        count = f"{len(table.shown)} of {len(table.all_rows)}{'+' if self.more else ''}"
        shown = f"  filter /{table.filter.text}" if table.filter else ""
        more = "  (n: more)" if self.more else ""
        self.query_one("#title", Static).update(Text(f" {self.TITLE}: {count}{printable(shown)}{more}"))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = self.table.filter.text
        box.cursor_position = len(box.value)  # typing extends the current filter
        box.add_class("-open")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        try:
            self.apply_filter(event.value)
        except MlboxError as exc:
            self.problem(exc)
            return
        self._close_filter()

    def apply_filter(self, text: str) -> None:
        """Filter on any column, or any field of the rows (a model's metrics, a deployment's weights)."""
        known = dict.fromkeys([*self.COLUMNS, *(k for row in self.table.all_rows for k in row)])
        self.table.set_filter(parse(text, known))
        self._title()

    def _close_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("-open")
        self.table.focus()

    def escape(self) -> bool:
        """Handle `esc` here if there is something to close or clear; False lets the app go back a screen."""
        box = self.query_one("#filter", Input)
        if box.has_class("-open"):
            self._close_filter()
            return True
        if self.table.filter:
            self.table.set_filter(NO_FILTER)
            self._title()
            return True
        return False

    def action_more(self) -> None:
        if self.more:
            self.limit += PAGE
            self.action_reload()
