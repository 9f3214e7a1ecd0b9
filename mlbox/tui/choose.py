"""Pick one of a few choices (an alias, a shadow model) before the confirmation; esc picks nothing."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from mlbox.types import printable


class Choose(ModalScreen[str | None]):
    """A titled list of `(value, label)` choices; dismisses with the value chosen (enter), or None (esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel", id="mlbox.choose.cancel")]

    def __init__(self, title: str, choices: list[tuple[str, str]]) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(printable(self.title_text)), classes="dialog-title")
            yield OptionList(*(Option(Text(printable(label)), id=value) for value, label in self.choices), id="choices")
            yield Static(Text("↑/↓ choose   enter continue   esc cancel"), classes="hint")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)
