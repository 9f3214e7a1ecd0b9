"""The environment is read only in mlbox/config.py, and nothing writes it (an AST scan of mlbox/)."""

from __future__ import annotations

import ast
from pathlib import Path

from mlbox.config import child_env, env_value, home_from_env, token_from_env

PACKAGE = Path(__file__).resolve().parent.parent / "mlbox"
ALLOWED = "mlbox/config.py"
ENV_NAMES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}

# Files whose owners still have to switch to the config.py helpers (issue 10 item 7). The lead
# empties this set as they land; the test below fails when an entry is stale, so it only shrinks.
PENDING: set[str] = set()


def environment_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) for every use of os.environ / os.getenv & co., however os or the name was imported."""
    os_aliases = {"os"}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_aliases.update(a.asname or a.name for a in node.names if a.name == "os")
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [(node.lineno, f"from os import {a.name}") for a in node.names if a.name in ENV_NAMES]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ENV_NAMES:
            if isinstance(node.value, ast.Name) and node.value.id in os_aliases:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return sorted(found)


def scan() -> dict[str, list[tuple[int, str]]]:
    out: dict[str, list[tuple[int, str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).as_posix()
        uses = environment_uses(ast.parse(path.read_text(encoding="utf-8"), filename=rel))
        if uses:
            out[rel] = uses
    return out


def test_environment_is_read_only_in_config() -> None:
    uses = scan()
    offenders = {f: u for f, u in uses.items() if f != ALLOWED and f not in PENDING}
    assert not offenders, "read the environment through mlbox.config helpers instead: " + "; ".join(
        f"{f}:{line} {what}" for f, u in offenders.items() for line, what in u
    )
    stale = sorted(f for f in PENDING if f not in uses)
    assert not stale, f"no longer read the environment; remove from PENDING: {', '.join(stale)}"
    assert ALLOWED in uses  # the scanner sees config.py's own reads, so it is not blind


def test_scanner_finds_every_spelling() -> None:
    code = (
        "import os\nimport os as o\nfrom os import getenv, environ as e\n"
        "a = os.environ['X']\nb = o.getenv('Y')\nos.putenv('Z', '1')\nc = os.path.join('a')\n"
    )
    whats = [what for _, what in environment_uses(ast.parse(code))]
    assert whats == ["from os import environ", "from os import getenv", "os.environ", "o.getenv", "os.putenv"]


def test_helpers_read_the_given_environment_not_the_process() -> None:
    env = {"MLBOX_TOKEN": "mlbx_x", "MLBOX_HOME": "/b", "BENCH_ONNX_MODEL": "m.onnx", "KEEP": "1"}
    assert token_from_env(env) == "mlbx_x"
    assert token_from_env({"MLBOX_TOKEN": ""}) is None
    assert home_from_env(env) == "/b" and home_from_env({}) is None
    assert env_value("BENCH_ONNX_MODEL", environ=env) == "m.onnx"
    assert env_value("BENCH_ONNX_FEATURES", "20", environ=env) == "20"
    child = child_env(env, drop=("MLBOX_TOKEN",), MLBOX_HOME="/other")
    assert child == {"MLBOX_HOME": "/other", "BENCH_ONNX_MODEL": "m.onnx", "KEEP": "1"}
    assert env["MLBOX_HOME"] == "/b"  # a copy: the source is never written
