"""One model version in detail, pushed from the Models screen (`enter` or `o`): a summary line, ONNX parity and
the training gate as glyph and word, the lineage tree (model → run → training set → view@version, or → data
file), the signature as a table and the deployments serving it; `esc` goes back.

It loads in a thread worker when shown and on `r`, never on a timer (a tree rebuilt every tick would lose its
cursor). Every value from the box goes through `printable` into a `Text`: nothing is markup, nothing is colour alone.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.widgets import DataTable, Footer, Static, Tree

from mlbox.tui.screens.base import DetailScreen
from mlbox.tui.widgets import cell
from mlbox.types import printable

Row = dict[str, Any]
NONE = "–"


def num(value: object) -> str:
    """A number as the panel prints it (`3e-07`, `0.7143`), `–` for none."""
    if value is None:
        return NONE
    if isinstance(value, float):
        return f"{value:.4g}" if value == 0 or 1e-3 <= abs(value) < 1e6 else f"{value:.0e}"
    return str(value)


def summary(d: Row) -> list[str]:
    """Its lines: ref, flavor, task, aliases, state, when and by whom; then its numeric metrics."""
    aliases = ",".join(d["aliases"]) or "no alias"
    state = "archived" if d["archived"] else "active"
    metrics = "  ".join(f"{k} {num(v)}" for k, v in d["metrics"].items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool))  # fmt: skip
    head = f"{d['model']}  {d['flavor']} {d['task']}  {aliases}  {state}  {str(d['created_at'])[:16]} by {d['created_by']}"
    return [head, metrics] if metrics else [head]


def parity_line(d: Row) -> str:
    """`✓ parity 3e-07 ≤ 1e-04`, `✗ parity 0.2 > 1e-04`, or `? parity not measured`."""
    o = d["onnx"]
    if o["ok"] is None:
        return "? parity not measured (no ONNX export)"
    return f"{'✓' if o['ok'] else '✗'} parity {num(o['max_abs_diff'])} {'≤' if o['ok'] else '>'} {num(o['tolerance'])}"


def gate_line(d: Row) -> str:
    """`✓ gate roc_auc 0.81 ≥ 0.6`, `✗ gate roc_auc 0.71 < 0.75`, or `– no gate` (trained without one)."""
    g = d["gate"]
    if g is None:
        return "– no gate (the training spec declared none)"
    ok = g["passed"]
    glyph, word = ("✓", "passed") if ok else ("✗", "failed") if ok is False else ("?", "unknown")
    bounds = []
    if g["min"] is not None:
        bounds.append(f"{'≥' if ok else '<'} {num(g['min'])}")
    if g["max"] is not None:
        bounds.append(f"{'≤' if ok else '>'} {num(g['max'])}")
    if g["must_beat"]:
        bounds.append(f"{'beats' if ok else 'vs'} {g['must_beat']}")
    return " ".join([glyph, "gate", str(g["metric"]), num(g["value"]), *bounds, f"({word})"])


def serving_line(d: Row) -> str:
    if not d["serving"]:
        return "served by no deployment"
    parts = []
    for s in d["serving"]:
        weight = "" if s["as"] == "shadow" else f" {num(s['weight'])}%"
        parts.append(f"{s['deployment']} ({s['as']}{weight})")
    return "served by " + ", ".join(parts)


def fill_lineage(tree: Tree[None], d: Row) -> None:
    """model → run → training set → view@version (or → data file); the code revision under the run."""
    tree.clear()
    lin = d["lineage"]
    root = tree.root
    root.set_label(Text(printable(f"model {d['model']}")))
    run = lin["run"]
    if run is None:
        parent = root.add(Text("run not recorded"), expand=True)
    else:
        parent = root.add(Text(printable(f"run {run['id']}  {run['experiment']}/{run['name']}  {run['status']}")),
                          expand=True)  # fmt: skip
    rev = lin["code_rev"]
    parent.add_leaf(Text(printable(f"code {rev[:12]}{' (dirty)' if lin['code_dirty'] else ''}" if rev else "code: no git revision")))
    ts = lin["training_set"]
    if ts is not None:
        node = parent.add(Text(printable(f"training set {ts['fingerprint'][:12]}  {ts['rows']:,} rows  "
                                         f"snapshot {ts['snapshot']}")), expand=True)  # fmt: skip
        node.add_leaf(Text(printable(f"labels {ts['labels'] or NONE}")))
        for view in ts["views"]:
            node.add_leaf(Text(printable(f"view {view}")))
    elif lin["data_path"]:
        node = parent.add(Text(printable(f"data file {lin['data_path']}")), expand=True)
        node.add_leaf(Text(printable(f"sha256 {lin['dataset_fingerprint'] or NONE}")))
    else:
        parent.add_leaf(Text(printable(f"dataset {lin['dataset_fingerprint'] or NONE}")))
    root.expand()


class ModelDetailScreen(DetailScreen):
    """A model version (console/models.py)."""

    TITLE = "model"
    DEFAULT_CSS = """
    ModelDetailScreen .line { height: auto; padding: 0 1; }
    ModelDetailScreen #summary { color: $text-muted; }
    ModelDetailScreen #lineage-tree { height: auto; max-height: 9; }
    ModelDetailScreen #signature-table { height: auto; max-height: 12; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "back", id="mlbox.model.back"),
    ]
    LIVE = False  # read when shown and on `r` (see the module docstring)
    COLUMNS = ("input", "dtype", "kind", "levels", "nullable")

    def __init__(self, ref: str) -> None:
        super().__init__()
        self.ref = ref
        self.detail: Row | None = None

    def crumb(self) -> str:
        return f"models › {self.ref}"

    def compose(self) -> ComposeResult:
        yield self.header()
        with VerticalScroll():
            yield Static(Text("…"), id="summary", classes="line")
            yield Static(Text(""), id="parity", classes="line")
            yield Static(Text(""), id="gate", classes="line")
            yield Static(Text(""), id="serving", classes="line")
            yield Tree[None](Text(printable(self.ref)), id="lineage-tree")
            yield Static(Text(""), id="outputs", classes="line")
            yield DataTable[Text](id="signature-table", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#signature-table", DataTable).add_columns(*self.COLUMNS)

    def load(self) -> Row:
        return self.client.model_detail(self.ref)

    def show(self, data: Row) -> None:
        self.detail = data
        gate = gate_line(data)
        if data["gate"] and data["gate"]["must_beat"] and data["gate"]["reasons"]:
            gate += f": {data['gate']['reasons']}"  # the incumbent's value, as the run recorded it
        for name, lines in (("summary", summary(data)), ("parity", [parity_line(data)]), ("gate", [gate]),
                            ("serving", [serving_line(data)])):  # fmt: skip
            self.query_one(f"#{name}", Static).update(Text("\n".join(printable(x) for x in lines)))  # each line escaped
        fill_lineage(self.query_one("#lineage-tree", Tree), data)
        outs = ", ".join(f"{o['name']} ({o['dtype']}{': ' + ' '.join(map(str, o['classes'])) if o['classes'] else ''})"
                         for o in data["signature"]["outputs"])  # fmt: skip
        self.query_one("#outputs", Static).update(Text(printable(f"signature: outputs {outs or NONE}")))
        table = self.query_one("#signature-table", DataTable)
        table.clear()
        for i in data["signature"]["inputs"]:
            table.add_row(*(cell(x) for x in (i["name"], i["dtype"], i["kind"], i["levels"] or NONE,
                                              "yes" if i["nullable"] else "no")))  # fmt: skip

    def problem(self, error: BaseException | None) -> None:
        super().problem(error)
        if self.detail is None:
            message = getattr(error, "message", None) or repr(error)
            self.query_one("#summary", Static).update(Text(printable(f"✗ {message}")))

    @property
    def plain(self) -> dict[str, str]:
        """What the panel says, as plain text (for tests and screen readers)."""
        out = {k: str(self.query_one(f"#{k}", Static).render()) for k in ("summary", "parity", "gate", "serving", "outputs")}
        table = self.query_one("#signature-table", DataTable)
        out["signature"] = "\n".join(" | ".join(str(x) for x in table.get_row_at(i)) for i in range(table.row_count))
        tree: Tree[None] = self.query_one("#lineage-tree", Tree)
        out["lineage"] = "\n".join(_tree_lines(tree.root, 0))
        return out


def _tree_lines(node: Any, depth: int) -> list[str]:
    lines = ["  " * depth + str(node.label)]
    for child in node.children:
        lines += _tree_lines(child, depth + 1)
    return lines
