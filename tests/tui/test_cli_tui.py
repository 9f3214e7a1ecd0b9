"""`mlbox tui` as a command: Textual stays out of the CLI's imports, and the app acts as the CLI would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ..conftest import OS_USER, run_python
from .conftest import open_box


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.argv = ['mlbox', '--help']\nfrom mlbox.cli import main\ntry:\n    main.run()\nexcept SystemExit:\n    pass",
        "import mlbox.cli.tui, mlbox.cli.main",
    ],
)
def test_the_cli_never_imports_textual(code: str) -> None:
    proc = run_python(code + "\nimport sys\nprint('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'mlbox.tui')))")
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]


def _invoke(home: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[Any, list[Any]]:
    from mlbox.cli import _common
    from mlbox.cli.tui import register
    from mlbox.tui.app import MlboxApp

    started: list[Any] = []
    monkeypatch.setattr(MlboxApp, "run", lambda self, **kw: started.append((self, kw)))  # the terminal is the boundary
    monkeypatch.setattr(_common.state, "home", str(home))
    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands: typer keeps `tui` as a subcommand
    return CliRunner().invoke(app, ["tui", "--refresh", "5"], env=env), started


def test_tui_runs_the_app_as_the_os_user(tui_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, started = _invoke(tui_home, monkeypatch, {"MLBOX_HOME": str(tui_home)})
    assert result.exit_code == 0, result.output
    (app, kw), = started
    assert (app.me.name, app.me.role, app.refresh_s, kw) == (OS_USER, "admin", 5.0, {"mouse": False})


def test_tui_acts_as_the_tokens_user(tui_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open_box(tui_home) as box:
        secret = box.identity.create_token(OS_USER, "vic", never_expires=True)[1]
    result, started = _invoke(tui_home, monkeypatch, {"MLBOX_TOKEN": secret})
    assert result.exit_code == 0, result.output
    assert (started[0][0].me.name, started[0][0].me.role) == ("vic", "viewer")
    assert not started[0][0].me.may("deploy canary")


def test_tui_refuses_a_bad_token_before_starting(tui_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlbox.errors import AuthError

    result, started = _invoke(tui_home, monkeypatch, {"MLBOX_TOKEN": "mlbx_000000000000_" + "x" * 43})
    assert isinstance(result.exception, AuthError) and started == []
