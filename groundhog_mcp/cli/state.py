"""``groundhog-mcp state get|set|patch|history|diff|rollback``: a person's reads and writes.

Each command is one call of the ``StateManager`` method the matching tool calls (``read_upcast``,
``update``, ``history``, ``diff``, ``rollback``), as the configured principal (``principal``,
``grants``), so the checks, the errors and the audit rows are the tools'. Results are JSON on
stdout with the tools' field names; a failure is one line on stderr and an exit status from the
README's table: 1 when the command ran and was refused (not found, conflict, invalid state, bad
JSON in a file or on stdin), 2 when the command line is wrong (bad JSON in an argument).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, cast

from groundhog_mcp.app import Settings
from groundhog_mcp.cli.common import Handler, InputError, UsageError, manager_session, print_json
from groundhog_mcp.models import HistoryEntry, JSONObject, format_timestamp, json_type
from groundhog_mcp.service import WriteResult
from groundhog_mcp.service.reading import read_part

__all__ = ["add_state_commands"]


def add_state_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``state`` and its actions, each with its handler."""
    state = commands.add_parser(
        "state", parents=[common], help="read and write contexts' states (the tools' calls, as the local principal)"
    )
    actions = state.add_subparsers(dest="state_command", metavar="ACTION", required=True)

    get = actions.add_parser("get", parents=[common], help="print a context's state and its revision")
    get.add_argument("name")
    get.add_argument("--revision", type=_revision, default=None, help="a past revision (default: the current one)")
    get.add_argument("--path", default=None, help="JSON Pointer into the data (e.g. /tasks/0): print only that part")
    get.add_argument(
        "--field",
        action="append",
        default=None,
        dest="fields",
        help="instead of --path: a JSON Pointer (repeat it): print a sparse copy of the data holding only these",
    )
    get.add_argument("--offset", type=_integer, default=None, help="with --path to an array: the first item to print")
    get.add_argument("--limit", type=_integer, default=None, help="with --path to an array: how many items")
    get.set_defaults(handler=_as_tool("get_state", _get))

    expected = argparse.ArgumentParser(add_help=False)
    expected.add_argument(
        "--expected-revision",
        type=_expected_revision,
        default=None,
        metavar="N",
        help="write only if the context is at revision N (0: only if it does not exist yet); "
        "otherwise exit 1 naming the current revision",
    )

    put = actions.add_parser(
        "set", parents=[common, expected], help="replace a context's data (a JSON object) as a new revision"
    )
    put.add_argument("name")
    source = put.add_mutually_exclusive_group()
    source.add_argument("data", nargs="?", default=None, help="the new data as JSON (default: read from stdin)")
    source.add_argument("--file", default=None, metavar="F", help="read the new data from this JSON file")
    put.set_defaults(handler=_as_tool("update_state", _set))

    patch = actions.add_parser("patch", parents=[common, expected], help="change part of a context's data")
    patch.add_argument("name")
    kind = patch.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--merge", metavar="JSON", help="an RFC 7396 merge patch (an object; null deletes a key); - reads stdin"
    )
    kind.add_argument(
        "--json-patch", metavar="JSON", help="RFC 6902 operations (an array), applied atomically; - reads stdin"
    )
    patch.set_defaults(handler=_as_tool("update_state", _patch))

    history = actions.add_parser("history", parents=[common], help="a context's revisions, newest first")
    history.add_argument("name")
    history.add_argument("--limit", type=int, default=20, help="how many revisions (default 20)")
    history.add_argument("--before", type=_revision, default=None, help="only revisions older than this one")
    history.set_defaults(handler=_as_tool("get_history", _history))

    diff = actions.add_parser("diff", parents=[common], help="the RFC 6902 patch between two revisions")
    diff.add_argument("name")
    diff.add_argument("from_revision", type=_revision, metavar="FROM")
    diff.add_argument("to_revision", type=_revision, nargs="?", default=None, metavar="TO", help="default: current")
    diff.set_defaults(handler=_as_tool("diff_states", _diff))

    rollback = actions.add_parser(
        "rollback", parents=[common, expected], help="restore an earlier revision's data and metadata as a new revision"
    )
    rollback.add_argument("name")
    rollback.add_argument("revision", type=_revision, metavar="REVISION")
    rollback.set_defaults(handler=_as_tool("rollback_state", _rollback))


def _as_tool(tool: str, handler: Handler) -> Handler:
    """``handler`` served as the tool ``tool``: a denial's audit row names the tool, as when a
    client calls it (committed writes are recorded by their change op either way)."""

    async def as_tool(args: argparse.Namespace, settings: Settings) -> int:
        args.operation = tool
        return await handler(args, settings)

    return as_tool


def _revision(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"a revision is 1 or more; got {value}")
    return value


