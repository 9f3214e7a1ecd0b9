"""Documentation is tested: every CLI command is in docs/cli.md, every setting in docs/settings.md."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from mlbox.cli.main import app
from mlbox.config import SETTINGS

DOCS = Path(__file__).resolve().parent.parent / "docs"
GLOBAL_FLAGS = {"--json", "--debug", "--wide"}
GLOBAL_OPTIONS_WITH_VALUE = {"--home"}


def command_tree() -> Any:
    return typer.main.get_command(app)


def command_paths(command: Any, prefix: tuple[str, ...] = ()) -> dict[str, Any]:
    """Every command and group below the root, as 'auth token create' -> click command."""
    out: dict[str, Any] = {}
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        if getattr(sub, "hidden", False):
            continue
        path = (*prefix, name)
        out[" ".join(path)] = sub
        out.update(command_paths(sub, path))
    return out


def mentioned_paths(markdown: str, root: Any) -> set[str]:
    """Command paths named by a heading or a code span that starts with `mlbox `."""
    candidates = [m.group(1) for m in re.finditer(r"^#{1,6}\s+(.*)$", markdown, re.M)]
    candidates += [m.group(1) for m in re.finditer(r"``?([^`\n]+)``?", markdown)]
    candidates += [m.group(1) for m in re.finditer(r"^\s*\$?\s*(mlbox\s.*)$", markdown, re.M)]  # code blocks
    found: set[str] = set()
    for text in candidates:
        words = text.replace("`", " ").split()
        if "mlbox" not in words:
            continue
        words = words[words.index("mlbox") + 1 :]
        node, skip = root, False
        path: list[str] = []
        for word in words:
            if skip:
                skip = False
                continue
            if word in GLOBAL_FLAGS:
                continue
            if word in GLOBAL_OPTIONS_WITH_VALUE:
                skip = True
                continue
            if word.split("=")[0] in GLOBAL_OPTIONS_WITH_VALUE:
                continue
            sub = getattr(node, "commands", {}).get(word)
            if sub is None:
                break
            node, path = sub, [*path, word]
        if path:
            found.add(" ".join(path))
    return found


def read_doc(name: str) -> tuple[str, str]:
    """The document's text ('' when absent) and how to name it in a failure message."""
    path = DOCS / name
    if not path.is_file():
        return "", f"docs/{name} (which does not exist yet)"
    return path.read_text(encoding="utf-8"), f"docs/{name}"


def test_every_command_has_help_text() -> None:
    missing = [
        f"mlbox {path}" for path, cmd in command_paths(command_tree()).items() if not (cmd.help or "").strip()
    ]
    assert not missing, "commands without help text: " + ", ".join(missing)


def test_every_cli_command_is_documented() -> None:
    root = command_tree()
    text, where = read_doc("cli.md")
    documented = mentioned_paths(text, root)
    missing = [f"mlbox {p}" for p in command_paths(root) if p not in documented]
    assert not missing, f"{where} lacks a heading or code span for: " + ", ".join(missing)


def test_every_setting_is_documented() -> None:
    text, where = read_doc("settings.md")
    missing = [s.name for s in SETTINGS if not re.search(rf"(?<![\w.]){re.escape(s.name)}(?![\w.])", text)]
    assert not missing, f"{where} does not mention: " + ", ".join(missing)


def test_mention_finder() -> None:
    """The matcher itself: headings, code spans, global options, longest valid command path."""
    root = command_tree()
    text = (
        "# `mlbox auth token create`\n"
        "Run `mlbox --home ./box --json audit verify` to check.\n"
        "```\n$ mlbox init demo --template regression\n```\n"
        "Not a command: `mlbox nonsense`, `python -m mlbox`, mlbox doctor in plain prose.\n"
    )
    # a group counts only where it is named itself, not through one of its commands
    assert mentioned_paths(text, root) == {"auth token create", "audit verify", "init"}
