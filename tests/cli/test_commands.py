"""Every sub-command is a handler registered with its parser: none is left to fall through."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pytest

from groundhog_mcp.cli.commands import (
    _parse,  # pyright: ignore[reportPrivateUsage]
    _parser,  # pyright: ignore[reportPrivateUsage]
    _serves_by_default,  # pyright: ignore[reportPrivateUsage]
)
from tests.cli_in_process import run_cli


def _leaves(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        handler = parser.get_default("handler") or parser.get_default("keygen")
        return [(path, handler)]
    found: list[tuple[tuple[str, ...], object]] = []
    for action in subparsers:
        for name, child in action.choices.items():  # pyright: ignore[reportUnknownVariableType]
            found.extend(_leaves(child, (*path, name)))  # pyright: ignore[reportUnknownArgumentType]
    return found


def test_every_command_has_a_handler() -> None:
    leaves = _leaves(_parser())
    assert [" ".join(path) for path, handler in leaves if not callable(handler)] == []
    names = {" ".join(path) for path, _ in leaves}
    assert {"serve", "keygen", "db status", "audit verify", "tokens create", "dead-letters replay"} <= names
    assert _parser().parse_args([]).handler.__name__ == "_serve"  # no command: serve


def test_the_database_setting_flag_beats_env_beats_toml(tmp_path: Path) -> None:
    """Through ``main``: ``db status`` on a missing file names the database it would open."""
    config = tmp_path / "config.toml"
    config.write_text(f'database = "{tmp_path / "toml.sqlite"}"\n')
    layers = [
        ((), {"GROUNDHOG_CONFIG": str(config)}, "toml.sqlite"),
        ((), {"GROUNDHOG_CONFIG": str(config), "GROUNDHOG_DATABASE": str(tmp_path / "env.sqlite")}, "env.sqlite"),
        ((), {"GROUNDHOG_CONFIG": str(config), "GROUNDHOG_DATABASE": ""}, "toml.sqlite"),  # empty: unset
        (
            ("--database", str(tmp_path / "flag.sqlite")),
            {"GROUNDHOG_CONFIG": str(config), "GROUNDHOG_DATABASE": str(tmp_path / "env.sqlite")},
            "flag.sqlite",
        ),
    ]
    for flags, env, chosen in layers:
        result = run_cli(*flags, "db", "status", env=env, check=False)
        assert (result.returncode, result.stderr) == (1, f"groundhog-mcp: no database at {tmp_path / chosen}\n")
    # --config beats GROUNDHOG_CONFIG; a bad value is named, exit 2.
    other = tmp_path / "other.toml"
    other.write_text("max_depth = 1\n")
    result = run_cli("--config", str(other), "db", "status", env={"GROUNDHOG_CONFIG": str(config)}, check=False)
    assert result.returncode == 2
    assert result.stderr == "groundhog-mcp: config: max_depth: Input should be greater than or equal to 2\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--database", "/tmp/x.sqlite", "--log-level", "WARNING"],
        ["--database=/tmp/x.sqlite", "--tools", "all", "--busy-timeout-ms", "-5", "--config", "c.toml"],
        ["--data", "x"],  # an abbreviation: the whole parser
        ["--log-level", "LOUD"],  # refused: the whole parser says why
        ["--busy-timeout-ms", "soon"],
        ["--port", "8000"],  # a serve option, not a top-level one
        ["-"],
        ["--database", "serve"],
        ["serve", "--transport", "http"],
        ["serv"],
        ["--version"],
    ],
)
def test_a_command_line_without_a_command_parses_as_the_whole_parser_parses_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``groundhog-mcp [OPTIONS]`` skips building the other commands' parsers, with the same result."""

    def parsed(parse: Callable[[list[str]], argparse.Namespace]) -> tuple[object, str, str]:
        try:
            result: object = vars(parse(argv))
        except SystemExit as exc:
            result = ("exit", exc.code)
        out, err = capsys.readouterr()
        return result, out, err

    assert parsed(_parse) == parsed(lambda a: _parser().parse_args(a))


def test_only_options_and_their_values_skip_the_other_commands() -> None:
    assert _serves_by_default(["--database", "serve", "--tools", "all"])
    assert not _serves_by_default(["serve"])
    assert not _serves_by_default(["--help"])
    assert not _serves_by_default(["--database", "x", "db"])
