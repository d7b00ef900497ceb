"""Configuration precedence: flags > GROUNDHOG_* environment > TOML file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from groundhog_mcp import InitializationError
from groundhog_mcp.app import default_database, load_settings


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
