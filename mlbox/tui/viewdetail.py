"""One feature view in detail, pushed from the Features screen: fields with badges and statistics, a few
values (masked by role), batches and the lineage tree, one tab each (`f`, `s`, `b`, `l`); `esc` goes back.

It loads in a thread worker when shown and on `r`, never on a timer: the sample may scan the offline
store, and a tree rebuilt every tick would lose its cursor. Every value from the box goes through
`printable` into a `Text`; a masked column is headed `[masked]`, so it reads the same without colour.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane, Tree

from mlbox.tui.screens.base import DetailScreen
from mlbox.tui.widgets import cell
from mlbox.types import printable

Row = dict[str, Any]
NONE = "–"
MASKED = "[masked]"
TABS = ("fields", "sample", "batches", "lineage")


def badges(field: Mapping[str, Any]) -> str:
    """`[PII] restricted [masked]`: the flag, the classification and whether this role sees its values."""
    return " ".join(x for x in ("[PII]" if field["pii"] else "", str(field["classification"] or NONE),
                                MASKED if field["masked"] else "") if x)  # fmt: skip


def _num(value: object) -> object:
    return NONE if value is None else value


def field_rows(detail: Row) -> list[list[object]]:
    """The fields tab: name, dtype, badges, then the statistics (`–` where a value is masked or not kept)."""
    rows = []
    for f in detail["fields"]:
        s = detail["stats"].get(f["name"]) or {}
        distinct = s.get("distinct")
        several = distinct is not None and int(s.get("batches") or 0) > 1
        rows.append([f["name"], f["dtype"], badges(f), s.get("count", NONE), s.get("nulls", NONE),
                     _num(s.get("min")), _num(s.get("max")), _num(s.get("mean")),
                     NONE if distinct is None else f"≥{distinct}" if several else distinct])  # fmt: skip
    return rows


def sample_header(detail: Row) -> list[str]:
    sample = detail["sample"]
    return [f"{c} {MASKED}" if c in sample["masked"] else str(c) for c in sample["columns"]]


def sample_note(detail: Row) -> str:
    sample = detail["sample"]
    parts = [str(sample["note"])] if sample["note"] else []
    if sample["masked"]:
        parts.append(f"masked: {', '.join(sample['masked'])} (*** or –; reading them needs features.read_pii)")
    if sample["refused"]:
        parts.append(f"left out: {', '.join(sample['refused'])} (privacy.protected_reads = refuse)")
    return "; ".join(parts) or NONE


def summary(detail: Row) -> str:
    keys = ", ".join(detail["keys"])
    batches = detail["batch_count"]
    return (f"{detail['view']}@{detail['version']}  entity {detail['entity']} ({keys})  owner {detail['owner'] or NONE}"
            f"  {detail['classification'] or NONE}  {batches} batch{'' if batches == 1 else 'es'}, {detail['rows']:,} rows")  # fmt: skip


def minute(stamp: object) -> str:
    """`2026-12-02T13:04`: an ISO-8601 time to the minute (a tree line stays within 80 columns)."""
    return str(stamp or NONE)[:16]


def fill_lineage(tree: Tree[None], lineage: Row, current: int) -> None:
    """view → source; each version → the training sets that read it → the models trained on them (and the models
    fed the version's fields without a recorded set)."""
    tree.clear()
    root = tree.root
    root.set_label(Text(printable(lineage["view"])))
    source = lineage["source"] or "pushed rows only (no declared source)"
    root.add_leaf(Text(printable(f"source {source}" + ("  → transformation (SQL)" if lineage["transformation"] else ""))))
    sets, models = lineage["training_sets"], lineage["models"]
    for v in lineage["versions"]:
        n = v["version"]
        label = (f"@{n}{' (shown)' if n == current else ''}  {v['batches']} batch{'' if v['batches'] == 1 else 'es'}, "
                 f"{v['rows']:,} rows  {v['hash']}  {minute(v['created_at'])} by {v['created_by']}")  # fmt: skip
        node = root.add(Text(printable(label)), expand=True)
        for s in sets:
            if n in s["versions"]:
                child = node.add(Text(printable(f"training set {s['fingerprint'][:12]}  {s['rows']:,} rows  "
                                                f"snapshot {s['snapshot']}  {minute(s['created_at'])}")), expand=True)  # fmt: skip
                for m in s["models"]:
                    child.add_leaf(Text(printable(f"model {m}")))
        for m in models:
            if m["training_set"] is None and n in m["versions"]:
                node.add_leaf(Text(printable(f"model {m['model']}  (fed its fields; no recorded training set)")))
        if not node.children:
            node.add_leaf(Text("no training set or model recorded"))
    if lineage["models_total"] > len(models):
        root.add_leaf(Text(f"… {lineage['models_total'] - len(models)} older model versions not shown"))
    root.expand()


class ViewDetailScreen(DetailScreen):
    """A feature view as the acting user may see it (console/views.py)."""

    TITLE = "feature view"
    DEFAULT_CSS = """
    ViewDetailScreen #summary { height: auto; color: $text-muted; padding: 0 1; }
    ViewDetailScreen .note { height: auto; color: $text-muted; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "back", id="mlbox.view.back"),
        Binding("f", "tab('fields')", "fields", id="mlbox.view.fields"),
        Binding("s", "tab('sample')", "sample", id="mlbox.view.sample"),
        Binding("b", "tab('batches')", "batches", id="mlbox.view.batches"),
        Binding("l", "tab('lineage')", "lineage", id="mlbox.view.lineage"),
    ]
    LIVE = False  # read when shown and on `r` (see the module docstring)
    FIELDS = ("field", "dtype", "badges", "count", "nulls", "min", "max", "mean", "distinct")
    BATCHES = ("id", "rows", "min_ts", "max_ts", "sha256", "created_at", "created_by")

    def __init__(self, view: str) -> None:
        super().__init__()
        self.view = view
        self.detail: Row | None = None

    def crumb(self) -> str:
        return f"features › {self.view}"

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static(Text("…"), id="summary")
        with TabbedContent(id="tabs"):
            with TabPane("fields", id="fields"):
                yield DataTable[Text](id="fields-table", cursor_type="row")
            with TabPane("sample", id="sample"):
                yield Static(Text(NONE), id="sample-note", classes="note")
                yield DataTable[Text](id="sample-table", cursor_type="row")
            with TabPane("batches", id="batches"):
                yield Static(Text(NONE), id="batches-note", classes="note")
                yield DataTable[Text](id="batches-table", cursor_type="row")
            with TabPane("lineage", id="lineage"):
                yield Tree[None](Text(printable(self.view)), id="lineage-tree")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#fields-table", DataTable).add_columns(*self.FIELDS)
        self.query_one("#batches-table", DataTable).add_columns(*self.BATCHES)

    def load(self) -> Row:
        return self.client.view_detail(self.view)

    def show(self, data: Row) -> None:
        self.detail = data
        self.query_one("#summary", Static).update(Text(printable(summary(data))))
        self._table("#fields-table", field_rows(data))
        sample = self.query_one("#sample-table", DataTable)
        sample.clear(columns=True)
        sample.add_columns(*(Text(printable(h)) for h in sample_header(data)))
        for r in data["sample"]["rows"]:
            sample.add_row(*(Text(NONE) if v is None else cell(v) for v in r))
        self.query_one("#sample-note", Static).update(Text(printable(sample_note(data))))
        batches = [[b[c] for c in self.BATCHES] for b in data["batches"]]
        self._table("#batches-table", batches)
        shown = f"the {len(batches)} newest of {data['batch_count']}" if data["batch_count"] > len(batches) else "all"
        self.query_one("#batches-note", Static).update(Text(f"{shown} live batches, newest first"))
        fill_lineage(self.query_one("#lineage-tree", Tree), data["lineage"], int(data["version"]))

    def _table(self, selector: str, rows: list[list[object]]) -> None:
        table = self.query_one(selector, DataTable)
        row = table.cursor_row
        table.clear()
        for r in rows:
            table.add_row(*(cell(v) for v in r))
        if rows:
            table.move_cursor(row=min(max(row, 0), len(rows) - 1))

    def problem(self, error: BaseException | None) -> None:
        super().problem(error)
        if self.detail is None:
            message = getattr(error, "message", None) or repr(error)
            self.query_one("#summary", Static).update(Text(printable(f"✗ {message}")))

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        widget = {"fields": "#fields-table", "sample": "#sample-table", "batches": "#batches-table",
                  "lineage": "#lineage-tree"}[tab]  # fmt: skip
        self.query_one(widget).focus()

    @property
    def plain(self) -> dict[str, str]:
        """What each tab says, as plain text (for tests and screen readers)."""
        out = {"summary": str(self.query_one("#summary", Static).render())}
        for tab in ("fields", "sample", "batches"):
            table = self.query_one(f"#{tab}-table", DataTable)
            head = " | ".join(str(c.label) for c in table.columns.values())
            lines = [" | ".join(str(x) for x in table.get_row_at(i)) for i in range(table.row_count)]
            out[tab] = "\n".join([head, *lines])
        out["sample"] = f"{self.query_one('#sample-note', Static).render()}\n{out['sample']}"
        tree: Tree[None] = self.query_one("#lineage-tree", Tree)
        out["lineage"] = "\n".join(_tree_lines(tree.root, 0))
        return out


def _tree_lines(node: Any, depth: int) -> list[str]:
    lines = ["  " * depth + str(node.label)]
    for child in node.children:
        lines += _tree_lines(child, depth + 1)
    return lines
