"""Remapped keys (`tui.keymap`): parsed and checked before the screen opens, then the app's keys change."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest

from mlbox.config import load_settings
from mlbox.errors import SettingsError
from mlbox.tui import keymap
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient
from mlbox.tui.screens.deployments import DeploymentsScreen
from mlbox.tui.split import SplitEditor

from ._pilot import press, settle
from .conftest import ENVIRON


def test_every_binding_has_an_id_and_the_changes_are_the_uppercase_ones() -> None:
    known = keymap.bindings()
    assert known["mlbox.deploy.weights"] == "W" and known["mlbox.screen.refresh"] == "r"
    changes = {bid for bid, key in known.items() if keymap._changes(key)}
    assert changes >= {"mlbox.deploy.weights", "mlbox.deploy.rollback", "mlbox.deploy.shadow", "mlbox.models.promote",
                       "mlbox.models.archive", "mlbox.jobs.cancel", "mlbox.jobs.retry", "mlbox.jobs.train",
                       "mlbox.monitor.check"}  # fmt: skip
    assert all(bid.startswith("mlbox.") for bid in known)


@pytest.mark.parametrize("text, error", [
    ("mlbox.deploy.weights=ctrl+w", "may not sit on ctrl+w"),
    ("mlbox.nope=x", "no binding 'mlbox.nope'"),
    ("mlbox.deploy.weights", "is not id=key"),
    ("mlbox.screen.refresh=\x1b[2J", "is not a key"),
    ("mlbox.screen.refresh=", "is not id=key"),
])  # fmt: skip
def test_a_bad_remap_is_one_error_naming_it(text: str, error: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(error)):
        keymap.parse(text, keymap.bindings())


def test_the_setting_is_read_and_a_look_key_may_take_ctrl() -> None:
    parsed = keymap.parse(" mlbox.deploy.weights = w ; mlbox.screen.refresh=f5,ctrl+r;", keymap.bindings())
    assert parsed == {"mlbox.deploy.weights": "w", "mlbox.screen.refresh": "f5,ctrl+r"}


def test_a_remapped_key_drives_the_action_and_the_old_one_no_longer_does(tui_home: Path) -> None:
    settings = load_settings(tui_home, environ={**ENVIRON, "MLBOX_TUI_KEYMAP": "mlbox.deploy.weights=w"})
    keys = keymap.parse(settings["tui.keymap"], keymap.bindings())
    app = MlboxApp(LocalClient(settings), refresh_s=60, keymap=keys)
    seen: list[Any] = []

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await press(pilot, "4", "W")
            seen.append(type(app.screen))
            seen.append({b.binding.key for b in app.screen.active_bindings.values() if b.binding.action == "weights"})
            await press(pilot, "w")
            seen.append(type(app.screen))

    asyncio.run(go())
    assert seen == [DeploymentsScreen, {"w"}, SplitEditor]  # `?` and the footer list active_bindings' keys
