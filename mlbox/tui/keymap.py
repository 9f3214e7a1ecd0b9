"""Remapped keys: the `tui.keymap` setting (`mlbox.deploy.weights=w; mlbox.screen.refresh=f5`) as Textual's keymap.

Every binding of the TUI has an id (`?` lists the keys; docs/tui.md the ids). A remap names ids the
app has, gives each one or more keys (`,` between them), and may not put a change (a binding whose
own key is uppercase) on a `ctrl` key, so nothing destructive sits where a terminal chord lands by
accident. A bad entry is one error naming it, before the screen opens.
"""

from __future__ import annotations

import re

from mlbox.errors import SettingsError

KEY = re.compile(r"^(?:(?:ctrl|shift|alt|super|meta)\+)*(?:[A-Za-z0-9]|[a-z][a-z0-9_]+)$")  # `w`, `f5`, `ctrl+r`, `page_down`


def bindings() -> dict[str, str]:
    """Every binding id of the app and its screens, dialogs and widgets -> its own key."""
    from textual.dom import DOMNode

    import mlbox.tui.app  # noqa: F401  (imports every screen, so each class below is known)

    out: dict[str, str] = {}
    todo: list[type] = [DOMNode]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not cls.__module__.startswith("mlbox.tui"):
            continue
        for b in vars(cls).get("BINDINGS", ()):
            if getattr(b, "id", None):
                out[b.id] = b.key
    return out


def parse(text: str, known: dict[str, str]) -> dict[str, str]:
    """`id=key[,key]; id=key` -> {id: "key,key"}, checked against the `known` ids and their own keys."""
    out: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(";")):
        if not entry:
            continue
        bid, eq, keys = (part.strip() for part in entry.partition("="))
        if not eq or not bid or not keys:
            raise SettingsError(f"tui.keymap: {entry!r} is not id=key", hint="e.g. mlbox.deploy.weights=w")
        if bid not in known:
            near = sorted(k for k in known if k.split(".")[1:2] == bid.split(".")[1:2]) or sorted(known)
            raise SettingsError(f"tui.keymap: no binding {bid!r}", hint=f"ids: {', '.join(near[:12])}")
        chosen = [k.strip() for k in keys.split(",")]
        for key in chosen:
            if not KEY.match(key):
                raise SettingsError(f"tui.keymap: {key!r} is not a key", hint="a letter, digit or name: w, f5, ctrl+r, page_down")
            if "ctrl+" in key and _changes(known[bid]):
                raise SettingsError(
                    f"tui.keymap: {bid} changes the box and may not sit on {key}", hint="changes keep plain keys"
                )
        out[bid] = ",".join(chosen)
    return out


def _changes(key: str) -> bool:
    """A change's own key is an uppercase letter (lowercase keys look)."""
    return len(key) == 1 and key.isupper()
