"""The `mlbox tui` app: screens as Textual MODES on keys 1–8, a breadcrumb trail for esc, `?` help, pause."""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from typing import ClassVar

from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.screen import Screen

from mlbox.tui.client import BoxClient, Me
from mlbox.tui.cmdline import CommandLine
from mlbox.tui.commands import Command
from mlbox.tui.help import Help
from mlbox.tui.screens.audit import AuditScreen
from mlbox.tui.screens.base import BoxScreen, TableScreen
from mlbox.tui.screens.deployments import DeploymentsScreen
from mlbox.tui.screens.features import FeaturesScreen
from mlbox.tui.screens.jobs import JobsScreen
from mlbox.tui.screens.models import ModelsScreen
from mlbox.tui.screens.monitoring import MonitoringScreen
from mlbox.tui.screens.pulse import PulseScreen
from mlbox.tui.screens.runs import RunsScreen

# key -> (mode, screen)
# a screen whose reads the role lacks is absent from the key map (the audit log needs audit.read)
READS = {"pulse": "deploy status", "runs": "runs list", "models": "models list", "deployments": "deploy status",
         "jobs": "jobs list", "features": "features list", "monitoring": "monitor history", "audit": "audit list"}  # fmt: skip
SCREENS_BY_KEY: dict[str, tuple[str, type[Screen[None]]]] = {
    "1": ("pulse", PulseScreen),
    "2": ("runs", RunsScreen),
    "3": ("models", ModelsScreen),
    "4": ("deployments", DeploymentsScreen),
    "5": ("jobs", JobsScreen),
    "6": ("features", FeaturesScreen),
    "7": ("monitoring", MonitoringScreen),
    "8": ("audit", AuditScreen),
}


class MlboxApp(App[None]):
    """Run one box from a terminal, through a `BoxClient`."""

    CSS_PATH = "app.tcss"
    TITLE = "mlbox"
    MODES: ClassVar[dict[str, type[Screen[None]]]] = {mode: screen for mode, screen in SCREENS_BY_KEY.values()}  # type: ignore[assignment]
    DEFAULT_MODE = "pulse"
    BINDINGS: ClassVar[list[BindingType]] = [
        # listed by `?` and in the header, not in the footer: 80 columns hold only the screen's own keys
        *(Binding(key, f"go('{mode}')", mode, show=False, id=f"mlbox.go.{mode}")
          for key, (mode, _) in SCREENS_BY_KEY.items()),  # fmt: skip
        Binding("colon", "command_line", "command", key_display=":", show=False, id="mlbox.command"),
        Binding("question_mark", "help", "keys", key_display="?", id="mlbox.help"),
        Binding("escape", "back", "back", id="mlbox.back"),
        Binding("full_stop", "pause", "pause", key_display=".", id="mlbox.pause"),
        Binding("q", "quit", "quit", id="mlbox.quit"),
    ]

    def __init__(self, client: BoxClient, *, me: Me | None = None, refresh_s: float = 2.0,
                 keymap: dict[str, str] | None = None) -> None:  # fmt: skip
        """`keymap`: binding id -> keys (the `tui.keymap` setting, checked by mlbox.tui.keymap.parse)."""
        super().__init__()
        if keymap:
            self.set_keymap(keymap)
        self.client = client
        self.me = me if me is not None else client.me()  # before the event loop runs: screens gate on it from the start
        self.refresh_s = refresh_s
        self.paused = False
        self.trail: list[str] = []  # modes visited, for esc
        self.animation_level = "none"  # no animations: each frame costs bandwidth over SSH

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "go" and parameters:
            return self.me.may(READS[str(parameters[0])])
        return True

    def action_go(self, mode: str) -> None:
        if mode != self.current_mode:
            self.trail.append(self.current_mode)
            self.switch_mode(mode)

    def action_command_line(self) -> None:
        if isinstance(self.screen, BoxScreen):  # not over a dialog: a command must not leave one half-answered
            self.push_screen(CommandLine(lambda mode: self.me.may(READS[mode])), self._run_command)

    async def _run_command(self, command: Command | None) -> None:
        """Go to the command's screen and put its filter on the table (an empty one clears it)."""
        if command is None:
            return
        if command.quit:
            self.exit()
            return
        if command.mode != self.current_mode:
            self.trail.append(self.current_mode)
            await self.switch_mode(command.mode)
        screen = self.screen
        if isinstance(screen, TableScreen):
            screen.command_filter(command.filter)

    async def action_back(self) -> None:  # replaces App.action_back (screen stack) with the mode trail
        screen = self.screen
        if isinstance(screen, TableScreen) and screen.escape():
            return
        if len(self.screen_stack) > 1 and isinstance(screen, BoxScreen):  # a pushed detail (a log, a check): back to its list
            self.pop_screen()
            return
        if self.trail:
            await self.switch_mode(self.trail.pop())

    def action_pause(self) -> None:
        self.paused = not self.paused
        self.notify("live refresh paused (. resumes)" if self.paused else "live refresh on")

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The palette (ctrl+p): places the role may read, then the actions of the screen underneath that the
        role may take (the same gate as its keys: what is hidden from the footer is absent here too)."""
        yield from super().get_system_commands(screen)
        for key, (mode, _) in SCREENS_BY_KEY.items():
            if self.me.may(READS[mode]):
                yield SystemCommand(f"Go to {mode}", f"key {key}", partial(self.action_go, mode))
        for key, active in screen.active_bindings.items():
            b = active.binding
            if active.node is screen and active.enabled and b.description:
                yield SystemCommand(f"{getattr(screen, 'TITLE', '')}: {b.description}", f"key {b.key_display or key}",
                                    partial(screen.run_action, b.action))  # fmt: skip

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, Help):
            return
        seen: dict[str, tuple[int, str]] = {}
        for key, active in screen.active_bindings.items():
            b = active.binding
            if b.description:
                # the screen's own keys first, then the app's, then those of the focused widget
                rank = 0 if active.node is screen else 1 if active.node is self else 2
                seen.setdefault(b.key_display or key, (rank, b.description))
        lines = [(k, d) for k, (_, d) in sorted(seen.items(), key=lambda kv: (kv[1][0], kv[0]))]
        self.push_screen(Help(str(getattr(screen, "TITLE", "")) or self.current_mode, lines))
