"""ARCHITECTURE.md's layer table says exactly what tests/test_layering.py enforces."""

from __future__ import annotations

import re
from pathlib import Path

from .test_layering import INDEPENDENT_SIBLINGS, LAYERS

DOC = Path(__file__).resolve().parent.parent / "ARCHITECTURE.md"
ROW = re.compile(r"^\|\s*L(\d)\s*\|")


def layer_table(text: str) -> tuple[dict[str, int], set[int]]:
    """(component -> layer, layers whose siblings are independent) from the doc's layer table."""
    layers: dict[str, int] = {}
    independent: set[int] = set()
    for line in text.splitlines():
        match = ROW.match(line)
        if not match:
            continue
        level = int(match.group(1))
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == 4, f"layer row needs 4 cells: {line}"
        for name in re.findall(r"`([^`]+)`", cells[2]):
            assert name not in layers, f"{name} is listed twice"
            layers[name] = level
        if cells[3] == "independent":
            independent.add(level)
    return layers, independent


def test_layer_table_matches_the_enforced_contract() -> None:
    layers, independent = layer_table(DOC.read_text(encoding="utf-8"))
    assert layers == LAYERS
    assert independent == INDEPENDENT_SIBLINGS


def test_the_parser_sees_a_difference() -> None:
    text = DOC.read_text(encoding="utf-8").replace("`mlbox.jobs` ", "", 1)
    layers, _ = layer_table(text)
    assert layers != LAYERS and "mlbox.jobs" not in layers
    layers, independent = layer_table(text.replace("| independent |", "| may import each other |"))
    assert independent != INDEPENDENT_SIBLINGS


def test_every_documented_path_exists() -> None:
    """Modules named as `mlbox/...` or `features/pit.py`-style paths in the doc are real files."""
    root = DOC.parent
    text = DOC.read_text(encoding="utf-8")
    for rel in set(re.findall(r"`((?:mlbox/|tests/)?[a-z_]+/[a-z_/]+\.py)`", text)):
        path = root / rel if rel.startswith(("mlbox/", "tests/")) else root / "mlbox" / rel
        assert path.is_file(), f"ARCHITECTURE.md names {rel}, which does not exist"
