"""The parser, the dispatch to each sub-command's handler, ``serve`` and the maintenance commands."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

import structlog

from groundhog_mcp import __version__
from groundhog_mcp.app import (
    Settings,
    configure_logging,
    encryption_keyring,
    load_settings,
    open_manager,
    prometheus_text,
)
from groundhog_mcp.cli.audit import add_audit_commands
from groundhog_mcp.cli.common import (
    EXIT_BUG,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Handler,
    UsageError,
    add_access_arguments,
    is_url,
    manager_session,
    print_json,
    private_output,
    unmigrated_store,
)
from groundhog_mcp.cli.dashboard import add_dashboard_command
from groundhog_mcp.cli.search import add_find_command
from groundhog_mcp.cli.startup import resume_collection
from groundhog_mcp.cli.state import add_state_commands
from groundhog_mcp.errors import ContextError
from groundhog_mcp.models import Grant, dumps, format_timestamp
from groundhog_mcp.security.tokens import TokenStore
from groundhog_mcp.service import StateManager
from groundhog_mcp.store import maintenance, open_store
from groundhog_mcp.store.base import RotationProgress
from groundhog_mcp.store.records import import_rows

__all__ = ["main"]

log = structlog.get_logger("groundhog_mcp.cli")


class _Unparsed(Exception):
    """The serve-only parser met what it does not know: the whole parser will say what is wrong."""


class _ServeParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Unparsed(message)


# The options of a command line without a command (it serves) that take a value.
_VALUED = frozenset({"--database", "--log-level", "--config", "--busy-timeout-ms", "--tools"})


def _parse(arguments: list[str]) -> argparse.Namespace:
    """The parsed command line. ``groundhog-mcp [OPTIONS]``, as MCP clients start the server, is
    parsed without building the parsers of the thirty other commands (~8 ms of every start);
    any other line, and any that parser refuses, by the whole parser (its help, its errors)."""
    if _serves_by_default(arguments):
        try:
            return _parser(with_commands=False).parse_args(arguments)
        except _Unparsed:
            pass
    return _parser().parse_args(arguments)


def _serves_by_default(arguments: list[str]) -> bool:
    """Options and their values only: no command word, no help."""
    value = False
    for token in arguments:
        if value:
            value = False
        elif token in ("-h", "--help") or not token.startswith("-"):
            return False
        else:
            value = token in _VALUED
    return True


def _parser(*, with_commands: bool = True) -> argparse.ArgumentParser:
    """The command line's parser; ``with_commands=False``: the top level alone (it serves)."""
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

    parser = _top_parser(argparse.ArgumentParser if with_commands else _ServeParser, common)
    parser.add_argument("--version", action="version", version=f"groundhog-mcp {__version__}")
    parser.set_defaults(handler=_serve)  # no command: serve
    if not with_commands:
        parser.set_defaults(command=None)
        _add_tools_argument(parser)
        return parser
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", parents=[common], help="run the MCP server (default)")
    serve.set_defaults(handler=_serve)
    _add_http_arguments(serve)
    for serving in (parser, serve):  # `groundhog-mcp --tools all` serves too
        _add_tools_argument(serving)
    _add_token_commands(commands, common)
    add_state_commands(commands, common)
    add_dashboard_command(commands, common)

    contexts = commands.add_parser("contexts", parents=[common], help="list or show contexts")
    contexts_commands = contexts.add_subparsers(dest="contexts_command", metavar="ACTION", required=True)
    listing = contexts_commands.add_parser("list", parents=[common], help="list contexts")
    listing.add_argument("--prefix", default="", help="only names starting with this")
    listing.set_defaults(handler=_contexts_list)
    show = contexts_commands.add_parser("show", parents=[common], help="show one context and its state")
    show.add_argument("name")
    show.set_defaults(handler=_contexts_show)
    add_find_command(contexts_commands, common)

    export = commands.add_parser("export", parents=[common], help="write every context with history as JSON Lines")
    export.add_argument("--output", "-o", default="-", help="new file to write, mode 0600 (default: stdout)")
    export.add_argument("--force", action="store_true", help="replace an existing --output file")
    export.add_argument(
        "--plaintext",
        action="store_true",
        help="with encryption at rest on: write the decrypted contents anyway (refused without this flag)",
    )
    export.set_defaults(handler=_export_command)

    importing = commands.add_parser("import", parents=[common], help="load an export into an empty database")
    importing.add_argument("file", help="JSON Lines file written by export ('-' for stdin)")
    importing.set_defaults(handler=_import_command)

    backup = commands.add_parser("backup", parents=[common], help="online, consistent copy of the database")
    backup.add_argument("destination", help="new file to write (mode 0600)")
    backup.add_argument("--force", action="store_true", help="replace an existing destination file")
    backup.set_defaults(handler=_backup)

    letters = commands.add_parser("dead-letters", parents=[common], help="events whose handler kept failing")
    letters_commands = letters.add_subparsers(dest="letters_command", metavar="ACTION", required=True)
    letters_list = letters_commands.add_parser("list", parents=[common], help="list open dead letters")
    letters_list.add_argument("--context", default=None, help="only this context's")
    letters_list.add_argument("--all", action="store_true", help="include replayed ones")
    letters_list.set_defaults(handler=_dead_letters_list)
    replay = letters_commands.add_parser("replay", parents=[common], help="handle a dead-lettered event again")
    replay.add_argument("id", type=int)
    replay.set_defaults(handler=_dead_letters_replay)

    _add_encryption_commands(commands, common)

    commands.add_parser(
        "metrics", parents=[common], help="print metrics in the Prometheus text format (needs the [metrics] extra)"
    ).set_defaults(handler=_metrics)

    add_audit_commands(commands, common)
    migrate = commands.add_parser(
        "migrate-context",
        parents=[common],
        help="rewrite contexts' states in their current state format version (docs/guide.md: State format migrations)",
    )
    migrate.add_argument("name", nargs="?", default=None, help="the context to migrate (or use --prefix)")
    migrate.add_argument("--prefix", default=None, help="every context whose name starts with this ('' = all)")
    migrate.add_argument("--to", dest="to_version", default=None, help="target format version (default: current)")
    migrate.add_argument("--dry-run", action="store_true", help="check and print the diff per context; write nothing")
    migrate.set_defaults(handler=_migrate_context)

    db = commands.add_parser("db", parents=[common], help="database schema")
    db_commands = db.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    status = db_commands.add_parser("status", parents=[common], help="schema version, pending migrations, size")
    status.set_defaults(handler=_db_status)
    db_migrate = db_commands.add_parser("migrate", parents=[common], help="apply pending schema migrations")
    db_migrate.set_defaults(handler=_db_migrate)
    sweep = db_commands.add_parser(
        "sweep", parents=[common], help="record the removal of expired contexts now (reads leave them out anyway)"
    )
    sweep.add_argument("--limit", type=int, default=10_000, help="remove at most this many (default 10000)")
    sweep.set_defaults(handler=_db_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every error a user can make ends with one line on stderr and an exit
    status from the table above, never a traceback."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _detach_stdout()
        print("groundhog-mcp: the output was closed before it was complete (broken pipe)", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except UsageError as exc:
        print(f"groundhog-mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ContextError as exc:
        print(f"groundhog-mcp: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"groundhog-mcp: {_os_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        # Not a user's error: say so in one line; the traceback is for --log-level DEBUG.
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            traceback.print_exc(file=sys.stderr)
        print(
            f"groundhog-mcp: internal error ({type(exc).__name__}); this is a bug, please report it "
            "(--log-level DEBUG shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_BUG


def _os_error(exc: OSError) -> str:
    """``strerror: file`` without Python's ``[Errno N]`` decoration."""
    where = f": {exc.filename}" if exc.filename else ""
    return f"{exc.strerror or type(exc).__name__}{where}"


def _detach_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file descriptor (tests capturing it)
        pass


def _main(arguments: list[str]) -> int:
    if any(a.startswith("--encryption") for a in arguments):
        print(
            "groundhog-mcp: encryption keys are never taken from the command line (any user can read a "
            "process's arguments); set GROUNDHOG_ENCRYPTION_KEY, or encryption_key_file in the environment "
            "(GROUNDHOG_ENCRYPTION_KEY_FILE) or the config file",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        args = _parse(arguments)
    except SystemExit as exc:  # argparse: --help, --version (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    keygen: Callable[[argparse.Namespace], int] | None = getattr(args, "keygen", None)
    if keygen is not None:  # needs no settings: a broken config file does not stop it
        return keygen(args)
    flags = {
        "database": getattr(args, "database", None),
        "log_level": getattr(args, "log_level", None),
        "busy_timeout_ms": getattr(args, "busy_timeout_ms", None),
        "tools": getattr(args, "tools", None),
    }
    flags.update(_http_flags(args))
    try:
        settings = load_settings(flags, config_file=getattr(args, "config", None))
    except ContextError as exc:
        print(f"groundhog-mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    handler: Handler = args.handler
    if handler is not _serve:
        resume_collection()  # serving resumes it once its server is built
    return asyncio.run(handler(args, settings))


async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    """Open the database first (so a bad file fails before the protocol starts), then serve stdio.

    SIGTERM/SIGINT stop it gracefully: no new requests, writes already handed to the store
    commit, the file is closed, then the process exits.
    """
    # Only serving needs the MCP SDK and the HTTP stack: the maintenance commands never load them.
    from groundhog_mcp.app import create_server, serve_http
    from groundhog_mcp.server.stdio import run_stdio

    if settings.transport != "stdio":
        resume_collection()
        await serve_http(settings)
        return 0
    manager = open_manager(settings)
    await manager.start()
    log.info("serving", transport="stdio", database=(await manager.store.status()).location, version=__version__)
    server = create_server(settings, manager)
    resume_collection()  # ready (cli/startup.py)
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


async def _db_status(args: argparse.Namespace, settings: Settings) -> int:
    # Opening a missing SQLite file would create it; a server URL has nothing to check here.
    if not is_url(settings.database) and not Path(settings.database).expanduser().exists():
        print(f"groundhog-mcp: no database at {settings.database}", file=sys.stderr)
        return EXIT_FAILED
    async with unmigrated_store(settings) as store:
        status = await store.status()
        print_json(status.__dict__)
    return 0


async def _db_migrate(args: argparse.Namespace, settings: Settings) -> int:
    async with unmigrated_store(settings) as store:
        applied = await store.migrate()
        status = await store.status()
    print_json({"applied": applied, "schema_version": status.schema_version})
    return 0


async def _db_sweep(args: argparse.Namespace, settings: Settings) -> int:
    removed: list[str] = []
    async with manager_session(settings) as manager:
        while len(removed) < args.limit:
            batch = await manager.store.sweep(limit=min(500, args.limit - len(removed)))
            removed += [f"{c.namespace}/{c.name}" for c in batch]
            if not batch:
                break
    print_json({"expired": len(removed), "contexts": removed[:100]})
    return 0


async def _contexts_list(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings) as manager:
        cursor: str | None = None
        while True:
            page = await manager.list(prefix=args.prefix, cursor=cursor, limit=manager.limits.max_page)
            for ctx in page.contexts:
                updated = format_timestamp(ctx.updated_at)
                print(f"{ctx.name}\trevision {ctx.revision}\t{ctx.state_size} bytes\t{updated}")
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return 0


async def _contexts_show(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings) as manager:
        ctx = await manager.get(args.name)
    print_json(
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
    return 0


async def _export_command(args: argparse.Namespace, settings: Settings) -> int:
    encrypted = encryption_keyring(settings) is not None
    if encrypted and not args.plaintext:
        print(
            "groundhog-mcp: export: encryption at rest is on and an export is plaintext JSON; pass --plaintext "
            "to write the decrypted contents anyway (keep that file as safe as the key), or use `backup` for "
            "an encrypted copy (PostgreSQL: pg_dump). Nothing was written.",
            file=sys.stderr,
        )
        return EXIT_FAILED
    async with manager_session(settings) as manager:
        if encrypted:
            where = "stdout" if args.output == "-" else args.output
            print(f"export: writing the DECRYPTED (plaintext) contents of the database to {where}", file=sys.stderr)
        await _export(manager, args.output, force=args.force)
    return 0


async def _import_command(args: argparse.Namespace, settings: Settings) -> int:
    return await _import(args.file, settings)


async def _dead_letters_list(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings) as manager:
        letters = await manager.list_dead_letters(
            name=args.context, limit=manager.limits.max_page, include_replayed=args.all
        )
    for letter in letters:
        replayed = f"replayed at revision {letter.replay_revision}" if letter.replayed_at else "open"
        print(f"#{letter.id}\t{letter.name}\t{letter.type}\t{letter.attempts} attempts\t{replayed}")
        print(f"\tlast error: {letter.last_error}")
    return 0


async def _dead_letters_replay(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings) as manager:
        result = await manager.replay_dead_letter(args.id)
    print(f"dead letter #{args.id} applied to {result.name} as revision {result.revision}")
    return 0


async def _metrics(args: argparse.Namespace, settings: Settings) -> int:
    async with manager_session(settings) as manager:
        sys.stdout.write(await prometheus_text(manager))
    return 0


async def _backup(args: argparse.Namespace, settings: Settings) -> int:
    destination = Path(args.destination)
    async with manager_session(settings) as manager:
        await maintenance(manager.store).backup(destination, force=args.force)
    print(f"backup written to {destination}", file=sys.stderr)
    return 0


async def _migrate_context(args: argparse.Namespace, settings: Settings) -> int:
    """JSON Lines on stdout (one ``context`` record each, then a ``summary``); progress on stderr."""
    async with manager_session(settings) as manager:
        await _migrate(manager, args)
    return 0


async def _migrate(manager: StateManager, args: argparse.Namespace) -> None:

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


async def _export(manager: StateManager, output: str, *, force: bool) -> None:
    count = 0
    with private_output(output, force=force, what="export") as out:
        async for record in maintenance(manager.store).export_records():
            out.write(dumps(record) + "\n")
            count += 1
    print(f"exported {count} records", file=sys.stderr)


_NOTHING = "nothing was imported"


async def _import(file: str, settings: Settings) -> int:
    where = "stdin" if file == "-" else file
    records: list[Any] = []
    lines: list[int] = []
    try:
        source: BinaryIO = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115
    except OSError as exc:
        print(f"groundhog-mcp: import: cannot read {file}: {exc.strerror or exc}; {_NOTHING}", file=sys.stderr)
        return EXIT_FAILED
    try:
        # Bytes a line at a time, decoded here: a bad line is named exactly.
        for number, raw in enumerate(source, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                print(f"groundhog-mcp: import: {where} line {number}: not UTF-8 text; {_NOTHING}", file=sys.stderr)
                return EXIT_FAILED
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    print(f"groundhog-mcp: import: {where} line {number}: not JSON ({exc.msg})", file=sys.stderr)
                    return EXIT_FAILED
                lines.append(number)
    except OSError as exc:
        print(f"groundhog-mcp: import: cannot read {where}: {exc.strerror or exc}; {_NOTHING}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if file != "-":
            source.close()
    # Every record is checked before the database is opened: a refused file creates nothing.
    await asyncio.to_thread(
        functools.partial(import_rows, records, identifier=str, timestamp=format_timestamp, lines=lines)
    )
    async with manager_session(settings) as manager:
        imported = await maintenance(manager.store).import_records(records, actor=manager.principal.name)
        location = (await manager.store.status()).location  # a URL without its password
    print(f"imported {imported} contexts into {location}", file=sys.stderr)
    return 0


# -- HTTP transports and bearer tokens (docs/http.md) -----------------------------------------


def _top_parser(kind: type[argparse.ArgumentParser], common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    return kind(
        prog="groundhog-mcp",
        description="Durable, shared, versioned context state for LLM agents, as an MCP server.",
        parents=[common],
    )


def _add_tools_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tools",
        default=argparse.SUPPRESS,
        help="tools to list: default (the agent workflow), all, or comma-separated names (env GROUNDHOG_TOOLS)",
    )


def _add_http_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--transport",
        choices=["stdio", "http", "sse"],
        default=argparse.SUPPRESS,
        help="stdio (default), http (streamable HTTP at /mcp) or sse (legacy HTTP+SSE at /sse)",
    )
    serve.add_argument("--host", default=argparse.SUPPRESS, help="HTTP bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=argparse.SUPPRESS, help="HTTP port (default 8765; 0: any free)")
    add_access_arguments(
        serve, insecure_help="serve HTTP without bearer tokens, even on a non-loopback address (logged as a warning)"
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
    create.set_defaults(handler=_tokens_create)
    listing = actions.add_parser("list", parents=[shared], help="list tokens (never the tokens themselves)")
    listing.set_defaults(handler=_tokens_list)
    revoke = actions.add_parser("revoke", parents=[shared], help="revoke a token at once")
    revoke.add_argument("id", help="the token's id, as `tokens list` shows it")
    revoke.set_defaults(handler=_tokens_revoke)


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
        "dashboard_port",
    )
    return {name: getattr(args, name, None) for name in names}


# The token file is small and local: its handlers read and write it directly.
async def _tokens_create(args: argparse.Namespace, settings: Settings) -> int:
    store = TokenStore(settings.token_file)
    try:
        grants = tuple(Grant.parse(text) for text in args.grants) if args.grants else None
    except ValueError as exc:
        print(f"groundhog-mcp: tokens create: {exc}", file=sys.stderr)
        return EXIT_FAILED
    record, token = store.create(args.principal, args.namespace or settings.namespace, grants)
    print(token)
    print(
        f"created token {record.id} for principal {record.principal!r} in namespace {record.namespace!r} "
        f"with grants {' '.join(map(str, record.effective_grants))} "
        f"({store.path}); it is shown only this once: keep it now. Send it as 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return 0


async def _tokens_list(args: argparse.Namespace, settings: Settings) -> int:
    for record in TokenStore(settings.token_file).list():
        status = f"revoked {format_timestamp(record.revoked_at)}" if record.revoked_at else "active"
        if record.revoked and not record.revoked_at:
            status = "revoked"
        created = format_timestamp(record.created_at)
        grants = " ".join(map(str, record.effective_grants))
        print(f"{record.id}\t{record.principal}\t{record.namespace}\t{grants}\tcreated {created}\t{status}")
    return 0


async def _tokens_revoke(args: argparse.Namespace, settings: Settings) -> int:
    record = TokenStore(settings.token_file).revoke(args.id)
    print(f"token {record.id} of {record.principal!r} is revoked", file=sys.stderr)
    return 0


# -- encryption at rest (docs/security.md "Encryption at rest") -----------------------------------------


def _add_encryption_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    keygen = commands.add_parser(
        "keygen", help="print a new random encryption key (base64url, 32 bytes) for GROUNDHOG_ENCRYPTION_KEY"
    )
    keygen.add_argument(
        "--output", "-o", default="-", help="write it to this new file (mode 0600) instead; for encryption_key_file"
    )
    keygen.add_argument("--force", action="store_true", help="replace an existing --output file")
    keygen.set_defaults(keygen=_keygen)  # run before the settings are loaded: it needs none
    rotate = commands.add_parser(
        "rotate-key",
        parents=[common],
        help="re-encrypt every record with the current key (GROUNDHOG_ENCRYPTION_KEY), reading with the old ones "
        "(GROUNDHOG_ENCRYPTION_OLD_KEYS); also encrypts a plaintext database. Resumable.",
    )
    rotate.add_argument("--batch-size", type=int, default=500, help="records per transaction (default 500)")
    rotate.set_defaults(handler=_rotate_key)
    rotate.add_argument(
        "--decrypt",
        action="store_true",
        help="write every record as plaintext instead (all configured keys only read); turns encryption off",
    )


def _keygen(args: argparse.Namespace) -> int:
    from groundhog_mcp.security.crypto import generate_key, parse_key

    key = generate_key()
    key_id = parse_key(key, source="the new key").key_id
    if args.output != "-":
        with private_output(args.output, force=args.force, what="keygen") as out:
            out.write(key + "\n")
        print(
            f"new encryption key, key id {key_id}, written to {args.output} (mode 0600). Set "
            "GROUNDHOG_ENCRYPTION_KEY_FILE (or encryption_key_file) to it. Lose it and the data is lost.",
            file=sys.stderr,
        )
        return 0
    print(key)
    print(
        f"new encryption key, key id {key_id}. Keep it in a file only you can read (`keygen -o FILE` writes one "
        "with mode 0600) and set GROUNDHOG_ENCRYPTION_KEY_FILE to it, or set GROUNDHOG_ENCRYPTION_KEY. Lose it "
        "and the data is lost.",
        file=sys.stderr,
    )
    return 0


async def _rotate_key(args: argparse.Namespace, settings: Settings) -> int:
    if args.batch_size < 1:
        print("groundhog-mcp: rotate-key: --batch-size must be at least 1", file=sys.stderr)
        return EXIT_USAGE
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
