"""Driving the app in tests: build it on a box as some OS user, let its workers finish, read its tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from mlbox.config import load_settings
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient
from mlbox.tui.screens.base import TableScreen

from ..conftest import OS_USER
from .conftest import ENVIRON


def make_app(home: Path, os_user: str = OS_USER) -> MlboxApp:
    # refresh far apart: tests wait on workers explicitly, a tick must not race them
    return MlboxApp(LocalClient(load_settings(home, environ=ENVIRON), os_user=os_user), refresh_s=60)


async def settle(pilot: Pilot[Any]) -> None:
    """Until every worker is done and its result painted."""
    for _ in range(3):
        await pilot.pause()
        await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def press(pilot: Pilot[Any], *keys: str) -> None:
    for key in keys:
        await pilot.press(key)
        await settle(pilot)


async def type_text(pilot: Pilot[Any], text: str) -> None:
    """Type into the focused widget key by key (about 60 ms a key under Pilot: keep it short)."""
    await pilot.press(*["space" if ch == " " else ch for ch in text])


async def fill(pilot: Pilot[Any], text: str) -> None:
    """Put `text` into the focused Input at once, then press enter."""
    from textual.widgets import Input

    focused = pilot.app.focused
    assert isinstance(focused, Input), focused
    focused.value = text
    await press(pilot, "enter")


def drive(home: Path, script: Callable[[MlboxApp, Pilot[Any]], Awaitable[None]], *, os_user: str = OS_USER,
          size: tuple[int, int] = (80, 24)) -> MlboxApp:  # fmt: skip
    """Run `script(app, pilot)` against a fresh app on `home`; the app, after it exited."""
    app = make_app(home, os_user)

    async def go() -> None:
        async with app.run_test(size=size) as pilot:
            await settle(pilot)
            await script(app, pilot)

    asyncio.run(go())
    return app


def table_rows(app: MlboxApp) -> list[dict[str, Any]]:
    screen = app.screen
    assert isinstance(screen, TableScreen), screen
    return [dict(r) for r in screen.table.shown]


def cells(app: MlboxApp) -> list[list[str]]:
    """What the table shows, cell by cell, as plain text."""
    screen = app.screen
    assert isinstance(screen, TableScreen), screen
    table = screen.table
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


def keys_shown(app: MlboxApp) -> set[str]:
    """The actions of the bindings the current screen offers (what the footer and `?` list)."""
    return {b.binding.action for b in app.screen.active_bindings.values()}
