"""Box-level CLI: init, doctor (CPU and CUDA mode), backup, settings, version, and the error line."""

from __future__ import annotations

import os

import json
from pathlib import Path

import pytest

from mlbox import hardware
from mlbox.box import Box
from mlbox.config import load_settings
from mlbox.errors import Conflict, NotFound, UsageError
from mlbox.store.migrations import MIGRATIONS, applied

from .conftest import OS_USER, run_mlbox, write_fake_nvidia_smi


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli) -> Path:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    result = cli("init", "demo")
    assert result.exit_code == 0, result.exception
    return tmp_path / "demo"


# init -------------------------------------------------------------------------------


def test_init_creates_project_and_box(demo: Path, cli) -> None:  # type: ignore[no-untyped-def]
    for name in ("mlbox.toml", "features.yaml", "train.yaml", "README.md", "meta.db", "keys/audit.key"):
        assert (demo / name).is_file(), name
    with Box(load_settings(demo)) as box:
        [user] = box.identity.users()
        assert (user.name, user.role, user.os_user) == (OS_USER, "admin", OS_USER)
        assert applied(box.db) == [m.name for m in MIGRATIONS]
        assert [e.action for e in box.audit.entries()] == ["box.init", "auth.user.add"]
        assert box.audit.verify().ok
    assert load_settings(demo).project_name() == "churn"


