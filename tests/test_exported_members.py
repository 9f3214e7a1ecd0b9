"""The package root's public surface: a small, sorted `__all__` whose every name resolves."""

from __future__ import annotations

import pytest

import mlbox

from .conftest import OS_USER


def test_all_is_sorted() -> None:
    assert mlbox.__all__ == sorted(mlbox.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(mlbox.__all__) == len(set(mlbox.__all__))


@pytest.mark.parametrize("name", mlbox.__all__)
def test_every_exported_name_resolves(name: str) -> None:
    value = getattr(mlbox, name)
    assert value is not None
    if name != "__version__":
        module = getattr(value, "__module__", "")
        assert module.startswith("mlbox"), f"{name} comes from {module}"


def test_public_names_are_exported() -> None:
    public = {n for n in vars(mlbox) if not n.startswith("_") and not isinstance(getattr(mlbox, n), type(mlbox))}
    public -= {"annotations", "TYPE_CHECKING", "Any"}
    assert public <= set(mlbox.__all__), sorted(public - set(mlbox.__all__))


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        mlbox.no_such_name  # noqa: B018
    assert not hasattr(mlbox, "no_such_name")


def test_version_matches_metadata() -> None:
    from importlib import metadata

    assert mlbox.__version__ == metadata.version("mlbox")


def test_open_box(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlbox.box import Box
    from mlbox.errors import NotFound

    with pytest.raises(NotFound):
        mlbox.open_box(str(tmp_path / "none"))
    Box.create(mlbox.load_settings(tmp_path / "b"), OS_USER).close()
    with mlbox.open_box(str(tmp_path / "b")) as box:
        assert isinstance(box, mlbox.Box)
        assert box.paths.home == (tmp_path / "b").resolve()


def test_init(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from mlbox.errors import Conflict

    with mlbox.init(tmp_path / "p") as box:
        assert isinstance(box, mlbox.Box)
        assert box.paths.home == (tmp_path / "p").resolve()
    with pytest.raises(Conflict):
        mlbox.init(tmp_path / "p")
