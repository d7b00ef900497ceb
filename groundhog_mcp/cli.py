"""The ``groundhog-mcp`` command: ``serve`` (the default, stdio) and maintenance subcommands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncGenerator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

import structlog

from groundhog_mcp import __version__
from groundhog_mcp.app import (
    Settings,
    audit_key,
    configure_logging,
    create_server,
    encryption_keyring,
    load_settings,
    open_manager,
    prometheus_text,
    serve_http,
)
from groundhog_mcp.errors import ContextError
from groundhog_mcp.models import Grant, dumps, format_timestamp
from groundhog_mcp.security.audit import ChainVerifier
from groundhog_mcp.security.crypto import generate_key, parse_key
from groundhog_mcp.security.tokens import TokenStore
from groundhog_mcp.server.stdio import run_stdio
from groundhog_mcp.service import StateManager
from groundhog_mcp.store import MaintenanceStore, Store, maintenance, open_store
from groundhog_mcp.store.base import AuditQuery, RotationProgress

__all__ = ["main"]

log = structlog.get_logger("groundhog_mcp.cli")


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        default=argparse.SUPPRESS,
        help="SQLite file, or postgresql://user@host/db?schema=NAME (default: SQLite in the user data dir; "
        "env GROUNDHOG_DATABASE)",
    )
    common.add_argument(
        "--log-level",
        default=argparse.SUPPRESS,
        choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        help="stderr log level (env GROUNDHOG_LOG_LEVEL)",
    )
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file (env GROUNDHOG_CONFIG)")
    common.add_argument("--busy-timeout-ms", type=int, default=argparse.SUPPRESS, help="SQLite busy timeout")

    parser = argparse.ArgumentParser(
        prog="groundhog-mcp",
        description="Durable, shared, versioned context state for LLM agents, as an MCP server.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"groundhog-mcp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the MCP server (default)")
    _add_http_arguments(serve)
    _add_token_commands(commands, common)

    contexts = commands.add_parser("contexts", parents=[common], help="list or show contexts")
    contexts_commands = contexts.add_subparsers(dest="contexts_command", metavar="ACTION", required=True)
    listing = contexts_commands.add_parser("list", parents=[common], help="list contexts")
    listing.add_argument("--prefix", default="", help="only names starting with this")
    show = contexts_commands.add_parser("show", parents=[common], help="show one context and its state")
    show.add_argument("name")

    export = commands.add_parser("export", parents=[common], help="write every context with history as JSON Lines")
    export.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    export.add_argument(
        "--plaintext",
        action="store_true",
        help="with encryption at rest on: write the decrypted contents anyway (refused without this flag)",
    )

    importing = commands.add_parser("import", parents=[common], help="load an export into an empty database")
    importing.add_argument("file", help="JSON Lines file written by export ('-' for stdin)")

    backup = commands.add_parser("backup", parents=[common], help="online, consistent copy of the database")
    backup.add_argument("destination", help="new file to write")

    letters = commands.add_parser("dead-letters", parents=[common], help="events whose handler kept failing")
    letters_commands = letters.add_subparsers(dest="letters_command", metavar="ACTION", required=True)
    letters_list = letters_commands.add_parser("list", parents=[common], help="list open dead letters")
    letters_list.add_argument("--context", default=None, help="only this context's")
    letters_list.add_argument("--all", action="store_true", help="include replayed ones")
    replay = letters_commands.add_parser("replay", parents=[common], help="handle a dead-lettered event again")
    replay.add_argument("id", type=int)

    _add_encryption_commands(commands, common)

    commands.add_parser(
        "metrics", parents=[common], help="print metrics in the Prometheus text format (needs the [metrics] extra)"
    )

    audit = commands.add_parser("audit", parents=[common], help="the tamper-evident audit log")
    audit_commands = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    audit_commands.add_parser(
        "verify", parents=[common], help="check the HMAC chain; name the first altered, removed or reordered row"
    )
    audit_export = audit_commands.add_parser("export", parents=[common], help="write the audit log as JSON Lines")
    audit_export.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    migrate = commands.add_parser(
        "migrate-context",
        parents=[common],
        help="rewrite contexts' states in their current state format version (see README: State format migrations)",
    )
    migrate.add_argument("name", nargs="?", default=None, help="the context to migrate (or use --prefix)")
    migrate.add_argument("--prefix", default=None, help="every context whose name starts with this ('' = all)")
    migrate.add_argument("--to", dest="to_version", default=None, help="target format version (default: current)")
    migrate.add_argument("--dry-run", action="store_true", help="check and print the diff per context; write nothing")

    db = commands.add_parser("db", parents=[common], help="database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    db_commands.add_parser("status", parents=[common], help="schema version, pending migrations, size")
    db_commands.add_parser("migrate", parents=[common], help="apply pending schema migrations")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if any(a.startswith("--encryption") for a in arguments):
        print(
            "groundhog-mcp: encryption keys are never taken from the command line (any user can read a "
            "process's arguments); set GROUNDHOG_ENCRYPTION_KEY, or encryption_key_file in the environment "
            "(GROUNDHOG_ENCRYPTION_KEY_FILE) or the config file",
            file=sys.stderr,
        )
        return 2
    args = _parser().parse_args(arguments)
    if args.command == "keygen":
        return _keygen()
    flags = {
        "database": getattr(args, "database", None),
        "log_level": getattr(args, "log_level", None),
        "busy_timeout_ms": getattr(args, "busy_timeout_ms", None),
    }
    flags.update(_http_flags(args))
    try:
        settings = load_settings(flags, config_file=getattr(args, "config", None))
    except ContextError as exc:
        print(f"groundhog-mcp: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    command = args.command or "serve"
    try:
        if command == "tokens":
            return _tokens(args, settings)
        if command == "export" and not args.plaintext and encryption_keyring(settings) is not None:
            print(
                "groundhog-mcp: export: encryption at rest is on and an export is plaintext JSON; pass --plaintext "
                "to write the decrypted contents anyway (keep that file as safe as the key), or use `backup` for "
                "an encrypted copy (PostgreSQL: pg_dump). Nothing was written.",
                file=sys.stderr,
            )
            return 1
        if command == "rotate-key":
            return asyncio.run(_rotate_key(args, settings))
        if command == "serve":
            return asyncio.run(_serve(settings))
        return asyncio.run(_run_command(command, args, settings))
    except ContextError as exc:
        print(f"groundhog-mcp: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


async def _serve(settings: Settings) -> int:
    """Open the database first (so a bad file fails before the protocol starts), then serve stdio.

    SIGTERM/SIGINT stop it gracefully: no new requests, writes already handed to the store
    commit, the file is closed, then the process exits.
    """
    if settings.transport != "stdio":
        await serve_http(settings)
        return 0
    manager = open_manager(settings)
    await manager.start()
    log.info("serving", transport="stdio", database=(await manager.store.status()).location, version=__version__)
    server = create_server(settings, manager)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    serving = asyncio.create_task(run_stdio(server), name="stdio")
    stopping = asyncio.create_task(stop.wait(), name="signals")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not serving.done():
            serving.cancel()
            # The SDK reads stdin on a worker thread that a cancellation cannot interrupt.
            await asyncio.wait({serving}, timeout=1.0)
        await manager.close()
        log.info("stopped", signal=stop.is_set())
    if stop.is_set():
        sys.stderr.flush()
        os._exit(0)  # the stdin reader thread would otherwise keep the process alive
    serving.result()
    return 0


@asynccontextmanager
async def _manager(settings: Settings) -> AsyncGenerator[StateManager]:
    manager = open_manager(settings)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


@asynccontextmanager
async def _unmigrated_store(settings: Settings) -> AsyncGenerator[MaintenanceStore]:
    """The store alone, as it is (no migration, no change feed): for ``db status`` and ``db migrate``."""
    store = open_store(
        settings.database,
        busy_timeout_ms=settings.busy_timeout_ms,
        synchronous=settings.synchronous,
        auto_migrate=False,
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _is_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


def _print_json(value: Any, out: TextIO = sys.stdout) -> None:
    out.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


async def _run_command(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "db" and args.db_command == "status":
        # Opening a missing SQLite file would create it; a server URL has nothing to check here.
        if not _is_url(settings.database) and not Path(settings.database).expanduser().exists():
            print(f"groundhog-mcp: no database at {settings.database}", file=sys.stderr)
            return 1
        async with _unmigrated_store(settings) as store:
            status = await store.status()
            _print_json(status.__dict__)
        return 0
    if command == "db" and args.db_command == "migrate":
        async with _unmigrated_store(settings) as store:
            applied = await store.migrate()
            status = await store.status()
        _print_json({"applied": applied, "schema_version": status.schema_version})
        return 0
    if command == "import":
        return await _import(args.file, settings)
    if command == "audit":
        return await _audit(args, settings)
    async with _manager(settings) as manager:
        if command == "contexts" and args.contexts_command == "list":
            cursor: str | None = None
            while True:
                page = await manager.list(prefix=args.prefix, cursor=cursor, limit=manager.limits.max_page)
                for ctx in page.contexts:
                    updated = format_timestamp(ctx.updated_at)
                    print(f"{ctx.name}\trevision {ctx.revision}\t{ctx.state_size} bytes\t{updated}")
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
        elif command == "contexts" and args.contexts_command == "show":
            ctx = await manager.get(args.name)
            _print_json(
                {
                    "id": str(ctx.id),
                    "name": ctx.name,
                    "namespace": ctx.namespace,
                    "version": ctx.version,
                    "revision": ctx.revision,
                    "metadata": ctx.metadata,
                    "settings": ctx.settings,
                    "json_schema": ctx.schema,
                    "state": ctx.state.to_json(),
                }
            )
        elif command == "export":
            if args.plaintext and encryption_keyring(settings) is not None:
                where = "stdout" if args.output == "-" else args.output
                print(f"export: writing the DECRYPTED (plaintext) contents of the database to {where}", file=sys.stderr)
            await _export(manager, args.output)
        elif command == "dead-letters" and args.letters_command == "list":
            letters = await manager.list_dead_letters(
                name=args.context, limit=manager.limits.max_page, include_replayed=args.all
            )
            for letter in letters:
                replayed = f"replayed at revision {letter.replay_revision}" if letter.replayed_at else "open"
                print(f"#{letter.id}\t{letter.name}\t{letter.type}\t{letter.attempts} attempts\t{replayed}")
                print(f"\tlast error: {letter.last_error}")
        elif command == "dead-letters" and args.letters_command == "replay":
            result = await manager.replay_dead_letter(args.id)
            print(f"dead letter #{args.id} applied to {result.name} as revision {result.revision}")
        elif command == "metrics":
            sys.stdout.write(await prometheus_text(manager))
        elif command == "migrate-context":
            await _migrate_context(manager, args)
        elif command == "backup":
            destination = Path(args.destination)
            await maintenance(manager.store).backup(destination)
            print(f"backup written to {destination}", file=sys.stderr)
    return 0


async def _migrate_context(manager: StateManager, args: argparse.Namespace) -> None:
    """JSON Lines on stdout (one ``context`` record each, then a ``summary``); progress on stderr."""

    async def progress(done: int, total: int | None, message: str) -> None:
        print(f"migrate-context: {message}", file=sys.stderr, flush=True)

    report = await manager.migrate(
        args.name, prefix=args.prefix, to_version=args.to_version, dry_run=args.dry_run, progress=progress
    )
    for migration in report.contexts:
        sys.stdout.write(dumps({"type": "context", **migration.__dict__}) + "\n")
    summary = {k: v for k, v in report.__dict__.items() if k != "contexts"}
    sys.stdout.write(dumps({"type": "summary", **summary}) + "\n")
    verb = "would migrate" if report.dry_run else "migrated"
    print(
        f"migrate-context: done, {verb} {report.migrated} of {report.matched} contexts "
        f"({report.unchanged} already current, {report.without_format} without a state format)",
        file=sys.stderr,
    )


async def _export(manager: StateManager, output: str) -> None:
    out: TextIO = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    count = 0
    try:
        async for record in maintenance(manager.store).export_records():
            out.write(dumps(record) + "\n")
            count += 1
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} records", file=sys.stderr)


async def _import(file: str, settings: Settings) -> int:
    source: TextIO = sys.stdin if file == "-" else open(file, encoding="utf-8")  # noqa: SIM115
    records: list[Any] = []
    try:
        for number, line in enumerate(source, start=1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    print(f"groundhog-mcp: import: {file} line {number}: not JSON ({exc.msg})", file=sys.stderr)
                    return 1
    finally:
        if source is not sys.stdin:
            source.close()
    async with _manager(settings) as manager:
        imported = await maintenance(manager.store).import_records(records, actor=manager.principal.name)
        location = (await manager.store.status()).location  # a URL without its password
    print(f"imported {imported} contexts into {location}", file=sys.stderr)
    return 0


# -- the audit log (README "Audit log") ---------------------------------------------------------

_AUDIT_PAGE = 1000


async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    if not _is_url(settings.database) and not Path(settings.database).expanduser().exists():
        print(f"groundhog-mcp: no database at {settings.database}", file=sys.stderr)
        return 1
    async with _unmigrated_store(settings) as store:
        status = await store.status()
        if status.schema_version < 4:  # the audit log's migration
            print(
                f"groundhog-mcp: audit: {status.location} has no audit log yet (schema version "
                f"{status.schema_version}); run `groundhog-mcp db migrate` or start the server once",
                file=sys.stderr,
            )
            return 1
        if args.audit_command == "export":
            return await _audit_export(store, args.output)
        return await _audit_verify(store, settings)


async def _audit_export(store: Store, output: str) -> int:
    out: TextIO = sys.stdout if output == "-" else open(output, "w", encoding="utf-8")  # noqa: SIM115
    count, after = 0, 0
    try:
        while page := await store.read_audit(AuditQuery(after=after, limit=_AUDIT_PAGE)):
            out.writelines(dumps(record.to_json()) + "\n" for record in page)
            count += len(page)
            after = page[-1].sequence
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"exported {count} audit rows", file=sys.stderr)
    return 0


async def _audit_verify(store: Store, settings: Settings) -> int:
    key = audit_key(settings, create=False)
    if key is None:
        print("groundhog-mcp: audit verify: the audit log is turned off (audit = false): no key", file=sys.stderr)
        return 1
    verifier = ChainVerifier(key)
    after, last_hmac, done = 0, "", False
    while not done and (page := await store.read_audit(AuditQuery(after=after, limit=_AUDIT_PAGE))):
        for record in page:
            if verifier.problem is None:
                if verifier.feed(record.content(), record.hmac):
                    last_hmac = record.hmac
                    continue
                if not verifier.diagnosing:
                    done = True
                    break
                verifier.start_diagnosis(record.hmac)
            elif verifier.diagnose(record.content(), record.hmac):
                done = True
                break
        after = page[-1].sequence
    if verifier.problem is None:
        verifier.check_tail(await store.last_sequence())
    problem = verifier.problem
    if problem is not None:
        print(
            f"audit log FAILED at row {problem.sequence} ({problem.kind}): {problem.message}; "
            f"{verifier.rows} row(s) before it verified"
        )
        return 1
    span = f" (rows 1-{verifier.rows})" if verifier.rows else ""
    print(
        f"audit log OK: {verifier.rows} row(s) verified{span}, key {key.key_id}"
        + (f", head {last_hmac}" if last_hmac else "")
    )
    return 0


# -- HTTP transports and bearer tokens (docs/http.md) -----------------------------------------


def _add_http_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--transport",
        choices=["stdio", "http", "sse"],
        default=argparse.SUPPRESS,
        help="stdio (default), http (streamable HTTP at /mcp) or sse (legacy HTTP+SSE at /sse)",
    )
    serve.add_argument("--host", default=argparse.SUPPRESS, help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=argparse.SUPPRESS, help="HTTP port (default 8765; 0: any free)")
    serve.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        default=argparse.SUPPRESS,
        metavar="HOST[:PORT]",
        help="also accept this Host header (repeatable; e.g. the name a proxy forwards)",
    )
    serve.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        default=argparse.SUPPRESS,
        metavar="ORIGIN",
        help="also accept this Origin header (repeatable; e.g. https://app.example.com)",
    )
    serve.add_argument("--token-file", default=argparse.SUPPRESS, help="bearer token file (env GROUNDHOG_TOKEN_FILE)")
    serve.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=argparse.SUPPRESS,
        help="serve HTTP without bearer tokens, even on a non-loopback address (logged as a warning)",
    )
    serve.add_argument(
        "--metrics-public",
        action="store_true",
        default=argparse.SUPPRESS,
        help="serve GET /metrics without a token (default: a token with the admin grant is needed)",
    )
    for flag, kind, text in (
        ("--header-timeout", float, "seconds for a request's headers to arrive (default 10)"),
        ("--body-timeout", float, "seconds for a request's body to arrive (default 30)"),
        ("--max-connections", int, "HTTP connections served at once; beyond that 503 (default 512)"),
        ("--credential-recheck", float, "seconds between checks that an open stream's token is valid (default 5)"),
    ):
        serve.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=text)


def _add_token_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    shared = argparse.ArgumentParser(add_help=False, parents=[common])
    shared.add_argument("--token-file", default=argparse.SUPPRESS, help="token file (env GROUNDHOG_TOKEN_FILE)")
    tokens = commands.add_parser("tokens", parents=[shared], help="bearer tokens for the HTTP transports")
    actions = tokens.add_subparsers(dest="tokens_command", metavar="ACTION", required=True)
    create = actions.add_parser("create", parents=[shared], help="create a token; it is printed once")
    create.add_argument("--principal", required=True, help="who the token acts as (shown in logs and history)")
    create.add_argument("--namespace", default=None, help="the namespace it may use (default: the configured one)")
    create.add_argument(
        "--grant",
        action="append",
        dest="grants",
        default=None,
        metavar="RIGHT:PREFIX",
        help="read|write|admin on context names starting with PREFIX (repeatable; e.g. read:notes. or write:); "
        "default: admin on every context of the namespace",
    )
    actions.add_parser("list", parents=[shared], help="list tokens (never the tokens themselves)")
    revoke = actions.add_parser("revoke", parents=[shared], help="revoke a token at once")
    revoke.add_argument("id", help="the token's id, as `tokens list` shows it")


def _http_flags(args: argparse.Namespace) -> dict[str, Any]:
    names = (
        "transport",
        "host",
        "port",
        "allowed_hosts",
        "allowed_origins",
        "token_file",
        "insecure_no_auth",
        "metrics_public",
        "header_timeout",
        "body_timeout",
        "max_connections",
        "credential_recheck",
    )
    return {name: getattr(args, name, None) for name in names}


def _tokens(args: argparse.Namespace, settings: Settings) -> int:
    store = TokenStore(settings.token_file)
    if args.tokens_command == "create":
        try:
            grants = tuple(Grant.parse(text) for text in args.grants) if args.grants else None
        except ValueError as exc:
            print(f"groundhog-mcp: tokens create: {exc}", file=sys.stderr)
            return 1
        record, token = store.create(args.principal, args.namespace or settings.namespace, grants)
        print(token)
        print(
            f"created token {record.id} for principal {record.principal!r} in namespace {record.namespace!r} "
            f"with grants {' '.join(map(str, record.effective_grants))} "
            f"({store.path}); it is shown only this once: keep it now. Send it as 'Authorization: Bearer <token>'.",
            file=sys.stderr,
        )
    elif args.tokens_command == "list":
        for record in store.list():
            status = f"revoked {format_timestamp(record.revoked_at)}" if record.revoked_at else "active"
            if record.revoked and not record.revoked_at:
                status = "revoked"
            created = format_timestamp(record.created_at)
            grants = " ".join(map(str, record.effective_grants))
            print(f"{record.id}\t{record.principal}\t{record.namespace}\t{grants}\tcreated {created}\t{status}")
    elif args.tokens_command == "revoke":
        record = store.revoke(args.id)
        print(f"token {record.id} of {record.principal!r} is revoked", file=sys.stderr)
    return 0


# -- encryption at rest (README "Encryption at rest") -----------------------------------------


def _add_encryption_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    commands.add_parser(
        "keygen", help="print a new random encryption key (base64url, 32 bytes) for GROUNDHOG_ENCRYPTION_KEY"
    )
    rotate = commands.add_parser(
        "rotate-key",
        parents=[common],
        help="re-encrypt every record with the current key (GROUNDHOG_ENCRYPTION_KEY), reading with the old ones "
        "(GROUNDHOG_ENCRYPTION_OLD_KEYS); also encrypts a plaintext database. Resumable.",
    )
    rotate.add_argument("--batch-size", type=int, default=500, help="records per transaction (default 500)")
    rotate.add_argument(
        "--decrypt",
        action="store_true",
        help="write every record as plaintext instead (all configured keys only read); turns encryption off",
    )


def _keygen() -> int:
    key = generate_key()
    print(key)
    key_id = parse_key(key, source="the new key").key_id
    print(
        f"new encryption key, key id {key_id}. Keep it in a file only you can read (chmod 600) and set "
        "GROUNDHOG_ENCRYPTION_KEY_FILE to it, or set GROUNDHOG_ENCRYPTION_KEY. Lose it and the data is lost.",
        file=sys.stderr,
    )
    return 0


async def _rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch_size < 1:
        print("groundhog-mcp: rotate-key: --batch-size must be at least 1", file=sys.stderr)
        return 2
    keyring = encryption_keyring(settings, decrypting=args.decrypt)
    if keyring is None:
        print(
            "groundhog-mcp: rotate-key: no encryption key is configured; set GROUNDHOG_ENCRYPTION_KEY (the new "
            "key) and GROUNDHOG_ENCRYPTION_OLD_KEYS (the keys the database was written with)",
            file=sys.stderr,
        )
        return 1
    store = open_store(
        settings.database, busy_timeout_ms=settings.busy_timeout_ms, synchronous=settings.synchronous, cipher=keyring
    )
    target = f"key id {keyring.key_id}" if keyring.key_id else "plaintext"

    def progress(step: RotationProgress) -> None:
        print(
            f"rotate-key: {step.column}: {step.done}/{step.pending} rewritten to {target} (batch {step.batches})",
            file=sys.stderr,
            flush=True,
        )

    await store.open()
    try:
        print(f"rotate-key: rewriting every record to {target}, {args.batch_size} per batch", file=sys.stderr)
        await store.rotate_keys(batch_size=args.batch_size, progress=progress)
    finally:
        await store.close()
    old = sorted(keyring.readable_key_ids - {keyring.key_id} if keyring.key_id else keyring.readable_key_ids)
    done = f"every record is sealed with key id {keyring.key_id}" if keyring.key_id else "every record is plaintext"
    forget = f"; key ids {', '.join(old)} are no longer needed: remove them from the configuration" if old else ""
    print(f"rotate-key: done: {done}{forget}", file=sys.stderr)
    return 0
