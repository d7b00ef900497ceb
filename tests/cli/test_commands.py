"""Every sub-command is a handler registered with its parser: none is left to fall through."""

from __future__ import annotations

import argparse

from groundhog_mcp.cli.commands import _parser  # pyright: ignore[reportPrivateUsage]


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
