"""A job's log: `Console.job_log` reads byte ranges of the file the worker named; `l` on Jobs follows it.

The logs are real files where the worker writes them (`logs/jobs/<id>.log`, named in the job's record
by the queue's own `started()`), one of them written by the real worker running a command job.
"""

from __future__ import annotations

import asyncio
import json
import re
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from textual.app import App, ComposeResult
from textual.pilot import Pilot

from mlbox.config import load_settings
from mlbox.console.logs import MAX_LIMIT
from mlbox.console.service import Console
from mlbox.errors import PermissionDenied, UsageError
from mlbox.hardware import Inventory
from mlbox.jobs.worker import Worker
from mlbox.tui.app import MlboxApp
from mlbox.tui.local import LocalClient
from mlbox.tui.logview import LogLines, LogScreen
from mlbox.tui.screens.jobs import JobsScreen

from ..conftest import OS_USER
from ._pilot import drive, fill, keys_shown, press, settle
from .conftest import ENVIRON, open_box


@contextmanager
def console(home: Path, os_user: str = OS_USER) -> Iterator[Console]:
    box = open_box(home)
    try:
        yield Console(box, box.identity.actor_for_os_user(os_user))
    finally:
        box.close()


def start_job(home: Path, text: str | bytes = "") -> tuple[int, Path]:
    """Claim the next queued job as a worker does and give it a log where the worker writes one."""
    box = open_box(home)
    try:
        (job, _), *_ = box.jobs.claim("test-worker", [], 1, 600.0)
        path = home / "logs" / "jobs" / f"{job.id}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        box.jobs.started(job.id, os.getpid(), str(path))
        return job.id, path
    finally:
        box.close()


def append(path: Path, text: str) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(text)


def numbered(first: int, last: int) -> str:
    return "".join(f"line {i}\n" for i in range(first, last))


# Console.job_log ---------------------------------------------------------------------------------------------
def test_the_tail_starts_at_a_line_boundary_and_offsets_continue_it(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, numbered(0, 100))
    size = path.stat().st_size
    with console(tui_home) as c:
        tail = c.job_log(job_id, -1, 100)
        assert tail["size"] == size and tail["end"] == size and tail["job"] == job_id
        assert tail["status"] == "running" and tail["done"] is False
        assert size - 100 < tail["start"] and tail["text"].startswith("line ") and tail["text"].endswith("line 99\n")
        assert path.read_bytes()[tail["start"] - 1 : tail["start"]] == b"\n"  # the byte before it ends a line
        whole = c.job_log(job_id, 0, 1 << 30)  # a limit beyond the cap is capped, not refused
        assert whole["text"] == numbered(0, 100) and (whole["start"], whole["end"]) == (0, size)
        part = c.job_log(job_id, 7, 10)
        assert part["text"] == numbered(0, 100)[7:17] and (part["start"], part["end"]) == (7, 17)
        append(path, "line 100\n")
        more = c.job_log(job_id, tail["end"])
        assert more["text"] == "line 100\n" and more["start"] == size and more["end"] == more["size"] == size + 9
        assert c.job_log(job_id, more["end"])["text"] == ""
        assert json.loads(json.dumps(more)) == more  # what a remote TUI gets back is the same dict
        with pytest.raises(UsageError):
            c.job_log(job_id, -2)
        with pytest.raises(UsageError):
            c.job_log(job_id, 0, 0)
    assert MAX_LIMIT == 1 << 20


def test_a_range_never_ends_inside_a_character_and_undecodable_bytes_are_replaced(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, "é€\n".encode() + b"\xff bad\n" + "naïve".encode()[:3])  # ends inside ï
    with console(tui_home) as c:
        got = c.job_log(job_id, 0)
        assert got["text"] == "é€\n\ufffd bad\nna" and got["end"] == got["size"] - 1
        with path.open("ab") as fh:
            fh.write("naïve".encode()[3:] + b"\n")
        assert c.job_log(job_id, got["end"])["text"] == "ïve\n"
        assert c.job_log(job_id, 0, 3)["text"] == "é"  # 3 bytes: é and the first byte of €, left for the next read


def test_a_long_line_tail_and_a_replaced_log(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, "x" * 500)
    with console(tui_home) as c:
        tail = c.job_log(job_id, -1, 100)
        assert tail["text"] == "x" * 100 and tail["start"] == 400  # no line boundary in range: the bytes as they are
        path.write_text("new\n")
        again = c.job_log(job_id, tail["end"])  # past the end of the log now there: its tail
        assert again["text"] == "new\n" and again["start"] == 0


