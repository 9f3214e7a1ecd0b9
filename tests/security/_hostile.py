"""Helpers of the hostile-input suite: what a clean refusal looks like, and proof that nothing was written elsewhere.

A clean refusal on the CLI is a non-zero exit code with exactly one `error:` line on stderr, no
traceback, no "internal error" and no raw escape byte on the terminal; over HTTP it is a 4xx JSON
envelope. "Nothing written outside the box" is checked by listing a parent folder (the test's
tmp_path, which holds the box, a private HOME and the attacker's files) before and after.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

# Names an attacker tries wherever mlbox takes a name: traversal (plain, encoded, double-encoded,
# absolute, Windows), SQL and quoting, control and bidi characters, zero-width and homoglyphs, length.
TRAVERSAL = ["../x", "..%2fx", "%252e%252e%252f", "/etc/passwd", "..\\x", "C:\\x", "x/../../y", "."]
TRICKY = [
    "x; DROP TABLE runs; --",
    '"x"',
    "x'--",
    "x\u202egnp.exe",  # right-to-left override
    "\x1b[31mred\x1b[0m",  # ANSI colour
    "\x1b]0;pwned\x07",  # OSC: set the terminal title
    "x\u200by",  # zero-width space
    "\u0430dmin",  # Cyrillic a
    "x\ty",
    "x\ny",
    "a" * 300,
    "",
]
HOSTILE_NAMES = TRAVERSAL + TRICKY


def tree(root: Path, skip: Path | None = None) -> dict[str, tuple[str, int]]:
    """Every entry under `root` (not following symlinks) as {relative path: (kind, size)}, `skip`'s subtree left out."""
    out: dict[str, tuple[str, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in [*dirnames, *filenames]:
            p = here / name
            st = p.lstat()
            kind = "link" if p.is_symlink() else "dir" if p.is_dir() else "file"
            out[str(p.relative_to(root))] = (kind, 0 if kind == "dir" else st.st_size)
    return out


def assert_refused(result: Any, *mentions: str) -> str:
    """A CLI result (tests.conftest.Completed from `cli_run`) is one clean error line; that line."""
    out, err = result.stdout, result.stderr
    assert result.exit_code not in (0, 1), f"exit {result.exit_code}\nstdout: {out!r}\nstderr: {err!r}"
    assert "Traceback" not in out + err and "internal error" not in err, err
    assert "\x1b" not in out + err and "\x07" not in out + err, f"a raw control character reached the terminal: {err!r}"
    lines = [line for line in err.splitlines() if line.strip()]
    # a test that calls a command wrongly would pass on Click's usage error: only a refused *value* counts
    assert not any(m in err for m in ("unexpected extra argument", "No such option", "Missing argument", "Missing option")), err
    usage = any(line.startswith("Error: Invalid value") for line in lines)  # Click's type checks: exit 2, several lines
    assert usage or (len(lines) >= 1 and lines[0].startswith("error:")), err
    for word in mentions:
        assert word in err, f"{word!r} not in {err!r}"
    return err


def assert_envelope(response: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    """An HTTP answer is a 4xx JSON error envelope with the given status."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error"} and body["error"]["status"] == response.status_code, body
    return dict(body["error"])
