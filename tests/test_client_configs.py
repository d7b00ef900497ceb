"""The client configs of docs/clients.md and claude_desktop_config.example.json name real things.

A config that names a setting the server does not have (or a console script that is not
installed) fails silently in the client: the server starts with the default and the user's
setting is lost. So every JSON config, the ``claude mcp add`` command and every
``GROUNDHOG_*`` name on the page are checked against pyproject.toml and ``Settings``, and the
Python snippets must compile. (The LangChain snippet's client runs against the server in
tests/e2e/test_framework_clients.py.)
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp.app import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
CLIENTS_PAGE = ROOT / "docs" / "clients.md"
DESKTOP_EXAMPLE = ROOT / "claude_desktop_config.example.json"

_FENCE = re.compile(r"^```(\w+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
DISTRIBUTION: str = _PYPROJECT["project"]["name"]
CONSOLE_SCRIPTS = frozenset(_PYPROJECT["project"]["scripts"])


def blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(CLIENTS_PAGE.read_text(encoding="utf-8")) if lang == language]


def setting_of(variable: str) -> str:
    """The Settings field a ``GROUNDHOG_*`` variable sets; fails on a name the server ignores."""
    assert variable.startswith("GROUNDHOG_"), f"{variable}: not a GROUNDHOG_* setting"
    field = variable.removeprefix("GROUNDHOG_").lower()
    assert field in Settings.model_fields, f"{variable}: no such setting (Settings has no {field!r})"
    return field


def check_launch(command: str, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
    """A stdio launch runs one of our console scripts with real flags and settings."""
    if command == "uvx":
        # uvx runs the console script named like the distribution.
        assert args[:1] == [DISTRIBUTION], f"uvx {args}: the first argument must be {DISTRIBUTION!r}"
        assert DISTRIBUTION in CONSOLE_SCRIPTS, f"pyproject has no console script {DISTRIBUTION!r}"
        args = args[1:]
    else:
        script = Path(command.replace("\\", "/")).name.removesuffix(".exe")
        assert script in CONSOLE_SCRIPTS, f"{command}: not one of the console scripts {sorted(CONSOLE_SCRIPTS)}"
    for arg in args:
        if arg.startswith("--"):
            setting_of("GROUNDHOG_" + arg[2:].split("=")[0].replace("-", "_").upper())
    for variable in env:
        setting_of(variable)
    # The values validate as the server reads them (no config file of the developer's).
    private = {"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": str(tmp_path)}
    settings = load_settings(env={**private, **env})
    if "GROUNDHOG_DATABASE" in env:
        assert settings.database == env["GROUNDHOG_DATABASE"]
    if "GROUNDHOG_TOOLS" in env:
        assert settings.tools == env["GROUNDHOG_TOOLS"]


def check_mcp_servers(config: dict[str, Any], tmp_path: Path) -> None:
    assert list(config) == ["mcpServers"]
    server = config["mcpServers"]["groundhog"]
    assert set(server) <= {"type", "command", "args", "env"}, sorted(server)
    assert server.get("type", "stdio") == "stdio"
    # Claude Desktop passes no shell environment: the settings must be in "env".
    env = server.get("env", {})
    assert "GROUNDHOG_DATABASE" in env, "the database belongs in the server's env block"
    check_launch(server["command"], server.get("args", []), env, tmp_path)


def test_the_page_has_the_configs_it_promises() -> None:
    # Claude Desktop (uvx, with encryption, from a clone) and a Claude Code .mcp.json; three frameworks.
    assert len(blocks("json")) == 4
    assert len(blocks("python")) == 3
    assert [line for block in blocks("bash") for line in block.splitlines() if line.startswith("claude ")] != []


@pytest.mark.parametrize("index", range(4))
def test_json_config(index: int, tmp_path: Path) -> None:
    check_mcp_servers(json.loads(blocks("json")[index]), tmp_path)


def test_claude_desktop_example_file(tmp_path: Path) -> None:
    config = json.loads(DESKTOP_EXAMPLE.read_text(encoding="utf-8"))
    check_mcp_servers(config, tmp_path)
    # The page shows the file as it is.
    assert config in [json.loads(block) for block in blocks("json")]


def test_claude_code_command(tmp_path: Path) -> None:
    lines = [line for block in blocks("bash") for line in block.splitlines() if line.startswith("claude mcp add")]
    assert len(lines) == 1
    words = shlex.split(lines[0])
    cut = words.index("--")
    options, (command, *args) = words[3:cut], words[cut + 1 :]
    env: dict[str, str] = {}
    positional: list[str] = []
    while options:
        word = options.pop(0)
        if word in ("-e", "--env"):
            key, _, value = options.pop(0).partition("=")
            env[key] = value.replace("$HOME", str(tmp_path))
        elif word in ("-s", "--scope"):
            assert options.pop(0) in ("local", "project", "user")
        else:
            positional.append(word)
    assert positional == ["groundhog"]
    assert set(env) == {"GROUNDHOG_DATABASE", "GROUNDHOG_TOOLS"}
    check_launch(command, args, env, tmp_path)


@pytest.mark.parametrize("index", range(3))
def test_python_snippet_compiles(index: int) -> None:
    compile(blocks("python")[index], f"docs/clients.md python block {index + 1}", "exec")


def test_every_setting_and_command_named_on_the_page_exists() -> None:
    text = CLIENTS_PAGE.read_text(encoding="utf-8")
    for variable in sorted(set(re.findall(r"\bGROUNDHOG_[A-Z_]*[A-Z]\b", text))):
        setting_of(variable)
    for script in set(re.findall(r"\bgroundhog-[a-z-]*mcp\b", text)):
        assert script in CONSOLE_SCRIPTS, f"docs/clients.md names {script!r}, not a console script"