def test_no_log_yet_is_empty_and_a_log_outside_the_box_is_refused(tui_home: Path, tmp_path: Path) -> None:
    with console(tui_home) as c:
        queued = c.job_log(2)
        assert queued == {"job": 2, "status": "queued", "size": 0, "start": 0, "end": 0, "text": "", "done": False}
    job_id, path = start_job(tui_home, "")
    path.unlink()  # claimed and named, not written yet
    with console(tui_home) as c:
        assert c.job_log(job_id)["text"] == ""
    outside = tmp_path / "secret.txt"
    outside.write_text("not a log\n")
    box = open_box(tui_home)
    try:
        box.jobs.started(job_id, os.getpid(), str(outside))
        (tui_home / "logs" / "jobs" / "link.log").symlink_to(outside)
        with pytest.raises(PermissionDenied):
            Console(box, box.identity.actor_for_os_user(OS_USER)).job_log(job_id)
        box.jobs.started(job_id, os.getpid(), str(tui_home / "logs" / "jobs" / "link.log"))  # a link out of the box
        with pytest.raises(PermissionDenied):
            Console(box, box.identity.actor_for_os_user(OS_USER)).job_log(job_id)
    finally:
        box.close()


def test_every_role_that_lists_jobs_reads_their_logs(tui_home: Path) -> None:
    job_id, _ = start_job(tui_home, "hello\n")
    with console(tui_home, "vic") as c:  # the viewer, as `mlbox jobs logs` allows
        assert c.job_log(job_id)["text"] == "hello\n"


# the log screen ---------------------------------------------------------------------------------------------
async def open_log(app: MlboxApp, pilot: Pilot[Any], job_id: int) -> LogScreen:
    await press(pilot, "5")
    screen = app.screen
    assert isinstance(screen, JobsScreen)
    screen.table.move_cursor(row=[int(r["id"]) for r in screen.table.shown].index(job_id))
    await settle(pilot)
    assert "open_log" in keys_shown(app)
    await press(pilot, "l")
    log = app.screen
    assert isinstance(log, LogScreen) and log.job_id == job_id
    return log


def test_l_shows_the_tail_of_a_log_the_real_worker_wrote_and_esc_goes_back(tui_home: Path) -> None:
    box = open_box(tui_home)
    try:
        for queued in (1, 2):
            box.jobs.cancel(queued, OS_USER)
        argv = [sys.executable, "-c", r"print('step 1'); print('step 2 \033[31mred\033[0m'); print('last')"]
        job_id = box.jobs.submit("command", {"argv": argv}, OS_USER).id
        previous = signal.getsignal(signal.SIGTERM)
        try:
            Worker(box.jobs, tui_home, gpus="none", poll_s=0.1, inventory=lambda: Inventory(())).run(once=True)  # `mlbox jobs exec` in a child process
        finally:
            signal.signal(signal.SIGTERM, previous)
        assert box.jobs.get(job_id).status == "succeeded"
    finally:
        box.close()

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        lines = list(screen.lines.lines)
        assert lines[0].startswith(f"--- job {job_id} attempt 1")
        assert "step 1" in lines and "step 2 \\x1b[31mred\\x1b[0m" in lines and "last" in lines  # ANSI escaped
        assert screen.state_text == "■ end of the log: the job succeeded"
        assert screen._timer is None  # ended and read to its end: no more polls
        assert "succeeded" in str(screen.query_one("#title").render())
        await press(pilot, "escape")
        assert isinstance(app.screen, JobsScreen)

    drive(tui_home, script)


def test_the_view_follows_new_lines_stops_when_scrolled_up_and_end_resumes(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, numbered(0, 200))

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        log = screen.lines
        assert log.lines[-2] == "line 199" and log.following
        assert log.scroll_y == log.max_scroll_y > 0  # at the end, the newest line in view
        append(path, numbered(200, 210) + "half a li")
        await press(pilot, "r")  # a poll (the test app's refresh is a minute apart)
        assert log.lines[-2] == "line 209" and "half a li" not in log.lines  # a line shows once it ends
        assert log.scroll_y == log.max_scroll_y and screen.state_text.startswith("● following")

        await press(pilot, "up", "up", "up")
        assert not log.following and screen.state_text == "‖ not following: no new lines below (end follows)"
        before = log.scroll_y
        top = log.lines[int(before)]
        append(path, "ne\n" + numbered(210, 214))
        await press(pilot, "r")
        assert log.lines[-2] == "line 213" and log.lines[-6] == "half a line"
        assert log.scroll_y == before and log.lines[int(log.scroll_y)] == top  # the view did not jump
        assert "+5 lines below" in screen.state_text

        await press(pilot, "end")
        assert log.following and log.waiting == 0 and log.scroll_y == log.max_scroll_y
        assert screen.state_text.startswith("● following")
        await press(pilot, "f")  # off and on again by key
        assert not log.following
        append(path, "line 214\n")
        await press(pilot, "r", "f")
        assert log.following and log.scroll_y == log.max_scroll_y and log.lines[-2] == "line 214"

    drive(tui_home, script)


