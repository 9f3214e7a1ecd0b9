"""A job's log, followed: `l` on Jobs opens it at its tail and polls for what the job writes next.

The lines sit in `LogLines`, Textual's `Log` widget (a ScrollView that renders only the lines in view,
unlike RichLog, which renders every line as it is written), capped at MAX_LINES (the oldest dropped).
It follows the end while the view is at the bottom; scrolling up stops following (new lines wait below,
counted as "+N lines", and the view does not move), `end` or `f` follows again, `.` pauses like
everywhere, `esc` goes back to the jobs. Each poll reads what was written after the last one
(`job_log(id, end)`, at most CHUNK bytes, the next chunk at once while there is more); a log that ran
more than SKIP bytes ahead is read from its tail again, with a line saying how much was skipped.
Every line of the log goes through `printable` (control and ANSI characters escaped); a carriage
return keeps what follows it (a progress bar's last state), and a line shows once its newline is written.
`/` searches the lines held (case-insensitive): every occurrence is shown in reverse video, the view
moves to the first match from its top down and stops following; `n` and `p` go to the next and
previous match (wrapping), the line under the log says which match of how many; `esc` clears it.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from rich.highlighter import Highlighter
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import var
from textual.widgets import Footer, Input, Log, Static

from mlbox.tui.screens.base import DetailScreen
from mlbox.tui.widgets import size, status
from mlbox.types import printable

Row = dict[str, Any]
MAX_LINES = 10_000  # kept in memory; the oldest go first
CHUNK = 256 << 10  # bytes asked for per poll (the console caps an answer at 1 MiB)
SKIP = 4 << 20  # further behind than this, a poll reads the tail instead of every byte in between


def clean(line: str) -> str:
    """One line of the log as it may be shown: after its last carriage return, tabs expanded, the rest escaped."""
    line = line.removesuffix("\r").rsplit("\r", 1)[-1]
    return printable(line.expandtabs(8))


def amount(n: int) -> str:
    """Bytes in words: a small log in bytes, a larger one as the other screens say sizes."""
    return f"{n:,} bytes" if n < 100 << 10 else size(n)


def pattern(term: str) -> re.Pattern[str]:
    """The searched text, literally, ignoring case (on the text itself: lowering can change a line's length)."""
    return re.compile(re.escape(term), re.IGNORECASE)


class Found(Highlighter):
    """Marks every case-insensitive occurrence of the searched text in reverse video (no colour needed)."""

    def __init__(self, term: str = "") -> None:
        self.term = term
        self.pattern = pattern(term)

    def highlight(self, text: Text) -> None:
        if not self.term:
            return
        for m in self.pattern.finditer(text.plain):
            text.stylize("reverse", m.start(), m.end())


class LogLines(Log):
    """Log lines, following the end unless the reader scrolled up (then `waiting` counts the lines below)."""

    DEFAULT_CSS = "LogLines { height: 1fr; }"
    following: var[bool] = var(True)
    waiting: var[int] = var(0)  # lines written below the view since following stopped

    def __init__(self, *, max_lines: int = MAX_LINES, **kwargs: Any) -> None:
        super().__init__(max_lines=max_lines, auto_scroll=False, highlight=True, **kwargs)
        self.partial = ""  # the last line, until its newline comes
        self.highlighter = Found()
        self.dropped = 0  # lines the cap dropped from the top since the log was last cleared
        self.generation = 0  # how many times it was cleared (a replaced log): line numbers of before mean nothing

    def mark_found(self, term: str) -> None:
        """Highlight `term` (empty: nothing) on every line, those drawn already included."""
        self.highlighter = Found(term)
        self.refresh_lines(0, len(self.lines))

    def find(self, term: str, after: int, step: int) -> int | None:
        """The next line (step 1) or previous one (-1) from `after` that holds `term`, wrapping around; None: none does."""
        lines, found = self.lines, pattern(term)
        for i in range(1, len(lines) + 1):
            y = (after + step * i) % len(lines)
            if found.search(lines[y]):
                return y
        return None

    def clear(self) -> LogLines:
        self.dropped, self.generation = 0, self.generation + 1
        super().clear()
        return self

    def add(self, text: str) -> None:
        """Append raw log text; the view stays on the lines it showed unless following."""
        *complete, self.partial = (self.partial + text).split("\n")
        if complete:
            self._put([clean(line) for line in complete])

    def mark(self, note: str) -> None:
        """A line of mlbox's own (a gap in the log), after dropping the unfinished line before it."""
        self.partial = ""
        self._put([f"⋯ {note} ⋯"])

    def _put(self, lines: list[str]) -> None:
        before, y = len(self.lines), self.scroll_y
        self.write("".join(f"{line}\n" for line in lines), scroll_end=self.following)
        dropped = before + len(lines) - len(self.lines)  # the cap dropped lines from the top
        self.dropped += max(0, dropped)
        if not self.following:
            self.waiting += len(lines)
            if dropped > 0:
                self.scroll_to(y=max(0.0, y - dropped), animate=False, immediate=True)  # keep the same lines in view

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        at_end = new_value >= self.max_scroll_y
        if new_value < old_value and not at_end:
            self.following = False  # the reader scrolled up (a taller terminal only clamps to the end)
        elif new_value > old_value and at_end:
            self.following = True  # scrolled back down to the end

    def watch_following(self, following: bool) -> None:
        if following:
            self.waiting = 0
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def action_scroll_end(self) -> None:
        self.following = True  # `end` follows again even where it scrolls nowhere


class LogScreen(DetailScreen):
    """One job's log, from its tail on, followed while the job writes it."""

    TITLE = "jobs › log"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "back", id="mlbox.back"),  # the app's `back` walks modes; this screen sits on one
        Binding("end", "follow", "follow", id="mlbox.log.follow"),
        Binding("f", "toggle_follow", "follow on/off", id="mlbox.log.toggle"),
        Binding("full_stop", "pause", "pause", key_display=".", id="mlbox.pause"),
        Binding("slash", "search", "search", key_display="/", id="mlbox.log.search"),
        Binding("n", "next_match", "next match", id="mlbox.log.next"),
        Binding("p", "previous_match", "previous match", id="mlbox.log.previous"),
    ]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.term = ""  # the searched text ("": no search)
        self._match: tuple[int, int] | None = None  # the current match: (the log's generation, its line counting dropped ones)
        self.job_id = job_id
        self.end: int | None = None  # where the next read starts (None: read the tail)
        self.last: Row = {}  # the last answer
        self.more = False  # the last read stopped short of the log's end
        self.state_text = ""

    @property
    def match(self) -> int | None:
        """The current match's line now (None: none, or dropped by the cap, or the log was replaced since)."""
        if self._match is None or not self.is_mounted:
            return None
        lines = self.lines
        generation, at = self._match
        y = at - lines.dropped
        return y if generation == lines.generation and 0 <= y < len(lines.lines) else None

    @match.setter
    def match(self, y: int | None) -> None:
        lines = self.lines
        self._match = None if y is None else (lines.generation, y + lines.dropped)

    def compose(self) -> ComposeResult:
        yield self.header()
        yield Static(Text(f" job {self.job_id} log"), id="title", classes="title")
        yield LogLines(id="log")
        yield Static("", id="log-state", classes="title")
        box = Input(placeholder="search the log (enter finds, esc closes)", id="filter", select_on_focus=False)
        box.cursor_blink = False
        yield box
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.lines, "following", lambda _: self._state(), init=False)
        self.watch(self.lines, "waiting", lambda _: self._state(), init=False)
        self.lines.focus()

    @property
    def lines(self) -> LogLines:
        return self.query_one(LogLines)

    def load(self) -> tuple[int | None, Row]:
        behind = self.end is not None and int(self.last.get("size", 0)) - self.end > SKIP
        offset = -1 if self.end is None or behind else self.end
        return self.end, self.client.job_log(self.job_id, offset, CHUNK)

    def show(self, data: tuple[int | None, Row]) -> None:
        before, log = data
        lines, start = self.lines, int(log["start"])
        if before is not None and start > before:
            lines.mark(f"{amount(start - before)} of the log skipped")
        elif before is not None and start < before:
            lines.clear()
            lines.mark("the log was replaced; from its tail")
        lines.add(str(log["text"]))
        self.end, self.last = int(log["end"]), log
        self.more = self.end < int(log["size"])
        self._title()
        self._state()

    def _arm(self) -> None:
        if self.more and not self.box_app.paused:
            if self._timer is not None:
                self._timer.stop()
            self._timer = self.set_timer(0.01, self._tick)  # the rest of what is there, now
        elif not (self.last.get("done") and self.end is not None and self.end >= int(self.last.get("size", 0))):
            super()._arm()  # else the job ended and all of its log is here: nothing to poll (`r` reads again)

    def _title(self) -> None:
        log = self.last
        word = status(log.get("status", ""))
        shown = f"{self.lines.line_count:,} lines" if log.get("size") else "no log yet"
        total = f" of {amount(int(log['size']))}" if log.get("size") else ""
        self.query_one("#title", Static).update(Text(f" job {self.job_id} log: {word} · {shown}{total}"))

    def _state(self) -> None:
        lines, log = self.lines, self.last
        match = self.match
        if self.term:
            holds = pattern(self.term).search
            found = sum(1 for line in lines.lines if holds(line))
            if not found:
                text = f"/{printable(self.term)}: no match (esc clears)"
            elif match is None:
                many = f"{found:,} match" + ("es" if found != 1 else "")
                text = f"/{printable(self.term)}: {many} (n next, p previous, esc clears)"
            else:
                before = sum(1 for line in lines.lines[: match + 1] if holds(line))
                where = f"match {before:,} of {found:,}, line {match + 1:,}"
                text = f"/{printable(self.term)}: {where} (n next, p previous, esc clears)"
        elif self.box_app.paused:
            text = "‖ paused (. resumes)"
        elif not lines.following:
            waiting = f"+{lines.waiting:,} lines below" if lines.waiting else "no new lines below"
            text = f"‖ not following: {waiting} (end follows)"
        elif log.get("done") and not self.more:
            text = f"■ end of the log: the job {printable(log.get('status', ''))}"
        else:
            text = "● following (scroll up to stop)"
        self.state_text = text  # what the line under the log says (for tests and screen readers)
        self.query_one("#log-state", Static).update(Text(text))

    def action_follow(self) -> None:
        self.lines.following = True

    # search ------------------------------------------------------------------------------------
    def action_search(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = self.term
        box.add_class("-open")
        box.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.input.remove_class("-open")
        self.lines.focus()
        self.term = event.value
        self.lines.mark_found(self.term)
        self.match = None
        if self.term:
            self._jump(self._top() - 1, 1)  # the first match from the top of the view down
        self._state()

    def _top(self) -> int:
        """The first line in view (scroll_y can run past the lines for a moment after the cap dropped some)."""
        lines = self.lines
        return max(0, min(int(lines.scroll_y), len(lines.lines) - lines.size.height))

    def _jump(self, after: int, step: int) -> None:
        lines = self.lines
        found = lines.find(self.term, after, step) if self.term and lines.lines else None
        if found is not None:
            self.match = found
            lines.following = False  # reading back: new lines wait below, counted
            lines.scroll_to(y=max(0, found - lines.size.height // 3), animate=False, immediate=True)
        self._state()

    def action_next_match(self) -> None:
        self._jump(self.match if self.match is not None else self._top() - 1, 1)

    def action_previous_match(self) -> None:
        self._jump(self.match if self.match is not None else self._top(), -1)

    def action_close(self) -> None:
        """`esc`: close the search line, else clear the search, else back to the jobs."""
        box = self.query_one("#filter", Input)
        if box.has_class("-open"):
            box.remove_class("-open")
            self.lines.focus()
        elif self.term:
            self.term, self.match = "", None
            self.lines.mark_found("")
            self._state()
        else:
            super().action_close()

    def action_toggle_follow(self) -> None:
        self.lines.following = not self.lines.following

    def action_pause(self) -> None:
        self.box_app.action_pause()
        self._state()
        if not self.box_app.paused:
            self.action_reload()
