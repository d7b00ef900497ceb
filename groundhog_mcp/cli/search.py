"""``groundhog-mcp contexts find``: the ``find_contexts`` search from a shell, JSON on stdout."""

from __future__ import annotations

import argparse
import json
from typing import Any

from groundhog_mcp.app import Settings
from groundhog_mcp.cli.common import manager_session, print_json
from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import format_timestamp, parse_timestamp

__all__ = ["add_find_command"]

_MAX_PAGES = 1000  # --all: at most this many pages (100,000 contexts at --limit 100)


def add_find_command(contexts_commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``contexts find`` (docs/search.md)."""
    find = contexts_commands.add_parser(
        "find",
        parents=[common],
        help="find contexts by name prefix, conditions on their state, text and update time",
        description="Conditions are JSON Pointers into the state (/data/..., /metadata/...) or the "
        "context's metadata (/context_metadata/...). Prints one JSON object: contexts and next_cursor.",
    )
    find.add_argument("--prefix", default="", help="only names starting with this")
    find.add_argument(
        "--where",
        nargs="+",
        action="append",
        default=[],
        metavar=("PATH OP", "VALUE"),
        help="a condition: PATH OP [VALUE] (VALUE as JSON, else as a string); OP is eq ne lt le gt ge in "
        "contains exists; repeat for more (all must hold)",
    )
    find.add_argument("--text", default=None, help="words that must all occur in the string values of the data")
    find.add_argument("--updated-after", type=_timestamp, default=None, metavar="TIME", help="RFC 3339 time")
    find.add_argument("--updated-before", type=_timestamp, default=None, metavar="TIME", help="RFC 3339 time")
    find.add_argument("--sort", default="name", help="name, updated_at or a JSON Pointer (default: name)")
    find.add_argument("--order", choices=("asc", "desc"), default="asc")
    find.add_argument("--field", action="append", default=None, dest="fields", help="a JSON Pointer to return")
    find.add_argument("--cursor", default=None, help="next_cursor of the previous page")
    find.add_argument("--limit", type=int, default=20, help="results per page, 1-100 (default 20)")
    find.add_argument("--all", action="store_true", help="follow next_cursor and print every page's results")
    find.set_defaults(handler=_find)


def _timestamp(text: str) -> Any:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time like 2026-01-31T12:00:00Z; got {text[:40]!r}"
        ) from None


def _condition(words: list[str]) -> dict[str, Any]:
    if not 2 <= len(words) <= 3:
        raise StateValidationError([ValidationIssue("", "takes PATH OP [VALUE]")], field="--where")
    condition: dict[str, Any] = {"path": words[0], "op": words[1]}
    if len(words) == 3:
        try:
            condition["value"] = json.loads(words[2])
        except ValueError:
            condition["value"] = words[2]  # a bare word is a string
    return condition


async def _find(args: argparse.Namespace, settings: Settings) -> int:
    request: dict[str, Any] = {
        "prefix": args.prefix,
        "where": [_condition(words) for words in args.where],
        "text": args.text,
        "updated_after": args.updated_after,
        "updated_before": args.updated_before,
        "sort": args.sort,
        "order": args.order,
        "fields": args.fields,
        "limit": args.limit,
    }
    found: list[dict[str, Any]] = []
    cursor: str | None = args.cursor
    async with manager_session(settings, "find_contexts") as manager:
        for _ in range(_MAX_PAGES if args.all else 1):
            page = await manager.find(cursor=cursor, **request)
            for f in page.contexts:
                item: dict[str, Any] = {
                    "name": f.name,
                    "revision": f.revision,
                    "updated_at": format_timestamp(f.updated_at),
                }
                if f.fields is not None:
                    item["fields"] = f.fields
                if f.missing:
                    item["missing"] = f.missing
                found.append(item)
            cursor = page.next_cursor
            if cursor is None:
                break
    print_json({"contexts": found, "next_cursor": cursor})
    return 0
