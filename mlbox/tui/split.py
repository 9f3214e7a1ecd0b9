"""The traffic-split editor: step the canary's weight with ←/→ (5%) or type it, then confirm."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static

from mlbox.tui.client import split_text
from mlbox.types import printable

STEP = 5.0


def bar(canary_weight: float, width: int = 40) -> str:
    """The split drawn in characters: `#` for the primary's share, `=` for the canary's (no colour needed)."""
    canary = round(width * canary_weight / 100)
    return "#" * (width - canary) + "=" * canary


class SplitEditor(ModalScreen[float | None]):
    """Edit one deployment's canary weight; dismisses with the new weight, or None."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "step(-1)", "canary -5%", id="mlbox.split.down"),
        Binding("right", "step(1)", "canary +5%", id="mlbox.split.up"),
        Binding("enter", "done", "continue", id="mlbox.split.done"),
        Binding("escape", "cancel", "cancel", id="mlbox.split.cancel"),
    ]

    def __init__(self, deployment: str, primary: str, canary: str, weight: float) -> None:
        super().__init__()
        self.deployment, self.primary, self.canary = deployment, primary, canary
        self.original = self.weight = weight

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(Text(f"Traffic split of {printable(self.deployment)}"), classes="dialog-title")
            yield Static(id="split")
            yield Static(Text("←/→ step 5%   enter continue   esc cancel"), classes="hint")

    def on_mount(self) -> None:
        self._paint()

    def _paint(self) -> None:
        text = (
            f"primary {printable(self.primary)} {100 - self.weight:g}%   canary {printable(self.canary)} {self.weight:g}%\n"
            f"[{bar(self.weight)}]\n"
            f"{split_text(100 - self.original, self.original)} → {split_text(100 - self.weight, self.weight)}"
        )
        self.query_one("#split", Static).update(Text(text))

    def action_step(self, direction: int) -> None:
        self.weight = min(100.0, max(0.0, self.weight + direction * STEP))
        self._paint()

    def action_done(self) -> None:
        self.dismiss(self.weight)

    def action_cancel(self) -> None:
        self.dismiss(None)
