"""Release metadata: the registry entry, the bundle manifest and pyproject agree with the code.

The builds themselves (wheel, sdist, uvx, the .mcpb with the official CLI) run in .ci/package-check
and .ci/bundle-check, outside pytest, because they install packages.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import groundhog_mcp
from groundhog_mcp.app import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
VERSION = groundhog_mcp.__version__
SERVER_NAME = "io.github.groundhog-mcp/groundhog-context-mcp"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_server_json = _load(ROOT / "packaging" / "check_server_json.py")


def _json(relative: str) -> dict[str, Any]:
    return json.loads((ROOT / relative).read_text(encoding="utf-8"))


def test_server_json_is_valid_against_the_vendored_registry_schema() -> None:
    entry = _json("server.json")
    assert check_server_json.problems(entry) == []
    schema = _json("packaging/registry/server.schema.json")
    assert schema["$id"] == "https://static.modelcontextprotocol.io/schemas/2025-12-11/server.schema.json"
    assert entry["$schema"] == schema["$id"]


def test_the_schema_check_reports_what_the_registry_would_refuse() -> None:
    entry = _json("server.json")
    entry["name"] = "groundhog context"  # no namespace, a space
    entry["description"] = "x" * 101  # the registry's limit is 100
    entry["packages"][0]["version"] = "0.0.1"
    del entry["packages"][1]["transport"]
    assert check_server_json.problems(entry) == [
        f"description: '{'x' * 101}' is too long",
        "name: 'groundhog context' does not match '^[a-zA-Z0-9.-]+/[a-zA-Z0-9._-]+$'",
        "packages/1: 'transport' is a required property",
        f"packages/0/version: '0.0.1' differs from version '{VERSION}'",
    ]


def test_every_version_is_groundhog_mcp_version() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    # One source: pyproject reads groundhog_mcp.__version__ and states no version of its own.
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "groundhog_mcp.__version__"}
    entry = _json("server.json")
    manifest = _json("packaging/mcpb/manifest.json")
    assert entry["version"] == VERSION
    assert [package.get("version") for package in entry["packages"]] == [VERSION, VERSION]
    assert manifest["version"] == VERSION
    bundle_url = entry["packages"][1]["identifier"]
    assert bundle_url.endswith(f"/releases/download/v{VERSION}/groundhog-context-mcp-{VERSION}.mcpb")


def test_names_agree_across_pypi_registry_and_readme() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["name"] == "groundhog-context-mcp"
    # `uvx groundhog-context-mcp` runs the command named like the distribution; the old name stays.
    assert pyproject["project"]["scripts"] == {
        "groundhog-mcp": "groundhog_mcp.cli:main",
        "groundhog-context-mcp": "groundhog_mcp.cli:main",
    }
    entry = _json("server.json")
    assert entry["name"] == SERVER_NAME
    assert [(p["registryType"], p["transport"]["type"]) for p in entry["packages"]] == [
        ("pypi", "stdio"),
        ("mcpb", "stdio"),
    ]
    assert entry["packages"][0]["identifier"] == "groundhog-context-mcp"
    # The registry proves the PyPI package is ours by this line in its description (the README).
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert re.findall(r"<!-- mcp-name: (\S+) -->", readme) == [SERVER_NAME]
    assert _json("packaging/mcpb/manifest.json")["name"] == "groundhog-context-mcp"


def test_bundle_settings_reach_the_server_as_its_environment_variables() -> None:
    manifest = _json("packaging/mcpb/manifest.json")
    assert manifest["manifest_version"] == "0.4"
    assert manifest["server"]["type"] == "uv"
    env = manifest["server"]["mcp_config"]["env"]
    assert env == {
        "GROUNDHOG_DATABASE": "${user_config.database}",
        "GROUNDHOG_LOG_LEVEL": "${user_config.log_level}",
        "GROUNDHOG_ENCRYPTION_KEY_FILE": "${user_config.encryption_key_file}",
    }
    for variable, template in env.items():
        key = re.fullmatch(r"\$\{user_config\.(\w+)\}", template)
        assert key is not None and key.group(1) in manifest["user_config"]
        # Each variable is a setting the server reads (GROUNDHOG_ + the field's name).
        assert variable.removeprefix("GROUNDHOG_").lower() in Settings.model_fields
    # Optional settings default to empty, which the server reads as "not set".
    assert {key: option.get("default") for key, option in manifest["user_config"].items()} == {
        "database": "",
        "log_level": Settings.model_fields["log_level"].default,
        "encryption_key_file": "",
    }


def test_an_empty_setting_from_the_bundle_means_not_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A host fills an optional user_config left blank with "": the server must read it as unset.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    env = {"GROUNDHOG_DATABASE": "", "GROUNDHOG_LOG_LEVEL": "", "GROUNDHOG_ENCRYPTION_KEY_FILE": ""}
    settings = load_settings({}, env=env)
    assert settings.database == str(tmp_path / "data" / "groundhog-mcp" / "groundhog.sqlite")
    assert settings.log_level == "INFO"
    assert settings.encryption_key_file is None