def test_init_json(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--json", "init", str(tmp_path / "j"), "--template", "regression")
    assert result.exit_code == 0, result.exception
    data = result.json()
    assert data["home"] == str(tmp_path / "j") and data["template"] == "regression" and data["admin"] == OS_USER
    assert "mlbox.toml" in data["files"]


def test_init_twice_is_an_error(demo: Path, cli, cli_run) -> None:  # type: ignore[no-untyped-def]
    again = cli("init", "demo")
    assert isinstance(again.exception, Conflict)
    line = cli_run("init", "demo")
    assert line.exit_code == Conflict.exit_code
    assert line.stderr.startswith("error:") and "already" in line.stderr
    with Box(load_settings(demo)) as box:
        assert len(box.audit.entries()) == 2  # nothing more happened


def test_init_unknown_template(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("init", str(tmp_path / "x"), "--template", "no-such-template")
    assert result.exit_code == NotFound.exit_code
    assert "no-such-template" in result.stderr and "tabular-classification" in result.stderr
    assert not (tmp_path / "x").exists()


def test_init_into_folder_with_clashing_file(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "train.yaml").write_text("mine\n")
    result = cli("init", str(tmp_path / "p"))
    assert isinstance(result.exception, Conflict)
    assert (tmp_path / "p" / "train.yaml").read_text() == "mine\n"
    assert not (tmp_path / "p" / "mlbox.toml").exists()


# doctor -----------------------------------------------------------------------------


def test_doctor_cpu_mode(demo: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--home", "demo", "doctor")
    assert result.exit_code == 0, (result.exception, result.stdout)
    gpu_line = next(line for line in result.stdout.splitlines() if " gpu " in f" {line} ")
    assert "CPU mode" in gpu_line
    assert "nvidia-smi not found" in gpu_line
    assert "audit chain" in result.stdout and "2 entries verified" in result.stdout


def test_doctor_cuda_mode_with_fake_nvidia_smi(demo: Path, bin_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_fake_nvidia_smi(bin_dir)
    result = cli("--home", "demo", "--json", "doctor")
    assert result.exit_code == 0, (result.exception, result.stdout)
    checks = {c["name"]: c for c in result.json()}
    assert "CUDA mode" in checks["gpu"]["detail"]
    assert "NVIDIA H100 80GB HBM3" in checks["gpu"]["detail"]
    assert checks["gpu"]["status"] == "ok"
    assert all(c["status"] != "fail" for c in checks.values())


def test_doctor_reports_failing_nvidia_smi(demo: Path, bin_dir: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_fake_nvidia_smi(bin_dir, "NVIDIA-SMI has failed because it couldn't communicate with the driver", rc=9)
    result = cli("--home", "demo", "--json", "doctor")
    checks = {c["name"]: c for c in result.json()}
    assert "CPU mode" in checks["gpu"]["detail"] and "exited 9" in checks["gpu"]["detail"]


def test_doctor_fails_on_tampered_audit(demo: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    from .test_audit import tamper

    tamper(demo, "UPDATE audit SET actor = 'mallory' WHERE seq = 1")
    result = cli_run("--home", "demo", "doctor")
    assert result.exit_code != 0
    assert "audit chain" in result.stdout and "entry 1" in result.stdout
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "audit chain" in result.stderr


def test_doctor_without_a_box_fails(tmp_path: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", str(tmp_path / "none"), "doctor")
    assert result.exit_code != 0
    assert "CPU mode" in result.stdout  # the other checks still ran
    assert result.stderr.startswith("error:") and "box" in result.stderr


def test_hardware_detect_honours_cuda_visible_devices(bin_dir: Path) -> None:
    write_fake_nvidia_smi(bin_dir, "0, GPU A, 1000, 10, 5, GPU-a\n1, GPU B, 2000, 0, 0, GPU-b")
    inv = hardware.detect({})
    assert inv.mode == "cuda" and [g.name for g in inv.gpus] == ["GPU A", "GPU B"]
    assert inv.gpus[0].memory_free_mb == 990
    assert [g.index for g in hardware.detect({"CUDA_VISIBLE_DEVICES": "1"}).gpus] == [1]
    assert [g.index for g in hardware.detect({"CUDA_VISIBLE_DEVICES": "GPU-a"}).gpus] == [0]
    hidden = hardware.detect({"CUDA_VISIBLE_DEVICES": ""})
    assert hidden.mode == "cpu" and "CUDA_VISIBLE_DEVICES" in hidden.reason


def test_hardware_detect_without_nvidia_smi() -> None:
    inv = hardware.detect({})
    assert inv.mode == "cpu" and inv.gpus == () and "nvidia-smi not found" in inv.reason


def test_parse_nvidia_smi() -> None:
    [gpu] = hardware.parse_nvidia_smi("0, NVIDIA H100 80GB HBM3, 81559, 1024, 37, GPU-abc\n\ngarbage line\n")
    assert gpu == hardware.Gpu(0, "NVIDIA H100 80GB HBM3", 81559, 1024, 37, "GPU-abc")
    assert hardware.parse_nvidia_smi("0, X, [N/A], 0, [N/A]")[0].memory_total_mb == 0


# backup -----------------------------------------------------------------------------


def test_backup_makes_a_working_copy(demo: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    with Box(load_settings(demo)) as box:
        box.identity.add_user(OS_USER, "bob", "viewer")
        for i in range(20):
            box.audit.record(OS_USER, "test.write", str(i))
    (demo / "artifacts" / "model.bin").write_bytes(b"\x00weights")
    result = cli("--home", "demo", "--json", "backup", str(tmp_path / "copy"))
    assert result.exit_code == 0, result.exception
    report = result.json()
    assert report["dest"] == str(tmp_path / "copy") and report["databases"] == 2  # meta.db and online.db, both made (0600) with the box

    copy = tmp_path / "copy"
    assert not list(copy.glob("meta.db-*"))
    assert (copy / "artifacts" / "model.bin").read_bytes() == b"\x00weights"
    assert (copy / "keys").stat().st_mode & 0o777 == 0o700
    assert (copy / "keys" / "audit.key").read_bytes() == (demo / "keys" / "audit.key").read_bytes()
    with Box(load_settings(copy)) as restored:
        assert restored.db.integrity() == []
        verify = restored.audit.verify()
        assert verify.ok and verify.checked == 23
        assert sorted(u.name for u in restored.identity.users()) == sorted([OS_USER, "bob"])
    with Box(load_settings(demo)) as box:  # the backup itself is audited in the original
        assert box.audit.entries(limit=1)[0].action == "box.backup"
        assert box.audit.verify().ok
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_a_backup_made_under_a_loose_umask_opens_as_a_box(demo: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    """Its databases are 0600 and its folder 0700 whatever the umask, so the box's own check passes."""
    old = os.umask(0o002)
    try:
        result = cli("--home", "demo", "backup", str(tmp_path / "copy"))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.exception
    copy = tmp_path / "copy"
    assert copy.stat().st_mode & 0o777 == 0o700
    assert {(copy / n).stat().st_mode & 0o777 for n in ("meta.db", "online.db")} == {0o600}
    with Box(load_settings(copy)) as restored:
        assert restored.audit.verify().ok


def test_backup_into_the_box_is_refused(demo: Path, cli, cli_run) -> None:  # type: ignore[no-untyped-def]
    result = cli_run("--home", "demo", "backup", "demo/artifacts/bk")
    assert result.exit_code == UsageError.exit_code
    assert "inside the box" in result.stderr
    assert not (demo / "artifacts" / "bk").exists()
    assert not any(".tmp-" in p.name for p in (demo / "artifacts").iterdir())


def test_backup_into_non_empty_folder_is_refused(demo: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    result = cli("--home", "demo", "backup", str(tmp_path / "full"))
    assert isinstance(result.exception, UsageError)
    assert (tmp_path / "full" / "x").read_text() == "keep"


def test_backup_needs_admin(demo: Path, tmp_path: Path, cli, kernel_user) -> None:  # type: ignore[no-untyped-def]
    from mlbox.errors import PermissionDenied

    with Box(load_settings(demo)) as box:
        box.identity.add_user(OS_USER, "eng", "ml-engineer", os_user="eng")
    kernel_user("eng")
    result = cli("--home", "demo", "backup", str(tmp_path / "b2"))
    assert isinstance(result.exception, PermissionDenied)
    assert not (tmp_path / "b2").exists()


# settings, version, errors ----------------------------------------------------------


def test_settings_command_lists_every_setting(demo: Path, cli) -> None:  # type: ignore[no-untyped-def]
    from mlbox.config import SETTINGS

    result = cli("--home", "demo", "--json", "settings", env={"MLBOX_STORE_BUSY_TIMEOUT_MS": "4242"})
    assert result.exit_code == 0, result.exception
    rows = {r["name"]: r for r in result.json()}
    assert set(rows) == {s.name for s in SETTINGS}
    assert rows["store.busy_timeout_ms"]["value"] == 4242
    assert rows["project.name"]["value"] == "churn" and rows["project.name"]["default"] == ""


def test_bad_setting_is_one_error_line(demo: Path, cli_run) -> None:  # type: ignore[no-untyped-def]
    (demo / "mlbox.toml").write_text('[store]\nsynchronus = "FULL"\n')
    result = cli_run("--home", "demo", "settings")
    assert result.exit_code == UsageError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "store.synchronus" in lines[0] and "mlbox.toml" in lines[0]


def test_json_version(cli) -> None:  # type: ignore[no-untyped-def]
    import platform

    from mlbox._version import __version__

    result = cli("--json", "version")
    assert result.exit_code == 0
    assert result.json() == {"mlbox": __version__, "python": platform.python_version()}
    plain = cli("version")
    assert plain.stdout.strip() == f"mlbox {__version__} (Python {platform.python_version()})"


def test_error_is_one_line_and_exit_code_subprocess(tmp_path: Path) -> None:
    """The real console script: one 'error:' line on stderr, nothing on stdout, the error's exit code."""
    result = run_mlbox(["--home", str(tmp_path / "x" / "nonexistent"), "audit", "list"], cwd=tmp_path)
    assert result.returncode == NotFound.exit_code == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no mlbox box")
    assert "\x1b[" not in result.stderr  # no colour codes when stderr is not a terminal


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = run_mlbox(["--debug", "--home", str(tmp_path / "nope"), "audit", "list"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "NotFound" in result.stderr


def test_environment_chooses_the_box(demo: Path, tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    result = cli("--json", "whoami", env={"MLBOX_HOME": str(demo)})
    assert result.exit_code == 0, result.exception
    assert result.json()["box"] == str(demo)


def test_nearest_mlbox_toml_chooses_the_box(demo: Path, monkeypatch: pytest.MonkeyPatch, cli) -> None:  # type: ignore[no-untyped-def]
    (demo / "src" / "deep").mkdir(parents=True)
    monkeypatch.chdir(demo / "src" / "deep")
    result = cli("--json", "whoami")
    assert result.exit_code == 0, result.exception
    assert json.loads(result.stdout)["box"] == str(demo)


def test_no_arguments_shows_help(cli) -> None:  # type: ignore[no-untyped-def]
    result = cli()
    assert "Usage" in result.stdout + result.stderr
    assert "init" in result.stdout + result.stderr
