"""``groundhog-mcp audit verify|head|export``: the tamper-evident audit log (docs/security.md "Audit log")."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from groundhog_mcp.app import Settings, audit_key
from groundhog_mcp.cli.common import is_url, private_output, unmigrated_store
from groundhog_mcp.errors import InitializationError
from groundhog_mcp.models import dumps, format_timestamp
from groundhog_mcp.security.audit import AuditHead
from groundhog_mcp.service.audit import verify_audit_chain
from groundhog_mcp.store import Store
from groundhog_mcp.store.base import AuditQuery

__all__ = ["add_audit_commands"]


def add_audit_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``audit`` and its actions, each with its handler."""
    audit = commands.add_parser("audit", parents=[common], help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_commands.add_parser(
        "verify", parents=[common], help="check the HMAC chain; name the first altered, removed or reordered row"
    )
    verify.add_argument(
        "--head",
        default=None,
        metavar="SEQ:HMAC|FILE",
        help="a head printed earlier by `audit head` (or a file holding its output): fail if the log no longer "
        "reaches it, e.g. its tail was cut together with the writes it recorded",
    )
    verify.set_defaults(handler=functools.partial(_audit, action=_audit_verify))
    audit_commands.add_parser(
        "head", parents=[common], help="print the chain's last row (sequence, HMAC) as JSON, to keep elsewhere"
    ).set_defaults(handler=functools.partial(_audit, action=_audit_head))
    audit_export = audit_commands.add_parser("export", parents=[common], help="write the audit log as JSON Lines")
    audit_export.add_argument("--output", "-o", default="-", help="new file to write, mode 0600 (default: stdout)")
    audit_export.add_argument("--force", action="store_true", help="replace an existing --output file")
    audit_export.set_defaults(handler=functools.partial(_audit, action=_audit_export))


_AUDIT_PAGE = 1000


AuditAction = Callable[[argparse.Namespace, Settings, Store], Awaitable[int]]


async def _audit(args: argparse.Namespace, settings: Settings, *, action: AuditAction) -> int:
    """The checks every ``audit`` action needs first, then ``action`` over the store as it is."""
    if not is_url(settings.database) and not Path(settings.database).expanduser().exists():
        print(f"groundhog-mcp: no database at {settings.database}", file=sys.stderr)
        return 1
    async with unmigrated_store(settings) as store:
        status = await store.status()
        if status.schema_version < 4:  # the audit log's migration
            print(
                f"groundhog-mcp: audit: {status.location} has no audit log yet (schema version "
                f"{status.schema_version}); run `groundhog-mcp db migrate` or start the server once",
                file=sys.stderr,
            )
            return 1
        return await action(args, settings, store)


async def _audit_head(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    newest = await store.read_audit(AuditQuery(newest_first=True, limit=1))
    head = AuditHead(newest[0].sequence, newest[0].hmac) if newest else AuditHead(0, "")
    stamp = format_timestamp(newest[0].timestamp) if newest else None
    # One line: easy to append to a log or a ticket kept elsewhere.
    sys.stdout.write(json.dumps({**head.to_json(), "timestamp": stamp}) + "\n")
    return 0


def _anchor(value: str | None) -> AuditHead | None:
    """``--head``: ``SEQ:HMAC``, or a file holding ``audit head``'s JSON output (or that text)."""
    if value is None:
        return None
    if ":" in value and not Path(value).exists():
        return AuditHead.parse(value)
    try:
        text = Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise InitializationError(f"head: cannot read {value}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InitializationError(f"head: {value} is not text") from None
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return AuditHead.parse(text)
    if isinstance(document, dict) and isinstance(document.get("head"), str):
        return AuditHead.parse(str(document["head"]))  # pyright: ignore[reportUnknownArgumentType]
    raise InitializationError(f'head: {value} holds no "head" field (expected the output of `audit head`)')


async def _audit_export(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    count, after = 0, 0
    with private_output(args.output, force=args.force, what="audit export") as out:
        while page := await store.read_audit(AuditQuery(after=after, limit=_AUDIT_PAGE)):
            out.writelines(dumps(record.to_json()) + "\n" for record in page)
            count += len(page)
            after = page[-1].sequence
    print(f"exported {count} audit rows", file=sys.stderr)
    return 0


async def _audit_verify(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    anchor = _anchor(args.head)
    key = audit_key(settings, create=False)
    if key is None:
        print("groundhog-mcp: audit verify: the audit log is turned off (audit = false): no key", file=sys.stderr)
        return 1
    verification = await verify_audit_chain(store, key, anchor)
    problem = verification.problem
    if problem is not None:
        print(
            f"audit log FAILED at row {problem.sequence} ({problem.kind}): {problem.message}; "
            f"{verification.rows} row(s) before it verified"
        )
        return 1
    span = f" (rows 1-{verification.rows})" if verification.rows else ""
    anchored = f"; reaches the anchored head {anchor.sequence}" if anchor is not None and anchor.sequence else ""
    print(
        f"audit log OK: {verification.rows} row(s) verified{span}, key {key.key_id}"
        + (f", head {verification.last_hmac}" if verification.last_hmac else "")
        + anchored
    )
    return 0
