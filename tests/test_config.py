"""L0 settings: defaults, mlbox.toml, references, MLBOX_* overrides, home resolution."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlbox.config import SETTINGS, SETTINGS_BY_NAME, Settings, load_settings, resolve_home
from mlbox.errors import SettingsError, UsageError


def write_toml(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mlbox.toml"
    path.write_text(text)
    return path


# defaults ---------------------------------------------------------------------------


def test_defaults_without_config_file(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "box", environ={})
    assert s.source is None
    assert s["store.busy_timeout_ms"] == 30000
    assert s["store.synchronous"] == "NORMAL"
    assert s["auth.token_ttl_days"] == 90
    assert s["doctor.min_free_disk_gb"] == 5.0
    assert s["features.duplicate_policy"] == "reject"
    for setting in SETTINGS:
        assert s[setting.name] == setting.default


def test_every_setting_is_documented_and_well_formed() -> None:
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    for s in SETTINGS:
        assert s.help.strip(), f"{s.name} has no help text"
        assert s.name.count(".") == 1, s.name
        assert s.env_var == "MLBOX_" + s.name.replace(".", "_").upper()
        if s.choices:
            assert s.default in s.choices


def test_unknown_setting_name_is_a_key_error(tmp_path: Path) -> None:
    s = load_settings(tmp_path, environ={})
    with pytest.raises(KeyError):
        s["store.nope"]


def test_project_name_defaults_to_folder_name(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "churn-box", environ={}).project_name() == "churn-box"
    write_toml(tmp_path / "b", '[project]\nname = "churn"\n')
    assert load_settings(tmp_path / "b", environ={}).project_name() == "churn"


# mlbox.toml -------------------------------------------------------------------------


def test_loads_mlbox_toml(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path / "box",
        '[store]\nbusy_timeout_ms = 1234\nsynchronous = "FULL"\n[doctor]\nmin_free_disk_gb = 2\n',
    )
    s = load_settings(tmp_path / "box", environ={})
    assert s.source == path
    assert s["store.busy_timeout_ms"] == 1234
    assert s["store.synchronous"] == "FULL"
    assert s["doctor.min_free_disk_gb"] == 2.0 and isinstance(s["doctor.min_free_disk_gb"], float)
    assert s["auth.token_ttl_days"] == 90  # untouched default


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "box", "[store]\nbusy_timeout = 5\n")
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "box", environ={})
    assert "store.busy_timeout" in str(info.value)
    assert str(path) in str(info.value)
    assert isinstance(info.value, UsageError) and info.value.code == "bad_setting"


def test_unknown_top_level_key(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", 'colour = "blue"\n')
    with pytest.raises(SettingsError, match="colour"):
        load_settings(tmp_path / "box", environ={})


@pytest.mark.parametrize(
    "toml, name",
    [
        ('[store]\nbusy_timeout_ms = "soon"\n', "store.busy_timeout_ms"),
        ("[store]\nbusy_timeout_ms = 1.5\n", "store.busy_timeout_ms"),
        ("[store]\nbusy_timeout_ms = true\n", "store.busy_timeout_ms"),
        ("[auth]\ntoken_ttl_days = -1\n", "auth.token_ttl_days"),
        ("[project]\nname = 3\n", "project.name"),
        ('[doctor]\nmin_free_disk_gb = "lots"\n', "doctor.min_free_disk_gb"),
    ],
)
def test_wrong_type_is_rejected(tmp_path: Path, toml: str, name: str) -> None:
    path = write_toml(tmp_path / "box", toml)
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "box", environ={})
    assert name in str(info.value) and str(path) in str(info.value)


def test_bad_choice_lists_choices(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", '[store]\nsynchronous = "OFF"\n')
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "box", environ={})
    message = str(info.value)
    assert "store.synchronous" in message and "NORMAL" in message and "FULL" in message and "OFF" in message


def test_invalid_toml(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "box", "[store\n")
    with pytest.raises(SettingsError, match="not valid TOML") as info:
        load_settings(tmp_path / "box", environ={})
    assert str(path) in str(info.value)


# references -------------------------------------------------------------------------


def test_env_reference_set(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", '[store]\nbusy_timeout_ms = { "$env" = "MY_TIMEOUT" }\n[project]\nname = { "$env" = "PNAME" }\n')
    s = load_settings(tmp_path / "box", environ={"MY_TIMEOUT": "777", "PNAME": "secret-project"})
    assert s["store.busy_timeout_ms"] == 777
    assert s["project.name"] == "secret-project"


def test_env_reference_unset_names_variable_setting_and_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path / "box", '[project]\nname = { "$env" = "NOT_SET_ANYWHERE" }\n')
    with pytest.raises(SettingsError) as info:
        load_settings(tmp_path / "box", environ={})
    message = str(info.value)
    assert "NOT_SET_ANYWHERE" in message and "project.name" in message and str(path) in message


def test_env_reference_value_is_type_checked(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", '[store]\nbusy_timeout_ms = { "$env" = "T" }\n')
    with pytest.raises(SettingsError, match="store.busy_timeout_ms"):
        load_settings(tmp_path / "box", environ={"T": "abc"})


def test_file_reference(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", '[project]\nname = { "$file" = "name.txt" }\n')
    (tmp_path / "box" / "name.txt").write_text("from-file\nsecond line ignored\n")
    assert load_settings(tmp_path / "box", environ={})["project.name"] == "from-file"


def test_missing_file_reference(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", '[project]\nname = { "$file" = "missing.txt" }\n')
    with pytest.raises(SettingsError, match="missing.txt"):
        load_settings(tmp_path / "box", environ={})


# environment overrides --------------------------------------------------------------


def test_env_overrides_file_and_defaults(tmp_path: Path) -> None:
    write_toml(tmp_path / "box", "[store]\nbusy_timeout_ms = 1000\n")
    s = load_settings(
        tmp_path / "box",
        environ={"MLBOX_STORE_BUSY_TIMEOUT_MS": "2000", "MLBOX_FEATURES_DUPLICATE_POLICY": "keep-last"},
    )
    assert s["store.busy_timeout_ms"] == 2000
    assert s["features.duplicate_policy"] == "keep-last"


def test_env_override_is_type_and_choice_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MLBOX_STORE_BUSY_TIMEOUT_MS"):
        load_settings(tmp_path, environ={"MLBOX_STORE_BUSY_TIMEOUT_MS": "fast"})
    with pytest.raises(SettingsError, match="store.synchronous"):
        load_settings(tmp_path, environ={"MLBOX_STORE_SYNCHRONOUS": "EXTRA"})


def test_unknown_mlbox_variable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="MLBOX_STORE_BUSYTIMEOUT"):
        load_settings(tmp_path, environ={"MLBOX_STORE_BUSYTIMEOUT": "5"})


def test_reserved_mlbox_variables_are_not_settings(tmp_path: Path) -> None:
    s = load_settings(
        None, environ={"MLBOX_HOME": str(tmp_path / "b"), "MLBOX_TOKEN": "x", "MLBOX_DEBUG": "1"}, cwd=tmp_path
    )
    assert s.home == (tmp_path / "b").resolve()


def test_load_settings_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLBOX_AUTH_TOKEN_TTL_DAYS", "7")
    assert load_settings(tmp_path)["auth.token_ttl_days"] == 7


def test_settings_table_is_frozen(tmp_path: Path) -> None:
    s = load_settings(tmp_path, environ={})
    with pytest.raises(AttributeError):
        s.home = tmp_path  # type: ignore[misc]
    assert isinstance(s, Settings)
    assert set(SETTINGS_BY_NAME) == {x.name for x in SETTINGS}


# home resolution --------------------------------------------------------------------


def test_home_order_cli_first(tmp_path: Path) -> None:
    write_toml(tmp_path / "proj", "")
    env = {"MLBOX_HOME": str(tmp_path / "envbox"), "HOME": str(tmp_path / "h")}
    home, reason = resolve_home(tmp_path / "clibox", env, tmp_path / "proj")
    assert (home, reason) == ((tmp_path / "clibox").resolve(), "--home")


def test_home_order_env_second(tmp_path: Path) -> None:
    write_toml(tmp_path / "proj", "")
    env = {"MLBOX_HOME": str(tmp_path / "envbox"), "HOME": str(tmp_path / "h")}
    home, reason = resolve_home(None, env, tmp_path / "proj")
    assert (home, reason) == ((tmp_path / "envbox").resolve(), "MLBOX_HOME")


def test_home_order_nearest_project_walking_up(tmp_path: Path) -> None:
    write_toml(tmp_path / "outer", "")
    write_toml(tmp_path / "outer" / "proj", "")
    deep = tmp_path / "outer" / "proj" / "src" / "pkg"
    deep.mkdir(parents=True)
    home, reason = resolve_home(None, {"HOME": str(tmp_path / "h")}, deep)
    assert home == (tmp_path / "outer" / "proj").resolve()
    assert "mlbox.toml" in reason


def test_home_order_default_dot_mlbox(tmp_path: Path) -> None:
    (tmp_path / "nowhere").mkdir()
    home, reason = resolve_home(None, {"HOME": str(tmp_path / "h")}, tmp_path / "nowhere")
    assert home == (tmp_path / "h" / ".mlbox").resolve()
    assert "~/.mlbox" in reason


def test_relative_home_resolves_against_cwd(tmp_path: Path) -> None:
    home, _ = resolve_home("rel/box", {}, tmp_path)
    assert home == (tmp_path / "rel" / "box").resolve()
    home, _ = resolve_home(None, {"MLBOX_HOME": "envrel"}, tmp_path)
    assert home == (tmp_path / "envrel").resolve()


def test_load_settings_uses_the_resolved_homes_config(tmp_path: Path) -> None:
    write_toml(tmp_path / "proj", "[auth]\ntoken_ttl_days = 3\n")
    (tmp_path / "proj" / "sub").mkdir()
    s = load_settings(None, environ={"HOME": str(tmp_path / "h")}, cwd=tmp_path / "proj" / "sub")
    assert s.home == (tmp_path / "proj").resolve()
    assert s["auth.token_ttl_days"] == 3
    assert s.home_reason.startswith("nearest")
