"""The `:` command line as a one-line dialog at the bottom: a bad command shows its error there, nothing crashes."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from mlbox import clock
from mlbox.errors import MlboxError, PermissionDenied
from mlbox.tui.commands import Command, parse
from mlbox.types import printable


class CommandLine(ModalScreen[Command | None]):
    """Read one `:` command; dismisses with the parsed `Command`, or None on esc."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel", id="mlbox.command.cancel")]

    def __init__(self, may_read: Callable[[str], bool]) -> None:
        super().__init__()
        self.may_read = may_read  # mode -> whether the role may read it (the same gate as the number keys)

    def compose(self) -> ComposeResult:
        with Vertical(id="command-bar"):
            yield Static("", id="command-error")
            line = Input(placeholder=":runs status=failed since=24h   :deploy churn_api   (esc closes)", id="command")
            line.cursor_blink = False
            yield line

    def on_mount(self) -> None:
        self.query_one("#command", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            command = parse(event.value, clock.now())
            if not command.quit and not self.may_read(command.mode):
                raise PermissionDenied(f"your role may not read {command.mode}")
        except MlboxError as exc:
            hint = f" ({exc.hint})" if exc.hint else ""
            self.query_one("#command-error", Static).update(Text("✗ " + printable(exc.message + hint)))
            return
        self.dismiss(command)

    def action_cancel(self) -> None:
        self.dismiss(None)
