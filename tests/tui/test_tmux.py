"""The real `mlbox tui` command in a real terminal (tmux): open Deployments, change the canary weight, confirm.

Through tmux send-keys and capture-pane, so Textual's real driver, key parsing and rendering are used,
not Pilot's. The command runs as `mlbox tui` runs it: its Typer function, in a subprocess, as the OS user.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import open_box

TMUX = shutil.which("tmux", path="/usr/bin:/bin:/usr/local/bin")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(TMUX is None, reason="needs tmux")]
LAUNCH = "import typer; from mlbox.cli.tui import register; app = typer.Typer(); register(app); app.command('x')(lambda: None); app(['tui'])"


class Terminal:
    """An 80×24 tmux session on a private tmux server, running one command."""

    def __init__(self, command: str) -> None:
        self.name = f"mlbox-tui-{os.getpid()}"
        self.tmux("new-session", "-d", "-s", self.name, "-x", "80", "-y", "24", command)

    def tmux(self, *args: str) -> str:
        return subprocess.run([str(TMUX), "-L", self.name, *args], capture_output=True, text=True, timeout=10).stdout

    def keys(self, *keys: str, literal: bool = False) -> None:
        self.tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def shows(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            shown = self.tmux("capture-pane", "-t", self.name, "-p")
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen:\n{shown}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")


def test_change_the_canary_weight_in_a_real_terminal(tui_home: Path) -> None:
    env = {"MLBOX_HOME": str(tui_home), "MLBOX_SERVE_PORT": "9", "NO_COLOR": "1", "HOME": os.environ["HOME"],
           "TERM": "xterm-256color", "LANG": "C.UTF-8"}  # fmt: skip
    command = "exec /usr/bin/env -i " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    terminal = Terminal(f"{command} {shlex.quote(sys.executable)} -c {shlex.quote(LAUNCH)}")
    try:
        terminal.shows("churn_api  churn:1 | churn:2  90/10")
        terminal.keys("4")
        terminal.shows("W canary weight")
        terminal.keys("W", "Right", "Right", "Enter")
        terminal.shows("90/10 → 80/20")
        terminal.keys("BTab")  # from Cancel (the default focus) back to the reason
        time.sleep(0.5)  # keys sent at once may land before the focus moved
        terminal.keys("tmux step", literal=True)
        terminal.shows("▊  tmux step")
        terminal.keys("Enter")  # to Apply (the focus moves on the app's next turn: a second key at once lands before it)
        time.sleep(0.5)
        terminal.keys("Enter")  # apply
        terminal.shows("80/20                      3")
        terminal.keys("q")
    finally:
        terminal.close()
    with open_box(tui_home) as box:
        assert box.deployments.get("churn_api").canary_weight == 20.0
        entry = box.audit.entries(limit=1, action="deploy.canary")[0]
    assert entry.details["reason"] == "tmux step" and entry.details["via"] == "tui"
