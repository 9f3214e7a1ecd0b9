"""The command x role matrix, generated from the Typer tree: every `mlbox` command is declared in
mlbox/cli/permissions.py, and walked with every role it refuses exactly the roles lacking its action,
before doing any work (so dummy names never reach a lookup), and lets the others past the check.

One box holds a user and a never-expiring token per role; each command runs in-process through the
console-script entry point (`main.run`) with that role's MLBOX_TOKEN and arguments synthesized from its
click parameters. Allowed roles may still fail for other reasons (NotFound, UsageError), never with an
AuthError, a click usage error or an internal error. Commands that would run long are stopped at their
boundary: `serve` at `os.execve` (BentoML taking the process over), `worker` at `Worker.run`; `quickstart`
and `bench …` never open an existing box (NoBox) and are checked statically instead of run.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer

from mlbox.box import Box
from mlbox.cli.main import app
from mlbox.cli.permissions import COMMANDS, Also, Needs, NoBox, markdown
from mlbox.config import load_settings
from mlbox.errors import PermissionDenied
from mlbox.security.roles import ACTIONS, PERMISSIONS
from mlbox.types import ROLES

from ..conftest import OS_USER, REPO, Completed

DOCS = REPO / "docs" / "permissions.md"
RUN_NO_BOX = {"version": (), "settings": (), "init": ("{dir}",), "auth selfsigned": ("--out", "{dir}"), "doctor": ()}
NOT_RUN = {  # NoBox commands too long to run here: checked from their source only
    "quickstart": "runs the whole product end to end",
    **{f"bench {b}": "a benchmark" for b in ("features", "train", "serve", "monitor", "encryption")},
}


ROOT = typer.main.get_command(app)  # click's command tree, as `mlbox` builds it at each start


def tree() -> dict[str, Any]:
    """Every leaf command of `mlbox`, by its path ("auth token create"), from click's command tree."""
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, (*path, name))
        else:
            out[" ".join(path)] = cmd

    walk(ROOT, ())
    return out


COMMAND_TREE = tree()


class Stopped(BaseException):  # main.run turns any Exception into "internal error"
    """Raised at a long-running command's boundary: it got past its permission check."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One box with a user and token per role, a scratch folder to run in and an existing file."""
    root = tmp_path_factory.mktemp("matrix")
    home = root / "box"
    box = Box.create(load_settings(home, environ={}), OS_USER)
    tokens = {}
    try:
        for role in ROLES:
            name = "as_" + role.replace("-", "_")
            box.identity.add_user(OS_USER, name, role)
            tokens[role] = box.identity.create_token(OS_USER, name, never_expires=True)[1]
    finally:
        box.close()
    work = root / "work"
    work.mkdir()
    (work / "input.csv").write_text("a,b\n1,2\n")
    yield {"home": home, "tokens": tokens, "work": work, "file": str(work / "input.csv")}


