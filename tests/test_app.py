"""Configuration precedence: flags > GROUNDHOG_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from groundhog_mcp import InitializationError
from groundhog_mcp.app import Settings, default_database, load_settings
from groundhog_mcp.errors import EncryptionKeyError


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({}, env={}, config_file=None)
    assert settings.database == str(default_database())
    assert "groundhog-mcp" in settings.database
    assert settings.synchronous == "FULL" and settings.max_depth == 64 and settings.max_state_bytes == 1024 * 1024


def test_precedence(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('database = "/from/toml.sqlite"\nlog_level = "DEBUG"\nmax_depth = 10\nbusy_timeout_ms = 100\n')
    env = {"GROUNDHOG_DATABASE": "/from/env.sqlite", "GROUNDHOG_MAX_DEPTH": "20"}
    settings = load_settings({"database": "/from/flag.sqlite"}, env=env, config_file=config)
    assert settings.database == "/from/flag.sqlite"
    assert settings.max_depth == 20
    assert settings.log_level == "DEBUG" and settings.busy_timeout_ms == 100
    via_env = load_settings({}, env={**env, "GROUNDHOG_CONFIG": str(config)})
    assert via_env.database == "/from/env.sqlite"


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("max_depth = 'deep'\nunknown_key = 1\n")
    with pytest.raises(InitializationError, match=r"config: max_depth: .*unknown_key: Extra inputs"):
        load_settings({}, env={}, config_file=config)
    config.write_text("not toml [")
    with pytest.raises(InitializationError, match="not valid TOML"):
        load_settings({}, env={}, config_file=config)
    with pytest.raises(InitializationError, match="does not exist"):
        load_settings({}, env={}, config_file=tmp_path / "missing.toml")


# One row per kind of setting: (name, TOML value, env text, flag value, the three expected values).
_LAYERS = [
    ("database", '"/toml.sqlite"', "/env.sqlite", "/flag.sqlite", ("/toml.sqlite", "/env.sqlite", "/flag.sqlite")),
    ("busy_timeout_ms", "100", "200", 300, (100, 200, 300)),
    ("header_timeout", "1.5", "2.5", 3.5, (1.5, 2.5, 3.5)),
    ("log_level", '"DEBUG"', "WARNING", "ERROR", ("DEBUG", "WARNING", "ERROR")),
    ("tools", '"all"', "get_state, update_state", "default", ("all", "get_state, update_state", "default")),
    ("insecure_no_auth", "true", "false", True, (True, False, True)),
    (
        "allowed_hosts",
        '["t.example"]',
        "e1.example, e2.example",
        ["f.example"],
        (
            ["t.example"],
            ["e1.example", "e2.example"],
            ["f.example"],
        ),
    ),
]


@pytest.mark.parametrize(("name", "toml", "env", "flag", "expected"), _LAYERS, ids=[row[0] for row in _LAYERS])
def test_flag_beats_env_beats_toml(
    tmp_path: Path, name: str, toml: str, env: str, flag: object, expected: tuple[object, object, object]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f"{name} = {toml}\n")
    variable = {f"GROUNDHOG_{name.upper()}": env}
    assert getattr(load_settings({}, env={}, config_file=config), name) == expected[0]
    assert getattr(load_settings({}, env=variable, config_file=config), name) == expected[1]
    assert getattr(load_settings({name: flag}, env=variable, config_file=config), name) == expected[2]
    # An empty variable is unset, and a flag given as None (argparse: not given) is too.
    assert (
        getattr(load_settings({name: None}, env={f"GROUNDHOG_{name.upper()}": ""}, config_file=config), name)
        == (expected[0])
    )


def test_groundhog_config_names_the_file_and_the_flag_beats_it(tmp_path: Path) -> None:
    by_env, by_flag = tmp_path / "env.toml", tmp_path / "flag.toml"
    by_env.write_text("max_depth = 11\n")
    by_flag.write_text("max_depth = 12\n")
    assert load_settings({}, env={"GROUNDHOG_CONFIG": str(by_env)}).max_depth == 11
    assert load_settings({}, env={"GROUNDHOG_CONFIG": str(by_env)}, config_file=by_flag).max_depth == 12


def test_settings_alone_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GROUNDHOG_MAX_DEPTH", "7")
    assert Settings(database="/given.sqlite").max_depth == 64
    assert load_settings({}, config_file=None).max_depth == 7  # os.environ is the default env


def test_keys_come_from_the_environment_only(tmp_path: Path) -> None:
    key = "A" * 43
    config = tmp_path / "config.toml"
    config.write_text(f'encryption_key = "{key}"\n')
    with pytest.raises(EncryptionKeyError, match=f"config: {config} sets encryption_key; keys are not read from"):
        load_settings({}, env={}, config_file=config)
    with pytest.raises(EncryptionKeyError, match=r"^config: encryption keys are never taken from the command line$"):
        load_settings({"encryption_old_keys": key}, env={})
    settings = load_settings({}, env={"GROUNDHOG_ENCRYPTION_KEY": key, "GROUNDHOG_GRANTS": "read:a., write:b."})
    assert settings.encryption_key is not None and settings.encryption_key.get_secret_value() == key
    assert settings.grants == ["read:a.", "write:b."]


def test_an_environment_value_is_named_when_wrong() -> None:
    with pytest.raises(InitializationError, match=r"^config: port: Input should be a valid integer"):
        load_settings({}, env={"GROUNDHOG_PORT": "eighty"})


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
@pytest.mark.parametrize("text", ["x,y", "[1", "{}", "-1"])
def test_any_environment_value_is_a_setting_or_a_config_error(name: str, text: str) -> None:
    """Never a bare pydantic-settings error (a traceback, exit 70): lists are not JSON-decoded."""
    try:
        load_settings({}, env={f"GROUNDHOG_{name.upper()}": text})
    except InitializationError as exc:  # EncryptionKeyError included
        assert str(exc).startswith(("config: ", "encryption: ")), str(exc)
