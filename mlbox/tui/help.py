"""`?`: every binding of the screen underneath, generated from its bindings (hidden ones are not listed)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from mlbox.types import printable


class Help(ModalScreen[None]):
    """The bindings of one screen as `key  what it does` lines; any of esc, q, ? closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark", "close", "close", id="mlbox.help.close"),
    ]

    def __init__(self, title: str, lines: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.lines = lines

    def compose(self) -> ComposeResult:
        width = max((len(k) for k, _ in self.lines), default=0)
        body = "\n".join(printable(f"{k.ljust(width)}  {d}") for k, d in self.lines)
        with Vertical(id="dialog"):
            yield Static(Text(f"Keys of {printable(self.title_text)}"), classes="dialog-title")
            with VerticalScroll(id="keys-scroll"):  # at 80×24 the list is longer than the screen
                yield Static(Text(body), id="keys")
            yield Static(Text("lowercase keys look; uppercase keys change things (confirmed, audited)"), classes="hint")

    def action_close(self) -> None:
        self.dismiss(None)
