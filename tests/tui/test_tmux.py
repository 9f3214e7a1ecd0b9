"""The real `mlbox tui` command in a real terminal (tmux): open Deployments, change the canary weight, confirm.

Through tmux send-keys and capture-pane, so Textual's real driver, key parsing and rendering are used,
not Pilot's. The command runs as `mlbox tui` runs it: its Typer function, in a subprocess, as the OS user.
The second test does it beside a real `mlbox serve` on the same box (tests/serve/conftest.py starts it)
and shows that server serve the new split.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..conftest import OS_USER
from ..serve.conftest import running_server
from .conftest import USERS, open_box

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

    def shows(self, text: str, timeout: float = 20, *, pattern: bool = False) -> str:
        """The screen once it shows `text` (a regular expression with `pattern`); fails after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.tmux("capture-pane", "-t", self.name, "-p")
            if (re.search(text, shown) if pattern else text in shown):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen:\n{shown}")
            time.sleep(0.1)

    def close(self) -> None:
        self.tmux("kill-server")


def tui_in_tmux(home: Path, port: int = 9) -> Terminal:
    """`mlbox tui` on `home` in a fresh 80×24 tmux session, with a bare environment; Pulse probes `port`."""
    env = {"MLBOX_HOME": str(home), "MLBOX_SERVE_HOST": "127.0.0.1", "MLBOX_SERVE_PORT": str(port), "NO_COLOR": "1",
           "HOME": os.environ["HOME"], "TERM": "xterm-256color", "LANG": "C.UTF-8"}  # fmt: skip
    command = "exec /usr/bin/env -i " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    return Terminal(f"{command} {shlex.quote(sys.executable)} -c {shlex.quote(LAUNCH)}")


def test_change_the_canary_weight_in_a_real_terminal(tui_home: Path) -> None:
    terminal = tui_in_tmux(tui_home)
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


def test_a_weight_changed_in_the_terminal_is_served_by_the_running_server(tui_home: Path) -> None:
    """Pulse shows the running server up; W in Deployments takes the canary from 10 to 50; the server then reports
    the new revision and weight and routes a burst of requests near 50/50 (90/10 would fail the bound), and
    Pulse's requests/s sparkline shows that burst from the server's prediction log."""
    with open_box(tui_home) as box:
        tokens = {role: box.identity.create_token(OS_USER, user, never_expires=True)[1]
                  for role, user in (("admin", OS_USER), ("viewer", USERS["viewer"]))}  # fmt: skip
    with running_server(tui_home, tokens, MLBOX_SERVE_RELOAD_SECONDS="0.2") as server:
        before = server.wait_serving("churn_api")
        assert (before["canary_weight"], before["revision"]) == (10.0, 2)
        terminal = tui_in_tmux(tui_home, server.port)
        try:
            terminal.shows(f"✓ up  http://127.0.0.1:{server.port}  readyz 200")
            terminal.shows("churn_api  churn:1 | churn:2  90/10")
            terminal.keys("4")
            terminal.shows("W canary weight")
            terminal.keys("W", *["Right"] * 8, "Enter")
            terminal.shows("90/10 → 50/50")
            terminal.keys("Tab")  # from Cancel (the default focus) on to Apply
            time.sleep(0.5)  # the focus moves on the app's next turn: a key sent at once lands before it
            terminal.keys("Enter")
            terminal.shows("50/50                      3")
            terminal.keys("1")
            terminal.shows("churn_api  churn:1 | churn:2  50/50")
            served = server.wait_serving("churn_api")
            assert (served["canary_weight"], served["revision"]) == (50.0, 3)
            n, canary = 200, 0
            rows = [{"x0": 0.1, "x1": -0.2, "x2": 0.3}]
            for _ in range(n):
                response = server.predict("churn_api", rows, role="admin")
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["model"] == {"primary": "churn:1", "canary": "churn:2"}[body["variant"]], body
                canary += body["variant"] == "canary"
            # four standard deviations of Binomial(200, 0.5) is 0.14: at the old 10% the share would be ~0.1
            assert abs(canary / n - 0.5) <= 4 * (0.25 / n) ** 0.5, canary
            # the burst, logged by the server, in Pulse's sparkline once its 10-s bucket closed and was flushed
            terminal.shows(r"req/s [▁-█]+ (?!0/s)[\d.]+/s", timeout=15, pattern=True)
            terminal.keys("q")
        finally:
            terminal.close()
