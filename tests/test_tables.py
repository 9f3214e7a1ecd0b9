"""Tables that fit: every table command at 80 columns has no line over 80 and no cut identifier; --wide shows all.

The box is the serving tests' trained template (features applied and materialized, four
models, tokens per role) plus a deployment, jobs and a long token description, copied per
test. Commands run in-process through the CLI with the console 80 columns wide; a spy on
`_tables.layout` records which columns each table had and which it showed (behaviour unchanged).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlbox.cli import _common, _tables
from mlbox.cli._tables import IDENTIFIERS, TABLE_COMMANDS, Layout, layout

from .conftest import MLBOX_SCRIPT, OS_USER
from .serve.conftest import Template, sample_rows, serve_template  # noqa: F401  (the session fixture)

WIDTH = 80


@pytest.fixture
def home(serve_template: Template, tmp_path: Path, cli: Any) -> Path:  # noqa: F811
    home = Path(shutil.copytree(serve_template.home, tmp_path / "box"))
    for args in (
        ["deploy", "create", "churn_service_with_a_long_name", "--model", "churn:1", "--sticky-key", "customer_id"],
        ["auth", "token", "create", "--user", OS_USER, "--description", "nightly scoring job for the regional churn dashboard " * 2],
        ["jobs", "submit", "command", "--", sys.executable, "-c", "pass"],
        ["jobs", "submit", "materialize", "customer_profile", "--priority", "5"],
    ):
        r = cli("--home", str(home), *args)
        assert r.exit_code == 0, (args, r.stdout, r.exception)
    _log_predictions(home, "churn_service_with_a_long_name", "churn:1", sample_rows(300))  # real numbers in monitor tables
    return home


def _log_predictions(home: Path, deployment: str, model: str, rows: list[dict[str, Any]]) -> None:
    """`rows` logged as a server's sidecar logs them (typed columns included)."""
    import orjson

    from mlbox.box import Box
    from mlbox.config import load_settings
    from mlbox.flavors.signature import Signature
    from mlbox.serve.predlog.wire import Record
    from mlbox.serve.predlog.writer import PredictionLog

    with Box(load_settings(home, environ={})) as box:
        signature = Signature.from_dict(box.registry.get(model).signature)
        log = PredictionLog(box.paths.predictions, box.db, flush_seconds=3600, signature_of=lambda _ref: signature)
        now = time.time()
        log.extend([Record(now, f"t{i}", deployment, model, "primary", False, 1.5 + i % 7, None, orjson.dumps([row]).decode(),
                           '[{"0": 0.3, "1": 0.7}]', None) for i, row in enumerate(rows)])  # fmt: skip
        log.close()


def table_invocations(home: Path, cli: Any) -> dict[str, list[str]]:
    """One invocation of every command in TABLE_COMMANDS."""
    runs = json.loads(cli("--home", str(home), "--json", "runs", "list").stdout)
    run_ids = [r["run"] for r in runs[:2]]
    return {
        "settings": ["settings"],
        "auth user list": ["auth", "user", "list"],
        "auth token list": ["auth", "token", "list"],
        "audit list": ["audit", "list"],
        "features plan": ["features", "plan"],
        "features apply": ["features", "apply"],
        "features list": ["features", "list"],
        "features show": ["features", "show", "customer_profile"],
        "features materialize": ["features", "materialize"],
        "features flush": ["features", "flush"],
        "features get": ["features", "get", "customer_profile:*", "usage:*", "-e", "customer_id=1", "-e", "customer_id=2"],
        "features sql": ["features", "sql", "SELECT * FROM customer_profile ORDER BY customer_id LIMIT 5"],
        "jobs list": ["jobs", "list"],
        "models list": ["models", "list"],
        "models show": ["models", "show", "churn:1"],
        "models diff": ["models", "diff", "churn:1", "churn:2"],
        "runs list": ["runs", "list"],
        "runs compare": ["runs", "compare", *run_ids],
        "deploy status": ["deploy", "status"],
        "deploy log": ["deploy", "log", "churn_service_with_a_long_name"],
        "monitor check": ["monitor", "check", "churn_service_with_a_long_name"],
        "monitor history": ["monitor", "history", "churn_service_with_a_long_name"],
        "monitor quality": ["monitor", "quality", "churn_service_with_a_long_name"],
        "monitor serving": ["monitor", "serving", "churn_service_with_a_long_name"],
        "monitor actions": ["monitor", "actions", "churn_service_with_a_long_name"],
        "privacy report": ["privacy", "report"],
        "privacy record": ["privacy", "record"],
        "privacy erase": ["privacy", "erase", "--entity", "customer_id=1001", "--dry-run"],
        "privacy purge": ["privacy", "purge", "--dry-run"],
        "privacy region list": ["privacy", "region", "list"],
        "privacy transfer list": ["privacy", "transfer", "list"],
        "jobs schedules": ["jobs", "schedules"],
    }


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], dict[str, list[str]], Layout]]:
    """Every table's (columns, cells, layout) as `_common.table` computed it."""
    seen: list[tuple[list[str], dict[str, list[str]], Layout]] = []

    def recording(columns: Any, cells: dict[str, list[str]], width: int, **kw: Any) -> Layout:
        plan = layout(columns, cells, width, **kw)
        seen.append((list(columns), cells, plan))
        return plan

    monkeypatch.setattr(_tables, "layout", recording)
    monkeypatch.setattr(_common.console, "width", WIDTH)
    return seen