def test_pause_stops_the_polls(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, "one\n")

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        await press(pilot, "full_stop")
        assert app.paused and screen.state_text == "‖ paused (. resumes)"
        append(path, "two\n")
        screen._tick()  # the refresh period passed: paused, so no read
        await settle(pilot)
        assert "two" not in screen.lines.lines
        await press(pilot, "full_stop")  # resumed: read at once
        assert not app.paused and "two" in screen.lines.lines and screen.state_text.startswith("● following")

    drive(tui_home, script)


def test_control_characters_and_progress_bars_are_shown_escaped(tui_home: Path) -> None:
    job_id, _ = start_job(tui_home, "a\tb\x07\n10%\r50%\r100%\r\n\x1b]0;title\x07done\n")

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        assert list(screen.lines.lines[:3]) == ["a       b\\x07", "100%", "\\x1b]0;title\\x07done"]

    drive(tui_home, script)


def test_the_kept_lines_are_capped_without_moving_the_view() -> None:
    """The oldest lines go past the cap; a reader scrolled up keeps reading the same lines."""
    class One(App[None]):
        def compose(self) -> ComposeResult:
            yield LogLines(max_lines=50)

    async def go() -> None:
        app = One()
        async with app.run_test(size=(40, 12)) as pilot:
            log = app.query_one(LogLines)
            log.add(numbered(0, 40))
            await pilot.pause()
            log.scroll_to(y=log.scroll_y - 5, animate=False, immediate=True)
            await pilot.pause()
            assert not log.following
            top = log.lines[int(log.scroll_y)]
            log.add(numbered(40, 70))
            await pilot.pause()
            assert len(log.lines) <= 50 and log.lines[-2] == "line 69" and log.waiting == 30
            assert log.lines[int(log.scroll_y)] == top
            log.scroll_to(y=log.max_scroll_y, animate=False, immediate=True)  # scrolled back down to the end
            await pilot.pause()
            assert log.following and log.waiting == 0

    asyncio.run(go())


def test_a_log_far_ahead_is_read_from_its_tail_with_the_gap_said_and_a_replaced_one_from_its_tail(tui_home: Path) -> None:
    job_id, path = start_job(tui_home, "first\n")

    async def catch_up(pilot: Pilot[Any], screen: LogScreen) -> None:
        await press(pilot, "r")
        for _ in range(40):  # the next chunks follow at once, each in its own worker
            if not screen.more:
                break
            await pilot.pause(0.02)
            await settle(pilot)
        assert not screen.more

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        append(path, "".join(f"line {i:06} {'x' * 88}\n" for i in range(60_000)))  # 6 MB since the last poll
        await catch_up(pilot, screen)
        log = list(screen.lines.lines)
        assert log[0] == "first" and log[1].startswith("line 000000 ") and log[-2].startswith("line 059999 ")
        gap = [i for i, line in enumerate(log) if line.startswith("⋯ ")]
        assert len(gap) == 1 and re.fullmatch(r"⋯ \d\.\d MiB of the log skipped ⋯", log[gap[0]]), log[gap[0]]
        assert len(log) < 6_000  # the first chunk after the poll, the gap, the tail: not 6 MB of lines
        path.write_text("again\n")  # a new log in its place (shorter than what was read)
        await catch_up(pilot, screen)
        assert list(screen.lines.lines) == ["⋯ the log was replaced; from its tail ⋯", "again", ""]

    drive(tui_home, script)


