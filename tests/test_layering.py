"""Imports point down the layers (ARCHITECTURE.md), nothing imports the package root, and heavy
libraries stay out of `import mlbox` and `mlbox --help`.

An AST check over every module, lazy and TYPE_CHECKING imports included.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import run_python

PACKAGE = Path(__file__).resolve().parent.parent / "mlbox"

# component -> layer. A module belongs to the longest component that prefixes its name.
LAYERS: dict[str, int] = {
    "mlbox._version": 0,
    "mlbox.errors": 0,
    "mlbox.config": 0,
    "mlbox.types": 0,
    "mlbox.clock": 0,
    "mlbox.hardware": 0,
    "mlbox.store": 1,
    "mlbox.features": 2,
    "mlbox.registry": 2,
    "mlbox.flavors": 2,
    "mlbox.security": 2,
    "mlbox.tracking": 2,
    "mlbox.train": 3,
    "mlbox.serve": 3,
    "mlbox.monitor": 3,
    "mlbox.jobs": 3,
    "mlbox.doctor": 3,
    "mlbox.project": 3,
    "mlbox.bench": 4,  # composes workflows (features, train, serve) like quickstart
    "mlbox.box": 4,
    "mlbox.privacy": 4,  # joins features, registry and deployments into the personal-data report
    "mlbox.quickstart": 4,
    "mlbox.package": 4,
    "mlbox.loop": 4,  # carries out monitoring's decisions on deployments, jobs and training
    "mlbox.cli": 5,
    "mlbox.__main__": 5,
    "mlbox.api": 5,
    "mlbox.tui": 5,
    "mlbox.console": 5,  # the reads and changes the TUI and the management API share
}
# Layers whose components must not import each other.
INDEPENDENT_SIBLINGS = {2, 3}

HEAVY = ("torch", "xgboost", "bentoml", "textual")


@dataclass(frozen=True)
class Import:
    source: str  # importing module
    target: str  # imported mlbox module
    line: int
    text: str


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def component(name: str) -> str | None:
    matches = [c for c in LAYERS if name == c or name.startswith(c + ".")]
    return max(matches, key=len) if matches else None


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, source: str | None = None) -> tuple[list[Import], list[Import]]:
    """(imports of mlbox modules, imports of the package root itself) in one module."""
    code = path.read_text(encoding="utf-8") if source is None else source
    tree = ast.parse(code, filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    root: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imp = Import(name, alias.name, node.lineno, f"import {alias.name}")
                if alias.name == "mlbox":
                    root.append(imp)
                elif alias.name.startswith("mlbox."):
                    found.append(imp)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            text = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            if mod == "mlbox":
                for alias in node.names:
                    sub = f"mlbox.{alias.name}"
                    if is_module(sub):  # `from mlbox import clock` imports the submodule mlbox.clock
                        found.append(Import(name, sub, node.lineno, text))
                    else:  # a name re-exported by mlbox/__init__.py
                        root.append(Import(name, "mlbox", node.lineno, text))
            elif mod.startswith("mlbox."):
                found.append(Import(name, mod, node.lineno, text))
    return found, root


def test_every_module_has_a_layer() -> None:
    missing = [m for m in all_modules() if m != "mlbox" and component(m) is None]
    assert not missing, f"modules with no layer in tests/test_layering.py LAYERS: {missing}"


def test_imports_point_down_the_layers() -> None:
    problems = []
    for name, path in all_modules().items():
        if name == "mlbox":
            continue
        src = component(name)
        assert src is not None
        for imp in imports_of(name, path)[0]:
            dst = component(imp.target)
            if dst is None:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{imp.line} imports unlayered {imp.target}")
                continue
            if dst == src:
                continue
            up, down = LAYERS[src], LAYERS[dst]
            if down > up:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{imp.line} L{up} {src} imports L{down} {dst}: {imp.text}"
                )
            elif down == up and up in INDEPENDENT_SIBLINGS:
                problems.append(
                    f"{path.relative_to(PACKAGE.parent)}:{imp.line} L{up} siblings {src} and {dst} must be independent: {imp.text}"
                )
    assert not problems, "layering violations:\n" + "\n".join(problems)


def test_nothing_imports_the_package_root() -> None:
    problems = []
    for name, path in all_modules().items():
        if name == "mlbox":
            continue
        for imp in imports_of(name, path)[1]:
            problems.append(f"{path.relative_to(PACKAGE.parent)}:{imp.line} {imp.text}")
    assert not problems, "modules importing the package root mlbox:\n" + "\n".join(problems)


def test_the_checker_sees_violations() -> None:
    """The AST walk itself: relative, lazy and root imports are all found."""
    code = (
        "from __future__ import annotations\n"
        "import mlbox\n"
        "from mlbox import Box\n"
        "from mlbox import clock\n"
        "from ..security import roles\n"
        "from . import sqlite\n"
        "def f():\n"
        "    from mlbox.cli.main import app\n"
    )
    found, root = imports_of("mlbox.store.audit", PACKAGE / "store" / "audit.py", code)
    assert {i.target for i in found} == {"mlbox.clock", "mlbox.security", "mlbox.store", "mlbox.cli.main"}
    assert [i.text for i in root] == ["import mlbox", "from mlbox import Box"]


# heavy imports ----------------------------------------------------------------------

PROBE = """
import json, sys
{statement}
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {names!r})))
"""


@pytest.mark.parametrize(
    "statement, forbidden",
    [
        ("import mlbox", (*HEAVY, "pandas", "sqlite_utils")),
        ("import mlbox; mlbox.Settings; mlbox.load_settings; mlbox.MlboxError", (*HEAVY, "pandas", "sqlite_utils")),
        ("import mlbox.box", HEAVY),
    ],
)
def test_import_mlbox_stays_light(statement: str, forbidden: tuple[str, ...]) -> None:
    result = run_python(PROBE.format(statement=statement, names=set(forbidden)))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_cli_help_stays_light() -> None:
    code = (
        "import json, sys\n"
        "from mlbox.cli.main import app\n"
        "try:\n"
        "    app(['--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {set(HEAVY)!r})))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_console_script_help_stays_light() -> None:
    """`python -X importtime` over the console-script entry point `run()` with `--help`."""
    import os
    import subprocess
    import sys

    code = "import sys; sys.argv = ['mlbox', '--help']\nfrom mlbox.cli.main import run\nrun()"
    timed = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, env=dict(os.environ), timeout=60
    )
    assert timed.returncode == 0, timed.stderr
    assert "Usage" in timed.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in timed.stderr.splitlines() if "|" in line}
    assert "mlbox" in imported
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