def test_every_table_fits_80_columns_with_identifiers_whole(home: Path, cli: Any, spy: list[Any]) -> None:
    invocations = table_invocations(home, cli)
    assert set(invocations) == TABLE_COMMANDS
    hid_something = False
    for name, args in invocations.items():
        spy.clear()
        r = cli("--home", str(home), *args)
        assert r.exit_code == 0, (name, r.stdout, r.exception)
        assert spy, f"{name} printed no table"
        print(f"$ mlbox {' '.join(args)}\n{r.stdout}")  # shown with -s: what a user sees at 80 columns
        lines = r.stdout.splitlines()
        long = [line for line in lines if len(line) > WIDTH]
        assert not long, f"{name}: {len(long)} line(s) over {WIDTH}:\n" + "\n".join(long)
        for columns, cells, plan in spy:
            assert plan.total <= WIDTH, name
            hid_something |= bool(plan.hidden)
            for col in plan.columns:
                assert any(col in line for line in lines), f"{name}: header {col!r} cut"
                if col in IDENTIFIERS or col == columns[0]:
                    for value in cells[col]:
                        assert any(value in line for line in lines), f"{name}: {col} {value!r} is not shown whole"
            if plan.hidden:
                assert "--wide shows them" in " ".join(r.stdout.split())
    assert hid_something  # the box is rich enough that some table had to choose


def test_wide_shows_every_column(home: Path, cli: Any, spy: list[Any]) -> None:
    for name, args in table_invocations(home, cli).items():
        for wide in (["--wide", *args], [*args, "--wide"]):  # the global flag and the command's own
            spy.clear()
            r = cli("--home", str(home), *wide)
            assert r.exit_code == 0, (name, r.stdout, r.exception)
            for columns, cells, plan in spy:
                assert plan.columns == tuple(columns) and not plan.hidden, name
                headers = [line for line in r.stdout.splitlines() if line.startswith("┃")]
                assert any(all(f" {c} " in h for c in columns) for h in headers), (name, columns, headers)
                for c in columns:
                    assert all(v in r.stdout for v in cells[c] if "\n" not in v), (name, c)
            assert "--wide shows them" not in " ".join(r.stdout.split())


def test_a_real_terminal_width_is_honoured(home: Path) -> None:
    env = {**os.environ, "MLBOX_HOME": str(home), "COLUMNS": str(WIDTH)}
    r = subprocess.run([str(MLBOX_SCRIPT), "jobs", "list"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= WIDTH
    assert "more column(s)" in r.stdout  # 11 job columns do not fit in 80
    r = subprocess.run([str(MLBOX_SCRIPT), "jobs", "list", "--wide"], env=env, capture_output=True, text=True, timeout=60)
    assert all(c in r.stdout for c in ("worker", "project", "priority", "attempts"))


def test_layout_keeps_identifiers_whole_and_drops_low_priority_columns_first() -> None:
    cells = {
        "name": ["a_really_long_deployment_name_that_must_not_be_cut"],
        "description": ["words " * 30],
        "created_by": ["alice"],
        "status": ["running"],
        "error": ["x" * 200],
    }
    plan = layout(list(cells), cells, WIDTH)
    assert plan.total <= WIDTH
    assert plan.columns[0] == "name" and plan.widths[0] == len(cells["name"][0]) and not plan.wraps[0]
    assert plan.columns == ("name", "status", "error")  # low-priority columns went first; the error wraps
    assert plan.hidden == ("description", "created_by") and plan.wraps == (False, False, True)
    wide = layout(list(cells), cells, WIDTH, wide=True)
    assert wide.columns == tuple(cells) and wide.widths[-1] == 200
    chosen = layout(list(cells), cells, 200, default=["name", "error"])
    assert chosen.columns == ("name", "error") and set(chosen.hidden) == {"description", "created_by", "status"}


def _commands_calling_table() -> set[str]:
    """Command paths whose function calls `table(` (directly or through a helper in its module)."""
    import typer

    from mlbox.cli.main import app

    callers: set[tuple[str, str]] = set()
    for path in sorted(Path(_common.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        funcs = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}

        def calls(fn: ast.FunctionDef, seen: frozenset[str]) -> bool:
            for n in ast.walk(fn):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
                    if n.func.id == "table" or (n.func.id in funcs and n.func.id not in seen and calls(funcs[n.func.id], seen | {n.func.id})):
                        return True
            return False

        callers |= {(f"mlbox.cli.{path.stem}", name) for name, fn in funcs.items() if calls(fn, frozenset({name}))}
    out: set[str] = set()

    def walk(command: Any, prefix: tuple[str, ...]) -> None:
        for name, sub in getattr(command, "commands", {}).items():
            if getattr(sub, "commands", None) is not None:
                walk(sub, (*prefix, name))
            elif (sub.callback.__module__, sub.callback.__name__) in callers:
                out.add(" ".join((*prefix, name)))

    walk(typer.main.get_command(app), ())
    return out


def test_table_commands_are_the_commands_that_print_tables() -> None:
    assert _commands_calling_table() == TABLE_COMMANDS
