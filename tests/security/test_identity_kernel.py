"""Identity from the kernel: the effective uid decides who the CLI and the Python API act as, never
LOGNAME/USER; the box's files are private to its owner and a box others can write is not opened;
another identity only through a token, and a token file others can read is refused."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import AuthError, PermissionDenied, StoreError, UsageError

from ..conftest import OS_USER, SPOOFED_USER, run_mlbox

LOGIN_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
BOSS = "boss" if OS_USER != "boss" else "boss2"  # the admin an attacker would like to be


def claim(name: str) -> dict[str, str]:
    """The environment of a process that says, every way getpass would read it, that it is `name`."""
    return {var: name for var in LOGIN_VARIABLES}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def bossed(home: Path) -> Path:
    """A box whose admin is the OS user BOSS; the kernel user of this test only has a viewer account."""
    with Box.create(load_settings(home), BOSS) as box:
        box.identity.add_user(BOSS, "me", "viewer", os_user=OS_USER)
    return home


# who the CLI acts as ----------------------------------------------------------------------------


def test_claiming_the_admins_login_name_does_not_make_you_admin(bossed: Path, tmp_path: Path) -> None:
    who = run_mlbox(["--home", str(bossed), "--json", "whoami"], cwd=tmp_path, env=claim(BOSS))
    assert who.returncode == 0, who.stderr
    assert '"user": "me"' in who.stdout and '"role": "viewer"' in who.stdout and '"via": "os"' in who.stdout

    add = run_mlbox(["--home", str(bossed), "auth", "user", "add", "eve", "--role", "admin"], cwd=tmp_path, env=claim(BOSS))
    assert add.returncode == PermissionDenied.exit_code
    assert "me (viewer)" in one_error_line(add.stderr)
    with Box(load_settings(bossed)) as box:
        assert [u.name for u in box.identity.users()] == [BOSS, "me"]


def test_an_unmapped_kernel_user_is_refused_whatever_it_claims(home: Path, tmp_path: Path) -> None:
    Box.create(load_settings(home), BOSS).close()
    result = run_mlbox(["--home", str(home), "auth", "user", "list"], cwd=tmp_path, env=claim(BOSS))
    assert result.returncode == AuthError.exit_code
    line = one_error_line(result.stderr)
    assert repr(OS_USER) in line and BOSS not in line.split("(")[0]
    assert result.stdout == ""


def test_init_makes_the_kernel_user_admin_not_the_login_name(tmp_path: Path) -> None:
    result = run_mlbox(["--json", "init", str(tmp_path / "p")], cwd=tmp_path, env=claim(BOSS))
    assert result.returncode == 0, result.stderr
    assert f'"admin": "{OS_USER}"' in result.stdout
    with Box(load_settings(tmp_path / "p")) as box:
        assert [(u.name, u.role, u.os_user) for u in box.identity.users()] == [(OS_USER, "admin", OS_USER)]


def test_python_api_acts_as_the_kernel_user(home: Path) -> None:
    assert os.environ["LOGNAME"] == SPOOFED_USER != OS_USER  # tests/conftest.py makes the environment lie
    with Box.create(load_settings(home), OS_USER) as box:
        assert box.actor == OS_USER
    with Box(load_settings(home)) as box:
        assert box.actor == OS_USER


# the box's files ----------------------------------------------------------------------------------


def test_init_makes_the_box_private_whatever_the_umask(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    dest = tmp_path / "p"
    old = os.umask(0)  # the most permissive umask: modes must not come from it
    try:
        result = cli("init", str(dest))
        assert result.exit_code == 0, result.exception
        with Box(load_settings(dest)) as box:  # an open box has -wal/-shm next to meta.db
            box.audit.record(OS_USER, "test.touch")
            wal = {p.name: mode(p) for p in dest.iterdir() if p.name.endswith(("-wal", "-shm"))}
    finally:
        os.umask(old)
    assert mode(dest) == 0o700 and mode(dest / "keys") == 0o700
    for name in ("meta.db", "online.db", "keys/audit.key", "mlbox.toml"):
        assert mode(dest / name) == 0o600, name
    assert wal and set(wal.values()) == {0o600}, wal
    assert all(mode(dest / d) == 0o700 for d in ("features", "predictions", "artifacts", "logs"))


@pytest.mark.parametrize(
    ("name", "bad"),
    [("meta.db", 0o666), ("meta.db", 0o620), ("keys/audit.key", 0o606), ("online.db", 0o666), ("mlbox.toml", 0o664)],
)
def test_a_box_others_can_write_is_refused(box: Box, home: Path, tmp_path: Path, name: str, bad: int) -> None:
    target = home / name
    target.touch()
    os.chmod(target, bad)
    result = run_mlbox(["--home", str(home), "whoami"], cwd=tmp_path)
    assert result.returncode == StoreError.exit_code
    line = one_error_line(result.stderr)
    assert str(target) in line and f"chmod 600 {target}" in line and "writable by other OS users" in line
    assert result.stdout == ""

    os.chmod(target, 0o600)  # the fix the error names works
    assert run_mlbox(["--home", str(home), "whoami"], cwd=tmp_path).returncode == 0


def test_a_box_folder_others_can_write_is_refused(box: Box, home: Path, tmp_path: Path) -> None:
    os.chmod(home, 0o777)
    result = run_mlbox(["--home", str(home), "whoami"], cwd=tmp_path)
    assert result.returncode == StoreError.exit_code
    assert f"chmod 700 {home}" in one_error_line(result.stderr)


def test_a_box_others_can_only_read_still_opens(box: Box, home: Path, tmp_path: Path) -> None:
    os.chmod(home / "meta.db", 0o644)  # a deliberate read-only share (docs/security.md)
    result = run_mlbox(["--home", str(home), "--json", "whoami"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# tokens ---------------------------------------------------------------------------------------


def test_token_file_acts_as_the_tokens_user(bossed: Path, tmp_path: Path) -> None:
    with Box(load_settings(bossed)) as box:
        _, token = box.identity.create_token(BOSS, BOSS)
    path = tmp_path / "token"
    path.write_text(token + "\n")
    os.chmod(path, 0o600)
    who = run_mlbox(["--home", str(bossed), "--token-file", str(path), "--json", "whoami"], cwd=tmp_path)
    assert who.returncode == 0, who.stderr
    assert f'"user": "{BOSS}"' in who.stdout and '"via": "token"' in who.stdout


@pytest.mark.parametrize("bad", [0o644, 0o640, 0o604, 0o620])
def test_token_file_others_can_read_is_refused(bossed: Path, tmp_path: Path, bad: int) -> None:
    with Box(load_settings(bossed)) as box:
        _, token = box.identity.create_token(BOSS, BOSS)
    path = tmp_path / "token"
    path.write_text(token)
    os.chmod(path, bad)
    result = run_mlbox(["--home", str(bossed), "--token-file", str(path), "whoami"], cwd=tmp_path)
    assert result.returncode == UsageError.exit_code
    line = one_error_line(result.stderr)
    assert str(path) in line and f"chmod 600 {path}" in line
    assert result.stdout == ""


def test_missing_or_empty_token_file_is_one_clear_error(bossed: Path, tmp_path: Path) -> None:
    missing = run_mlbox(["--home", str(bossed), "--token-file", str(tmp_path / "nope"), "whoami"], cwd=tmp_path)
    assert missing.returncode == UsageError.exit_code and "cannot read token file" in one_error_line(missing.stderr)
    empty = tmp_path / "empty"
    empty.touch(mode=0o600)
    result = run_mlbox(["--home", str(bossed), "--token-file", str(empty), "whoami"], cwd=tmp_path)
    assert result.returncode == UsageError.exit_code and "is empty" in one_error_line(result.stderr)


# the trust model page ---------------------------------------------------------------------------


def test_security_page_lists_every_action_of_the_permission_table() -> None:
    from mlbox.security.roles import ACTIONS, PERMISSIONS

    page = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip().strip("`"): line for line in page.splitlines() if line.startswith("| `")}
    header = next(line for line in page.splitlines() if line.startswith("| action |"))
    assert [cell.strip() for cell in header.split("|")[3:-1]] == list(PERMISSIONS)
    assert set(rows) == set(ACTIONS)
    for action, line in rows.items():
        marks = [cell.strip() for cell in line.split("|")[3:-1]]
        assert [role for role, mark in zip(PERMISSIONS, marks, strict=True) if mark] == [
            role for role, allowed in PERMISSIONS.items() if action in allowed
        ], action
