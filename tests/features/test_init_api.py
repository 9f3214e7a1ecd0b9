"""`mlbox.init(path, template=...)`: the Python door to what `mlbox init` does, with the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import mlbox
from mlbox.errors import Conflict, NotFound, UsageError

from ..conftest import OS_USER


def test_init_creates_the_project_and_returns_the_open_box(tmp_path: Path) -> None:
    dest = tmp_path / "churn"
    with mlbox.init(dest, template="tabular-classification") as box:
        assert isinstance(box, mlbox.Box)
        assert box.paths.home == dest.resolve()
        assert (dest / "mlbox.toml").is_file() and (dest / "features.yaml").is_file()
        admins = [u for u in box.identity.users() if u.role == "admin"]
        assert [u.os_user for u in admins] == [OS_USER]  # the kernel OS user, as with the CLI (LOGNAME says otherwise)
        events = box.audit.entries(action="box.init")
        assert [(e.target, e.details["template"]) for e in events] == [(str(dest.resolve()), "tabular-classification")]
        # the box is usable at once: the template's feature file applies
        changes = box.features.apply(box.features.load())
        assert {c.action for c in changes} == {"create"}
    with mlbox.open_box(str(dest)) as again:  # and it opens like any other box
        assert again.features.list_views()


def test_init_uses_the_same_checks_as_the_cli(tmp_path: Path) -> None:
    mlbox.init(tmp_path / "a").close()
    with pytest.raises(Conflict, match="already holds an mlbox project"):
        mlbox.init(tmp_path / "a")
    with pytest.raises(NotFound, match="no template 'nope'") as err:
        mlbox.init(tmp_path / "b", template="nope")
    assert "tabular-classification" in (err.value.hint or "")
    assert not (tmp_path / "b").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is not a folder"):
        mlbox.init(tmp_path / "file")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "train.yaml").write_text("mine")
    with pytest.raises(Conflict, match="train.yaml already exists"):
        mlbox.init(tmp_path / "c")
    assert (tmp_path / "c" / "train.yaml").read_text() == "mine"  # nothing overwritten


def test_init_and_the_cli_make_the_same_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlbox.cli.main import app

    mlbox.init(tmp_path / "api", template="regression", admin="bob").close()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["init", "cli", "--template", "regression"])
    assert result.exit_code == 0, result.output

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.parent == root}

    project = {k: v for k, v in files(tmp_path / "api").items() if not k.endswith((".db", ".db-wal", ".db-shm", ".key"))}
    assert project == {k: v for k, v in files(tmp_path / "cli").items() if k in project}
    with mlbox.open_box(str(tmp_path / "api")) as box:
        assert [u.os_user for u in box.identity.users() if u.role == "admin"] == ["bob"]