def _expected_revision(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (create only) or a revision; got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number; got {text[:40]!r}") from None


async def _get(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings, args.operation) as manager:
        context, at, state, _ = await manager.read_upcast(args.name, args.revision)
    out: dict[str, Any] = {"name": context.name, "revision": at, "current_revision": context.revision}
    if args.path is not None or args.fields is not None or args.offset is not None or args.limit is not None:
        part = read_part(state.data, path=args.path, fields=args.fields, offset=args.offset, limit=args.limit)
        if args.path is not None:
            out["path"] = args.path
        out["value"] = part.value
        out.update(
            {
                k: v
                for k, v in (("length", part.length), ("offset", part.offset), ("missing", part.missing))
                if v is not None
            }
        )
    else:
        out["state"] = {
            "data": state.data,
            "metadata": state.metadata,
            "timestamp": format_timestamp(state.timestamp),
            "version": state.version,
        }
    print_json(out)
    return 0


async def _set(args: argparse.Namespace, settings: Settings) -> int:
    data, wrong = _load(args.data, args.file, "data")
    if not isinstance(data, dict):
        raise wrong(f"data: must be a JSON object; got a JSON {json_type(data)}")
    async with manager_session(settings, args.operation) as manager:
        result = await manager.update(args.name, data=data, expected_revision=args.expected_revision)
    _print_write(result)
    return 0


async def _patch(args: argparse.Namespace, settings: Settings) -> int:
    field, text = ("merge", args.merge) if args.merge is not None else ("json-patch", args.json_patch)
    value, wrong = _load(None if text == "-" else text, None, field)
    merge: JSONObject | None = None
    operations: list[JSONObject] | None = None
    if field == "merge":
        if not isinstance(value, dict):
            raise wrong(f"merge: an RFC 7396 merge patch is a JSON object; got a JSON {json_type(value)}")
        merge = cast("JSONObject", value)
    else:
        if not isinstance(value, list) or not all(isinstance(op, dict) for op in cast("list[Any]", value)):
            raise wrong("json-patch: an RFC 6902 patch is a JSON array of operation objects")
        operations = cast("list[JSONObject]", value)
    async with manager_session(settings, args.operation) as manager:
        result = await manager.update(
            args.name, merge_patch_=merge, patch=operations, expected_revision=args.expected_revision
        )
    _print_write(result)
    return 0


async def _history(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings, args.operation) as manager:
        context = await manager.get(args.name)
        entries = await manager.history(args.name, before=args.before, limit=args.limit)
    last = entries[-1].revision if entries else None
    print_json(
        {
            "name": context.name,
            "current_revision": context.revision,
            "revisions": [_revision_out(entry) for entry in entries],
            "next_before": last if last is not None and len(entries) == args.limit and last > 1 else None,
        }
    )
    return 0


async def _diff(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings, args.operation) as manager:
        context = await manager.get(args.name)
        patch = await manager.diff(args.name, args.from_revision, args.to_revision)
    to_revision = args.to_revision or context.revision
    print_json({"name": context.name, "from_revision": args.from_revision, "to_revision": to_revision, "patch": patch})
    return 0


async def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings, args.operation) as manager:
        result = await manager.rollback(args.name, args.revision, expected_revision=args.expected_revision)
    _print_write(result)
    return 0


def _print_write(result: WriteResult) -> None:
    """The tools' write result, with the whole diff (a terminal has no answer-size budget)."""
    print_json(
        {
            "name": result.context.name,
            "revision": result.context.revision,
            "previous_revision": result.previous_revision,
            "sequence": result.change.sequence,
            "timestamp": format_timestamp(result.change.timestamp),
            "op": result.change.op,
            "patch": result.change.patch or [],
        }
    )


def _revision_out(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "revision": entry.revision,
        "sequence": entry.sequence,
        "op": entry.op,
        "actor": entry.actor,
        "timestamp": format_timestamp(entry.timestamp),
        "size": entry.size,
    }


def _load(text: str | None, file: str | None, field: str) -> tuple[Any, type[Exception]]:
    """The JSON value of ``text`` (an argument), else of ``file``, else of stdin, and the error a
    wrong value is reported with: one in an argument is a usage error (exit 2), one in a file or
    on stdin fails the command (exit 1), as a bad line does for ``import``."""
    if text is not None:
        return _parse_argument(text, field), UsageError
    return _parse_input(file or "-", field), InputError


def _parse_argument(text: str, field: str) -> Any:
    """JSON given on the command line: a mistake there is a usage error (exit 2)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{field}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def _parse_input(file: str, field: str) -> Any:
    """JSON from a file or stdin (``-``): a bad one fails the command (exit 1), as ``import`` does."""
    where = "stdin" if file == "-" else file
    if file == "-" and sys.stdin.isatty():  # nothing piped in: say so rather than wait for input
        raise UsageError(f"{field}: give it as an argument, with --file F, or on stdin (nothing is piped in)")
    try:
        raw = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
    except OSError as exc:
        raise InputError(f"{field}: cannot read {where}: {exc.strerror or exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{field}: {where} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{field}: {where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
