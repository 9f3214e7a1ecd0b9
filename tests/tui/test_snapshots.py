"""SVG snapshots of Pulse and Deployments at 80×24 and 120×36 with NO_COLOR (set for every test by tests/conftest.py).

Taken as the template's viewer (`vic`), ml-engineer (`mel`, who may change deployments) and an admin
`ada` added for the picture: never as the OS user running the tests (the box's first admin), whose name
would end up in the pictures and differ from machine to machine. The admin's picture is Deployments,
whose rows name only `mel`; a test checks the OS user's name is not in it.
Regenerate with `pytest tests/tui/test_snapshots.py --snapshot-update` and look at the SVGs first.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from ..conftest import OS_USER
from ._pilot import make_app, settle
from .conftest import open_box


async def ready(pilot: Pilot[Any]) -> None:
    await settle(pilot)


@pytest.fixture
def admin_home(tui_home: Path) -> Path:
    assert os.environ.get("NO_COLOR") == "1"  # Textual reads it when the app is made: a monochrome picture
    return tui_home


def test_pulse_80x24_viewer(admin_home: Path, snap_compare: Any) -> None:
    assert snap_compare(make_app(admin_home, "vic"), terminal_size=(80, 24), run_before=ready)


def test_deployments_80x24_viewer(admin_home: Path, snap_compare: Any) -> None:
    """No `W canary weight` in the footer: the viewer's screen does not contain the action."""
    assert snap_compare(make_app(admin_home, "vic"), press=["4"], terminal_size=(80, 24), run_before=ready)


def test_deployments_80x24_ml_engineer(admin_home: Path, snap_compare: Any) -> None:
    assert snap_compare(make_app(admin_home, "mel"), press=["4"], terminal_size=(80, 24), run_before=ready)


def test_pulse_120x36_viewer(admin_home: Path, snap_compare: Any) -> None:
    assert snap_compare(make_app(admin_home, "vic"), terminal_size=(120, 36), run_before=ready)


def test_deployments_120x36_ml_engineer(admin_home: Path, snap_compare: Any) -> None:
    assert snap_compare(make_app(admin_home, "mel"), press=["4"], terminal_size=(120, 36), run_before=ready)


@pytest.fixture
def ada_home(admin_home: Path) -> Path:
    with open_box(admin_home) as box:
        box.identity.add_user(OS_USER, "ada", "admin", os_user="ada")
    return admin_home


def test_deployments_120x36_admin(ada_home: Path, snap_compare: Any) -> None:
    """The admin's keys: canary weight, roll back and shadow in the footer."""
    app = make_app(ada_home, "ada")
    assert app.me.role == "admin"
    assert snap_compare(app, press=["4"], terminal_size=(120, 36), run_before=ready)


def test_monitoring_120x36_admin(ada_home: Path, snap_compare: Any) -> None:
    """The stored drift check, one row per variant, verdicts in glyph and word."""
    assert snap_compare(make_app(ada_home, "ada"), press=["7"], terminal_size=(120, 36), run_before=ready)


def test_the_admin_picture_holds_no_os_user_name(ada_home: Path) -> None:
    import asyncio

    app = make_app(ada_home, "ada")

    async def go() -> str:
        async with app.run_test(size=(120, 36)) as pilot:
            await settle(pilot)
            await pilot.press("4")
            await settle(pilot)
            return app.export_screenshot()

    svg = asyncio.run(go())
    import html
    import re

    text = html.unescape(re.sub(r"<[^>]+>", " ", svg.split("</style>")[-1]))  # what the picture shows, not its markup
    assert "ada: admin" in text.replace("\xa0", " ") and "churn_api" in text
    assert not re.search(rf"\b{re.escape(OS_USER)}\b", text)
