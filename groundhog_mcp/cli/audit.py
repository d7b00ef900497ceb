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
from groundhog_mcp.models import check_namespace, dumps
from groundhog_mcp.security.audit import AuditHead
from groundhog_mcp.service.audit import verify_audit_chain
from groundhog_mcp.store import Store
from groundhog_mcp.store.base import AuditQuery
from groundhog_mcp.store.migrations import AUDIT_CHAINS_SCHEMA

__all__ = ["add_audit_commands"]


def add_audit_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``audit`` and its actions, each with its handler."""
    audit = commands.add_parser("audit", parents=[common], help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_commands.add_parser(
        "verify",
        parents=[common],
        help="check every HMAC chain (one per namespace); name the first altered, removed or reordered row",
    )
    verify.add_argument(
        "--head",
        action="append",
        default=[],
        metavar="NS@POS:HMAC|FILE",
        help="a head printed earlier by `audit head` (or a file holding its output, every chain's head): fail if "
        "its chain no longer reaches it, e.g. its tail was cut together with the writes it recorded; repeatable",
    )
    verify.add_argument("--namespace", default=None, metavar="NS", help="verify this namespace's chain only")
    verify.set_defaults(handler=functools.partial(_audit, action=_audit_verify))
    head = audit_commands.add_parser(
        "head", parents=[common], help="print each chain's last row (position, HMAC) as JSON lines, to keep elsewhere"
    )
    head.add_argument("--namespace", default=None, metavar="NS", help="this namespace's chain only")
    head.set_defaults(handler=functools.partial(_audit, action=_audit_head))
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
        if status.schema_version < AUDIT_CHAINS_SCHEMA:  # one chain per namespace
            print(
                f"groundhog-mcp: audit: {status.location} has schema version {status.schema_version}; the audit "
                f"commands need {AUDIT_CHAINS_SCHEMA} (one chain per namespace): run `groundhog-mcp db migrate` "
                "or start the server once (rows written before stay verifiable, as the legacy chain)",
                file=sys.stderr,
            )
            return 1
        return await action(args, settings, store)


async def _audit_head(args: argparse.Namespace, settings: Settings, store: Store) -> int:
    heads = await store.audit_heads(_namespace(args.namespace))
    # One line per chain: easy to append to a log or a ticket kept elsewhere.
    for head in heads:
        sys.stdout.write(json.dumps(AuditHead(head.position, head.hmac, head.namespace).to_json()) + "\n")
    if not heads:
        print("groundhog-mcp: audit head: the audit log has no row yet", file=sys.stderr)
    return 0


def _namespace(value: str | None) -> str | None:
    if value is not None and value != "":
        check_namespace(value)
    return value


def _anchors(values: list[str]) -> list[AuditHead]:
    return [anchor for value in values for anchor in _anchor(value)]


def _anchor(value: str) -> list[AuditHead]:
    """``--head``: ``NS@POS:HMAC`` / ``SEQ:HMAC``, or a file holding ``audit head``'s JSON lines
    (or such texts, one a line)."""
    if ":" in value and not Path(value).exists():
        return [AuditHead.parse(value)]
    try:
        text = Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise InitializationError(f"head: cannot read {value}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise InitializationError(f"head: {value} is not text") from None
    heads: list[AuditHead] = []
    for line in filter(None, (line.strip() for line in text.splitlines())):
        try:
            document = json.loads(line)
        except json.JSONDecodeError:
            heads.append(AuditHead.parse(line))
            continue
        if not isinstance(document, dict) or not isinstance(document.get("head"), str):
            raise InitializationError(f'head: {value} holds no "head" field (expected the output of `audit head`)')
        heads.append(AuditHead.parse(str(document["head"])))  # pyright: ignore[reportUnknownArgumentType]
    if not heads:
        raise InitializationError(f"head: {value} holds no head (expected the output of `audit head`)")
    return heads


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
    anchors = _anchors(args.head)
    namespace = _namespace(args.namespace)
    key = audit_key(settings, create=False)
    if key is None:
        print("groundhog-mcp: audit verify: the audit log is turned off (audit = false): no key", file=sys.stderr)
        return 1
    verification = await verify_audit_chain(store, key, anchors, namespace=namespace)
    for chain in verification.chains:
        problem = chain.problem
        if problem is not None:
            where = ""
            if problem.at_sequence is not None:
                # A removed row shows where the next one is; any other problem is the row itself.
                where = f", {'before ' if problem.kind == 'removed' else ''}log sequence {problem.at_sequence}"
            print(
                f"audit log FAILED in {chain.label} at row {problem.sequence}{where} ({problem.kind}): "
                f"{problem.message}; {chain.rows} row(s) before it verified"
            )
    if verification.problem is not None:
        return 1
    print(f"audit log OK: {verification.rows} row(s) verified in {len(verification.chains)} chain(s), key {key.key_id}")
    for chain in verification.chains:
        reached = [a.position for a in anchors if a.chain == chain.chain and a.position]
        anchored = f"; reaches the anchored head {max(reached)}" if reached else ""
        span = f"rows 1-{chain.rows}" if chain.rows else "no row"
        print(f"  {chain.label}: {span}, head {chain.head}{anchored}")
    return 0