@pytest.fixture
def invoke(world: dict[str, Any], cli_run: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """`invoke(path, argv, role) -> Completed`, run in a scratch folder with long-running boundaries stopped."""
    import mlbox.cli.serve
    import mlbox.store.convert
    import mlbox.tui.app
    from mlbox.jobs.worker import Worker

    def stop(*_a: Any, **_k: Any) -> None:
        raise Stopped

    # typer rebuilds the same tree at every `app()` (0.2 s of the 0.25 s a command takes here): build it once
    real_get_command = typer.main.get_command
    monkeypatch.setattr(typer.main, "get_command", lambda a: ROOT if a is app else real_get_command(a))
    monkeypatch.setattr(mlbox.cli.serve.os, "execve", stop)
    monkeypatch.setattr(Worker, "run", stop)
    monkeypatch.setattr(mlbox.tui.app.MlboxApp, "run", stop)
    monkeypatch.setattr(mlbox.store.convert, "encrypt_box", stop)  # it would convert the matrix's shared box
    monkeypatch.chdir(world["work"])

    def run(path: str, argv: tuple[str, ...], role: str | None) -> Completed:
        args = [a.replace("{file}", world["file"]).replace("{dir}", str(tmp_path / "out")) for a in argv]
        env = {"MLBOX_TOKEN": world["tokens"][role] if role else "mlbx_000000000000_" + "x" * 43}
        try:
            return cli_run("--home", str(world["home"]), *path.split(), *args, env=env)
        except Stopped:
            return Completed(0, "stopped at its boundary", "")

    return run


def synthesized(cmd: Any) -> tuple[str, ...]:
    """Arguments for every required parameter: "x" for strings, 1 for numbers, an existing file for paths."""
    options: list[str] = []
    arguments: list[str] = []
    for param in cmd.params:
        if not param.required:
            continue
        annotation = param.type_descriptor.annotation
        values = [_value(annotation)] * (2 if param.nargs == -1 else 1)  # `runs compare` needs two or more
        if param.param_type_name == "argument":
            arguments += values
        else:
            options += [param.opts[0], *values]
    return (*options, *arguments)


def _value(annotation: Any) -> str:
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Literal:
        return str(typing.get_args(annotation)[0])  # the first choice
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return str(next(iter(annotation)).value)
    if annotation in (int, float):
        return "1"
    if annotation is Path:
        return "{file}"
    return "x"


def refused(result: Completed, action: str) -> bool:
    return result.exit_code == PermissionDenied.exit_code and f"needs permission '{action}'" in result.stderr


def check_allowed(result: Completed, what: str) -> None:
    """Past the permission check: any failure must be a deliberate one, never auth, click usage or a crash."""
    text = result.stdout + result.stderr
    assert result.exit_code != PermissionDenied.exit_code, f"{what}: refused by permission: {text}"
    assert "internal error" not in text, f"{what}: crashed: {text}"
    assert "Usage:" not in text, f"{what}: the synthesized arguments did not parse: {text}"


def walk(invoke: Any, path: str, argv: tuple[str, ...], actions: tuple[str, ...]) -> None:
    for role in ROLES:
        missing = [a for a in actions if a not in PERMISSIONS[role]]
        result = invoke(path, argv, role)
        what = f"mlbox {path} {' '.join(argv)} as {role}"
        if missing:
            assert refused(result, missing[0]), f"{what}: expected a refusal naming {missing[0]!r}, got {result}"
        else:
            check_allowed(result, what)


# the tables match the tree ----------------------------------------------------------------------------


def test_every_command_is_declared_and_every_declaration_exists() -> None:
    undeclared = sorted(set(COMMAND_TREE) - set(COMMANDS))
    gone = sorted(set(COMMANDS) - set(COMMAND_TREE))
    assert not undeclared, f"commands without a declared permission in mlbox/cli/permissions.py: {undeclared}"
    assert not gone, f"mlbox/cli/permissions.py declares commands that no longer exist: {gone}"


def test_declared_actions_exist() -> None:
    for path, perm in COMMANDS.items():
        actions = perm.actions if isinstance(perm, Needs) else ()
        for action in (*actions, *(x.action for x in perm.also)):
            assert action in ACTIONS, f"{path}: unknown action {action!r}"
        if isinstance(perm, Needs):
            assert perm.actions, f"{path}: a Needs entry without an action"
        else:
            assert perm.reason, f"{path}: a NoBox entry must say why"


@pytest.mark.parametrize("path", sorted(p for p, v in COMMANDS.items() if isinstance(v, NoBox)))
def test_no_box_commands_never_act_as_a_box_user(path: str) -> None:
    """Without a conditional action they neither open the box nor ask who acts (read from their source)."""
    perm = COMMANDS[path]
    assert path in RUN_NO_BOX or path in NOT_RUN, f"{path}: say how the matrix walks it"
    source = inspect.getsource(COMMAND_TREE[path].callback)
    if not perm.also:
        assert "actor(" not in source and "open_box(" not in source, f"{path} acts as a box user: declare its action"


@pytest.mark.parametrize("path", sorted(RUN_NO_BOX))
def test_no_box_commands_ignore_even_a_bogus_token(invoke: Any, path: str) -> None:
    result = invoke(path, RUN_NO_BOX[path], None)
    text = result.stdout + result.stderr
    assert result.exit_code != PermissionDenied.exit_code and "token" not in result.stderr.lower(), text
    assert "internal error" not in text and "Usage:" not in text, text


# the walk ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(p for p, v in COMMANDS.items() if isinstance(v, Needs)))
def test_command_by_role(invoke: Any, path: str) -> None:
    perm = COMMANDS[path]
    assert isinstance(perm, Needs)
    walk(invoke, path, synthesized(COMMAND_TREE[path]), perm.actions)


CONDITIONAL = [(p, x) for p, v in sorted(COMMANDS.items()) for x in v.also]


@pytest.mark.parametrize("path, also", CONDITIONAL, ids=[f"{p}-{x.when}" for p, x in CONDITIONAL])
def test_conditional_action_by_role(invoke: Any, path: str, also: Also) -> None:
    perm = COMMANDS[path]
    walk(invoke, path, also.argv, (*(perm.actions if isinstance(perm, Needs) else ()), also.action))


@pytest.mark.parametrize("path", sorted(p for p, v in COMMANDS.items() if isinstance(v, Needs)))
def test_a_bogus_token_is_refused_before_any_work(invoke: Any, path: str) -> None:
    result = invoke(path, synthesized(COMMAND_TREE[path]), None)
    assert result.exit_code == PermissionDenied.exit_code and "token" in result.stderr.lower(), result


# the generated page ---------------------------------------------------------------------------------


def test_permissions_page_is_current() -> None:
    assert DOCS.read_text() == markdown(), (
        "docs/permissions.md is stale: regenerate it with "
        "`.venv/bin/python -m mlbox.cli.permissions > docs/permissions.md`"
    )
    assert "permissions.md" in (REPO / "docs" / "security.md").read_text(), "link docs/permissions.md from docs/security.md"
    for path in COMMANDS:
        assert f"`mlbox {path}`" in DOCS.read_text()