def test_the_log_keys_remap_by_id_and_esc_and_pause_remap_with_the_apps(tui_home: Path) -> None:
    job_id, _ = start_job(tui_home, numbered(0, 100))
    client = LocalClient(load_settings(tui_home, environ=ENVIRON), os_user=OS_USER)
    app = MlboxApp(client, refresh_s=60, keymap={"mlbox.jobs.log": "o", "mlbox.log.toggle": "t", "mlbox.back": "b"})

    async def go() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(pilot)
            await press(pilot, "5")
            jobs = app.screen
            assert isinstance(jobs, JobsScreen)
            jobs.table.move_cursor(row=[int(r["id"]) for r in jobs.table.shown].index(job_id))
            await press(pilot, "o")
            screen = app.screen
            assert isinstance(screen, LogScreen)
            await press(pilot, "t")
            assert not screen.lines.following
            await press(pilot, "b")
            assert app.screen is jobs

    asyncio.run(go())


def test_slash_finds_text_n_and_p_walk_the_matches_and_esc_clears_then_goes_back(tui_home: Path) -> None:
    text = numbered(0, 300).replace("line 42\n", "line 42 ERROR disk full\n").replace("line 250\n", "line 250 error: retry\n")
    job_id, _ = start_job(tui_home, text)
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        log = screen.lines
        await press(pilot, "slash")
        await fill(pilot, "error")
        # from the top of the view (the tail) down, wrapping: line 42 first
        seen["first"] = (screen.match, log.following, screen.state_text, log.scroll_y <= 42 < log.scroll_y + log.size.height)
        seen["marked"] = log.highlighter.term
        await press(pilot, "n")
        seen["next"] = (screen.match, screen.state_text)
        await press(pilot, "n")
        seen["wrapped"] = screen.match
        await press(pilot, "p")
        seen["previous"] = screen.match
        await press(pilot, "slash")
        await fill(pilot, "no such text")
        seen["none"] = screen.state_text
        await press(pilot, "escape")
        seen["cleared"] = (screen.term, log.highlighter.term, isinstance(app.screen, LogScreen), screen.state_text)
        await press(pilot, "escape")
        seen["back"] = isinstance(app.screen, JobsScreen)

    drive(tui_home, script)
    match, following, state, in_view = seen["first"]
    assert match == 42 and not following and in_view and seen["marked"] == "error"
    assert state == "/error: match 1 of 2, line 43 (n next, p previous, esc clears)"
    assert seen["next"] == (250, "/error: match 2 of 2, line 251 (n next, p previous, esc clears)")
    assert seen["wrapped"] == 42 and seen["previous"] == 250
    assert seen["none"] == "/no such text: no match (esc clears)"
    term, marked, still_log, state = seen["cleared"]
    assert (term, marked, still_log) == ("", "", True) and not state.startswith("/")
    assert seen["back"]


def test_every_occurrence_of_the_searched_text_is_marked_in_reverse_video() -> None:
    from rich.text import Text

    from mlbox.tui.logview import Found

    line = Text("Error: retry after error; ERROR")
    Found("error").highlight(line)
    assert [(s.start, s.end, str(s.style)) for s in line.spans] == [(0, 5, "reverse"), (19, 24, "reverse"), (26, 31, "reverse")]
    untouched = Text("nothing here")
    Found("").highlight(untouched)
    assert untouched.spans == []


def test_a_match_keeps_its_line_while_the_cap_drops_older_ones_and_is_gone_with_its_line(tui_home: Path) -> None:
    text = numbered(0, 10_100).replace("line 150\n", "line 150 needle\n").replace("line 9000\n", "line 9000 needle\n")
    job_id, path = start_job(tui_home, text)
    seen: dict[str, Any] = {}

    async def script(app: MlboxApp, pilot: Pilot[Any]) -> None:
        screen = await open_log(app, pilot, job_id)
        log = screen.lines
        await press(pilot, "slash")
        await fill(pilot, "needle")
        seen["first"] = log.lines[screen.match] if screen.match is not None else None
        append(path, numbered(10_100, 10_140))  # 40 more lines: the cap drops the 40 oldest
        await press(pilot, "r")
        seen["kept"] = (log.lines[screen.match] if screen.match is not None else None, screen.state_text)
        append(path, numbered(10_140, 10_240))  # now line 150 itself goes
        await press(pilot, "r")
        seen["gone"] = (screen.match, screen.state_text)
        await press(pilot, "n")
        seen["next"] = log.lines[screen.match] if screen.match is not None else None

    drive(tui_home, script)
    assert seen["first"] == "line 150 needle"
    kept, state = seen["kept"]
    assert kept == "line 150 needle" and state.startswith("/needle: match 1 of 2, line ")
    assert seen["gone"] == (None, "/needle: 1 match (n next, p previous, esc clears)")
    assert seen["next"] == "line 9000 needle"
