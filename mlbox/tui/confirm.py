"""The confirmation of every change: the change as a diff, what it affects, the equivalent command, a reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Static

from mlbox.types import printable


@dataclass(frozen=True)
class Change:
    """A change to confirm: `diff` as `before → after`, who or what it `affects`, the `command` that does the same;
    `audited` false for what writes no audit entry (a drift check only adds to the history): no reason asked."""

    title: str
    diff: str
    affects: str
    command: str
    audited: bool = True


class Confirm(ModalScreen[str | None]):
    """Apply or cancel a `Change`; dismisses with the reason typed (possibly empty) on Apply, None on Cancel."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel", id="mlbox.confirm.cancel")]

    def __init__(self, change: Change) -> None:
        super().__init__()
        self.change = change

    def compose(self) -> ComposeResult:
        c = self.change
        with Vertical(id="dialog"):
            yield Static(Text(printable(c.title)), classes="dialog-title")
            yield Static(Text(f"change:   {printable(c.diff)}"), id="diff")
            yield Static(Text(f"affects:  {printable(c.affects)}"), id="affects")
            yield Static(Text(f"command:  {printable(c.command)}"), id="command")
            if c.audited:
                reason = Input(placeholder="reason (goes into the audit log)", id="reason")
                reason.cursor_blink = False
                yield reason
            with Horizontal(classes="buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("Apply", id="apply", variant="warning")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()  # a stray enter never applies a change

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "apply":
            found = self.query("#reason")
            self.dismiss(found.only_one(Input).value.strip() if found else "")
        else:
            self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.query_one("#apply", Button).focus()  # enter in the reason moves to Apply; a second enter applies

    def action_cancel(self) -> None:
        self.dismiss(None)
