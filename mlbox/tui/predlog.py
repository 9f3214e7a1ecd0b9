"""A deployment's prediction log, a page at a time: `p` on Deployments opens it at the newest records.

Each page is one call to the console (`mlbox deploy log`'s read, mlbox/monitor/logpage.py): PAGE
records before a cursor, read from the few Parquet files the catalog says can hold them, so a log of
millions of records pages as fast as a small one and nothing holds it in memory. `n` goes to the next
(older) page, `b` back to the newer one (the screen keeps the cursors it came by), `g` to the
newest; `v` shows one variant at a time (all → primary → canary → shadow), `e` failed requests only;
`/` filters the page's rows like every table. The highlighted record is shown in full below the
table: its request id, entity, every input row and answer, escaped. A reader without
`features.read_pii` gets the protected inputs as the server gives them: masked, or left out (named
under the table). The page is read when opened, on `r` and when the screen is back on top (after `?`),
never on the refresh tick: records stay put while one reads them. Paging keys wait for the page being read.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Static
from textual.worker import Worker, WorkerState

from mlbox.monitor.logpage import answer
from mlbox.tui.screens.base import DetailScreen, TableScreen
from mlbox.tui.widgets import BoxTable
from mlbox.types import printable

Row = dict[str, Any]
PAGE = 100  # records per page: a few screens of rows, one small read
VARIANTS = (None, "primary", "canary", "shadow")
SHOWN_ROWS = 3  # input rows shown in full under the table; the rest are counted


def record_row(i: int, r: Mapping[str, Any]) -> Row:
    """One logged record as the table shows it (`key`: its place on the page: records need not be unique)."""
    inputs = r.get("inputs")
    return {
        "key": str(i), "ts": str(r["ts"]).replace("T", " ")[5:23], "variant": r["variant"], "model": r["model"],
        "ms": r["latency_ms"], "rows": len(inputs) if isinstance(inputs, list) else None,
        "answer": answer(r.get("outputs")), "error": r.get("error") or "", "request_id": r["request_id"],
    }  # fmt: skip


def record_text(r: Mapping[str, Any] | None) -> Text:
    """The record in full for the pane under the table: every value escaped."""
    if r is None:
        return Text(" no record")
    lines = [f" request {r['request_id']}  {r['variant']} {r['model']}  {r['latency_ms']:.2f} ms  at {r['ts']}"
             if isinstance(r.get("latency_ms"), (int, float)) else f" request {r['request_id']}  {r['variant']} {r['model']}"]
    if r.get("entity") is not None:
        lines.append(f" entity  {_compact(r['entity'])}")
    inputs, outputs = r.get("inputs"), r.get("outputs")
    rows = inputs if isinstance(inputs, list) else [inputs]
    outs = outputs if isinstance(outputs, list) else [outputs] * len(rows)
    for i, row in enumerate(rows[:SHOWN_ROWS]):
        out = outs[i] if i < len(outs) else None
        lines.append(f" [{i}] {_compact(row)}  →  {_compact(out)}")
    if len(rows) > SHOWN_ROWS:
        lines.append(f" … {len(rows) - SHOWN_ROWS} more rows")
    if r.get("error"):
        lines.append(f" error  {r['error']}")
    return Text("\n".join(printable(line) for line in lines))


def _compact(value: Any) -> str:
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return "; ".join(_compact(v) for v in value)  # an entity per row
    if isinstance(value, dict):
        return ", ".join(f"{k}={_compact(v)}" for k, v in value.items())
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else value


class PredictionsScreen(TableScreen, DetailScreen):
    """One deployment's logged records, newest first, a page at a time."""

    TITLE = "predictions"
    KEY = "key"
    LIVE = False
    COLUMNS = ("ts", "variant", "model", "ms", "rows", "answer", "error", "request_id")
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "more", "older", id="mlbox.log.older"),
        Binding("b", "newer", "newer", id="mlbox.log.newer"),
        Binding("g", "newest", "newest", id="mlbox.log.newest"),
        Binding("v", "variant", "variant", id="mlbox.log.variant"),
        Binding("e", "errors", "errors only", id="mlbox.log.errors"),
    ]

    def __init__(self, deployment: str) -> None:
        super().__init__()
        self.deployment = deployment
        self.cursors: list[str | None] = [None]  # the cursor of each page up to the one asked for (None: the newest)
        self.shown_cursors: list[str | None] = [None]  # ... up to the one on screen: a failed load goes back to it
        self.reading = False  # a page is being read: paging keys wait for it (a second `n` must not reuse its cursor)
        self.variant: str | None = None
        self.errors = False
        self.page: Row = {}
        self.records: list[Mapping[str, Any]] = []

    def crumb(self) -> str:
        return f"deployments › {self.deployment} › predictions"

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if isinstance(widget, BoxTable):
                yield widget
                yield Static("", id="hidden", classes="title")  # shown when protected inputs are hidden
                yield Static(Text(" loading…"), id="record")
            else:
                yield widget

    def action_reload(self) -> None:
        self.reading = True
        super().action_reload()

    def load(self) -> Row:
        return self.client.predictions(self.deployment, PAGE, self.cursors[-1], self.variant, self.errors)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        super().on_worker_state_changed(event)
        # (a load cancelled by a newer one says nothing: the newer one is loading)
        if event.worker.group == "load" and event.state in (WorkerState.SUCCESS, WorkerState.ERROR):
            self.reading = False
            if event.state == WorkerState.ERROR:
                self.cursors = list(self.shown_cursors)  # the page on screen is still the one its title names

    def show(self, data: Row) -> None:
        self.shown_cursors = list(self.cursors)
        self.page = data
        self.records = list(data["records"])
        self.set_rows([record_row(i, r) for i, r in enumerate(self.records)], bool(data.get("next")))
        hidden = data.get("masked") or data.get("refused") or []
        word = "masked" if data.get("masked") else "left out"
        note = self.query_one("#hidden", Static)
        note.update(Text(f" protected inputs {word}: {printable(', '.join(hidden))}" if hidden else ""))
        note.display = bool(hidden)
        self._record()

    def _title(self) -> None:
        """Which page of how many records, and what the page is narrowed to."""
        if not self.page:
            return
        table, n = self.table, len(self.cursors)
        first = (n - 1) * PAGE + 1
        records = f"{first:,}–{first + len(table.all_rows) - 1:,}" if table.all_rows else "none"
        narrowed = " ".join(w for w in (self.variant or "", "errors only" if self.errors else "") if w)
        of = (f" ({narrowed})" if narrowed else "") + f" of {int(self.page['total']):,} logged"
        shown = f"  filter /{table.filter.text}" if table.filter else ""
        keys = "  n: older" if self.more else "  (oldest)"
        keys += "  b: newer" if n > 1 else ""
        title = f" {self.deployment}: page {n}, records {records}{of}, newest first{shown}{keys}"
        self.query_one("#title", Static).update(Text(printable(title)))

    def _record(self) -> None:
        row = self.table.selected()
        found = None if row is None else self.records[int(row["key"])]
        self.query_one("#record", Static).update(record_text(found))

    def on_data_table_row_highlighted(self) -> None:
        self._record()

    def _go(self) -> None:
        self.table.move_cursor(row=0)
        self.action_reload()

    def action_more(self) -> None:
        nxt = self.page.get("next") if self.page else None
        if nxt and not self.reading:
            self.cursors.append(str(nxt))
            self._go()

    def action_newer(self) -> None:
        if len(self.cursors) > 1 and not self.reading:
            self.cursors.pop()
            self._go()

    def action_newest(self) -> None:
        self.cursors = [None]
        self._go()

    def action_variant(self) -> None:
        self.variant = VARIANTS[(VARIANTS.index(self.variant) + 1) % len(VARIANTS)]
        self.action_newest()  # a new narrowing starts from the newest page whatever is loading (exclusive: it wins)

    def action_errors(self) -> None:
        self.errors = not self.errors
        self.action_newest()
