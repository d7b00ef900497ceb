"""The tamper-evident audit log: one signed row per committed write and per denied request, in the
write's own transaction, on both backends; ``audit verify`` names the first tampered row; the
``audit_log`` tool pages through the caller's namespace."""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
from collections.abc import AsyncGenerator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl

from groundhog_mcp import StateManager
from groundhog_mcp.app import Settings, audit_key, create_server, prometheus_text
from groundhog_mcp.errors import AccessDeniedError, ConflictError, EventHandlingError, NotFoundError
from groundhog_mcp.models import ContextState, Grant, Principal, utcnow
from groundhog_mcp.security.audit import AuditKey, load_or_create_key_file
from groundhog_mcp.service import Event
from groundhog_mcp.service.registry import Context
from groundhog_mcp.store.base import AuditQuery, AuditRecord, Retention, Store
from tests.cli_in_process import run_cli
from tests.conformance.conftest import Backend
from tests.server.conftest import call, fail

pytestmark = pytest.mark.anyio

KEY_TEXT = "audit-test-key-0123456789abcdef0123456789abcdef"
KEY = AuditKey(KEY_TEXT)
MARKER = "SECRET-MARKER-7f3a9c"
# Every test opens a store on ``backend`` before anything else: a PostgreSQL one may come migrated
# already (tests/conformance/migrated_schemas.py).
BACKEND_OPENED_FIRST = True


def audited_store(backend: Backend, **kwargs: Any) -> Store:
    return backend.store(audit_signer=KEY, **kwargs)


@pytest.fixture
async def audited(backend: Backend) -> AsyncGenerator[StateManager]:
    # History pruned at every write: retention must never touch the audit log.
    manager = StateManager(
        audited_store(backend, retention=Retention(keep_revisions=3, prune_every=1)), event_max_attempts=1
    )
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


async def all_rows(store: Store) -> list[AuditRecord]:
    return await store.read_audit(AuditQuery(limit=1000))


class Appender:
    """A Python event handler: appends the payload's ``item`` to ``/items``."""

    async def validate_event(self, event: Event) -> None:
        return None

    async def handle_event(self, event: Event, context: Context) -> None:
        state = await context.get_state()
        items = [*state.data.get("items", []), event.payload["item"]]
        await context.update_state(ContextState(data={**state.data, "items": items}, metadata=state.metadata))


class Failing:
    async def validate_event(self, event: Event) -> None:
        return None

    async def handle_event(self, event: Event, context: Context) -> None:
        raise RuntimeError("handler down")


# -- store level, both backends ---------------------------------------------------------------


async def test_one_row_per_write_and_denial_exactly(audited: StateManager) -> None:
    m = audited
    marker_state = ContextState(data={"secret": MARKER}, metadata={"note": MARKER})
    await m.register("notes", state=marker_state)
    await m.update("notes", data={"v": 1, "secret": MARKER})
    await m.update("notes", merge_patch_={"w": MARKER})
    await m.update("notes", patch=[{"op": "add", "path": "/p", "value": MARKER}])
    with pytest.raises(ConflictError):
        await m.update("notes", data={"lost": MARKER}, expected_revision=1)  # changes nothing: no row
    await m.rollback("notes", 2)
    await m.register("other", state=ContextState(data={"items": []}))
    await m.merge([{"context": "notes"}, {"context": "other"}], target="other")
    await m.emit_event("other", Event("add", {"item": MARKER}), handlers={"add": Appender()})
    with pytest.raises(EventHandlingError):
        await m.emit_event("other", Event("add", {"item": MARKER}), handlers={"add": Failing()})
    letter = (await m.list_dead_letters())[0]
    n = letter.id
    await m.replay_dead_letter(n, handlers={"add": Appender()})
    denied = AccessDeniedError("grant: principal 'local' lacks 'admin' on 'notes'")
    await m.audit_denied("unregister", "notes", denied)
    await m.audit_denied("unregister", "notes", denied)  # the same error is recorded once
    await m.unregister("notes", purge=True)
    await m.unregister("other")

    rows = await all_rows(m.store)
    changes = await m.store.changes_after(0, limit=100)
    assert [(r.operation, r.context, r.revision, r.outcome, r.detail) for r in rows] == [
        ("register", "notes", 1, "ok", None),
        ("update", "notes", 2, "ok", "data"),
        ("update", "notes", 3, "ok", "merge_patch"),
        ("update", "notes", 4, "ok", "patch"),
        ("rollback", "notes", 5, "ok", "restores revision 2"),
        ("register", "other", 1, "ok", None),
        ("merge", "other", 2, "ok", "strategy ordered"),
        ("event", "other", 3, "ok", "event type 'add'"),
        ("dead_letter", "other", None, "ok", f"event type 'add'; event 'add' failed 1 time(s): dead letter #{n}"),
        ("event", "other", 4, "ok", f"event type 'add', replay of dead letter #{n}"),
        ("unregister", "notes", None, "denied", "grant: principal 'local' lacks 'admin' on 'notes'"),
        ("unregister", "notes", 6, "ok", "purge"),
        ("unregister", "other", 5, "ok", None),
    ]
    assert [r.sequence for r in rows] == list(range(1, 14))
    assert {r.principal for r in rows} == {"local"} and {r.namespace for r in rows} == {"default"}
    assert {r.key_id for r in rows} == {KEY.key_id}
    # Each write's row names its change; pruning and purge left every audit row in place.
    written = [r for r in rows if r.change_sequence is not None]
    assert [r.change_sequence for r in written] == list(range(1, 12))
    assert {c.sequence for c in changes} <= {r.change_sequence for r in written}
    assert all(r.context_id is not None for r in rows if r.outcome == "ok")


async def test_audit_rows_hold_no_state_contents(audited: StateManager, backend: Backend) -> None:
    await audited.register("box", state=ContextState(data={"k": MARKER}, metadata={"m": MARKER}))
    await audited.update("box", merge_patch_={"k2": MARKER}, metadata={"m2": MARKER})
    await audited.emit_event("box", Event("add", {"item": MARKER}, idempotency_key="k1"), handlers={"add": Appender()})
    with pytest.raises(EventHandlingError):
        await audited.emit_event("box", Event("add", {"item": MARKER}), handlers={"add": Failing()})
    dump = await backend.sql("SELECT * FROM audit_log ORDER BY sequence")
    assert len(dump) == 4
    assert MARKER not in repr(dump)
    assert (await audited.get("box")).state.data["k"] == MARKER  # the marker is really stored


async def test_triggers_reject_update_and_delete(audited: StateManager, backend: Backend) -> None:
    await audited.register("t")
    await audited.update("t", data={"a": 1})
    before = await backend.sql("SELECT * FROM audit_log ORDER BY sequence")
    for statement in (
        "UPDATE audit_log SET principal = 'mallory' WHERE sequence = 1",
        "DELETE FROM audit_log WHERE sequence = 2",
        "DELETE FROM audit_log",
    ):
        with pytest.raises(Exception, match="append-only") as raised:
            await backend.sql(statement)
        assert "is not allowed" in str(raised.value)
    if backend.kind == "postgres":
        with pytest.raises(Exception, match="append-only: TRUNCATE"):
            await backend.sql("TRUNCATE audit_log")
    assert await backend.sql("SELECT * FROM audit_log ORDER BY sequence") == before


async def test_a_failed_write_leaves_no_row_and_a_store_without_signer_writes_none(backend: Backend) -> None:
    manager = StateManager(backend.store())  # no signer: audit off
    await manager.start()
    try:
        await manager.register("plain")
        assert await all_rows(manager.store) == []
    finally:
        await manager.close()
    manager = StateManager(audited_store(backend))
    await manager.start()
    try:
        with pytest.raises(ConflictError):
            await manager.register("plain")
        with pytest.raises(ConflictError):
            await manager.update("plain", data={}, expected_revision=7)
        assert await all_rows(manager.store) == []
        await manager.update("plain", data={"x": 1})
        (row,) = await all_rows(manager.store)
        assert (row.sequence, row.operation, row.revision) == (1, "update", 2)
    finally:
        await manager.close()


async def test_concurrent_writers_keep_one_chain(backend: Backend) -> None:
    """Two store instances (two processes' worth) append to one chain without a fork."""
    first, second = StateManager(audited_store(backend)), StateManager(audited_store(backend))
    await first.start()
    await second.start()
    try:
        await first.register("shared")

        async def writes(manager: StateManager, who: str) -> None:
            for i in range(15):
                await manager.update("shared", merge_patch_={who: i})

        await asyncio.gather(writes(first, "a"), writes(second, "b"))
        rows = await all_rows(first.store)
        assert [r.sequence for r in rows] == list(range(1, 32))
        assert [r.revision for r in rows] == list(range(1, 32))
    finally:
        await first.close()
        await second.close()
    assert (await verify(backend)).returncode == 0


async def test_import_writes_one_row_per_namespace_and_never_imports_rows(make_backend: Any) -> None:
    source_backend: Backend = await make_backend("sqlite")
    target_backend: Backend = await make_backend("postgres")
    source = StateManager(audited_store(source_backend))
    await source.start()
    try:
        await source.register("a", state=ContextState(data={"x": MARKER}))
        await source.with_principal(Principal("bob", "team")).register("b")
        records = [r async for r in source.store.export_records()]
    finally:
        await source.close()
    assert not [r for r in records if r["type"] not in ("header", "context", "revision", "name_revision", "change")]
    with pytest.raises(Exception, match="unknown record type 'audit'"):
        forged = {"type": "audit", "sequence": 1, "principal": "mallory"}
        await _import(target_backend, [*records, forged])
    assert await _import(target_backend, records) == 2
    store = audited_store(target_backend)
    await store.open()
    try:
        rows = await all_rows(store)
        last = await store.last_sequence()
    finally:
        await store.close()
    assert [(r.principal, r.namespace, r.operation, r.detail, r.change_sequence) for r in rows] == [
        ("importer", "default", "import", "1 context(s) imported", last),
        ("importer", "team", "import", "1 context(s) imported", last),
    ]
    assert (await verify(target_backend)).returncode == 0


async def _import(backend: Backend, records: list[dict[str, Any]]) -> int:
    store = audited_store(backend)
    await store.open()
    try:
        return await store.import_records(records, actor="importer")
    finally:
        await store.close()


# -- audit verify / export (the CLI) -------------------------------------------------------------


async def cli(backend: Backend, *args: str, key: str = KEY_TEXT) -> subprocess.CompletedProcess[str]:
    """``groundhog-mcp --database … ARGS`` with the audit key in its environment, in the test
    process (tests/cli_in_process.py), on a thread of its own."""
    return await asyncio.to_thread(
        run_cli, "--database", backend.database, *args, env={"GROUNDHOG_AUDIT_KEY": key}, check=False
    )


async def verify(backend: Backend, key: str = KEY_TEXT) -> subprocess.CompletedProcess[str]:
    return await cli(backend, "audit", "verify", key=key)


async def seeded(backend: Backend, writes: int = 6, namespace: str = "default") -> None:
    manager = StateManager(audited_store(backend))
    await manager.start()
    try:
        writer = manager.with_principal(Principal("local", namespace))
        await writer.register("c")
        for i in range(writes - 1):
            await writer.update("c", data={"i": i})
    finally:
        await manager.close()


# Two chains of 6 rows: "default" holds log sequences 1-6, "team" 7-12 (each its positions 1-6).
CHAINS = pytest.mark.parametrize("chain", ["default", "team"])


async def two_chains(backend: Backend) -> None:
    await seeded(backend)
    await seeded(backend, namespace="team")


def logged(chain: str, position: int) -> int:
    """The log sequence of row ``position`` of ``chain`` after :func:`two_chains`."""
    return position + (6 if chain == "team" else 0)


async def drop_triggers(backend: Backend) -> None:
    if backend.kind == "sqlite":
        await backend.sql("DROP TRIGGER audit_log_no_update")
        await backend.sql("DROP TRIGGER audit_log_no_delete")
    else:
        await backend.sql("DROP TRIGGER audit_log_no_update_delete ON audit_log")


_CONTENT_COLUMNS = (
    "timestamp, principal, namespace, operation, outcome, context, context_id, revision, change_sequence, "
    "request_id, detail, key_id, hmac"
)


async def swap(backend: Backend, chain: str, a: int, b: int) -> None:
    """Swap every column but the sequence and the position of rows ``a`` and ``b`` of ``chain``."""
    rows = {
        r[0]: r[1:]
        for r in await backend.sql(f"SELECT position, {_CONTENT_COLUMNS} FROM audit_log WHERE namespace = %s", (chain,))
    }
    columns = [c.strip() for c in _CONTENT_COLUMNS.split(",")]
    assignments = ", ".join(f"{c} = %s" for c in columns)
    where = "WHERE namespace = %s AND position = %s"
    await backend.sql(f"UPDATE audit_log SET {assignments} {where}", (*rows[b], chain, a))
    await backend.sql(f"UPDATE audit_log SET {assignments} {where}", (*rows[a], chain, b))


async def test_verify_ok_and_export(backend: Backend, tmp_path: Path) -> None:
    await seeded(backend)
    result = await verify(backend)
    assert result.returncode == 0, result.stdout + result.stderr
    (head,) = await backend.sql("SELECT hmac FROM audit_log WHERE sequence = 6")
    assert result.stdout.splitlines() == [
        f"audit log OK: 6 row(s) verified in 1 chain(s), key {KEY.key_id}",
        f"  chain 'default': rows 1-6, head default@6:{head[0]}",
    ]
    out = tmp_path / "audit.jsonl"
    exported = await cli(backend, "audit", "export", "--output", str(out))
    assert exported.returncode == 0, exported.stderr
    assert "exported 6 audit rows" in exported.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["sequence"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert lines[0]["operation"] == "register" and lines[-1]["revision"] == 6
    assert set(lines[0]) == {
        "sequence", "timestamp", "principal", "namespace", "operation", "outcome", "context", "context_id",
        "revision", "change_sequence", "request_id", "detail", "key_id", "hmac", "position",
    }  # fmt: skip
    assert [line["position"] for line in lines] == [1, 2, 3, 4, 5, 6]
    # The exported rows verify on their own, with the key (an archive can be checked later).
    previous = ""
    for line in lines:
        content = {k: v for k, v in line.items() if k != "hmac"}
        assert KEY.sign(content, previous) == line["hmac"]
        previous = line["hmac"]


async def test_denials_are_one_row_per_principal_per_minute_and_counted_exactly(backend: Backend) -> None:
    manager = StateManager(audited_store(backend))
    await manager.start()
    try:
        await manager.register("secret", state=ContextState(data={"k": MARKER}))
        mallory = manager.with_principal(Principal("mallory", "default", grants=(Grant("shared.", "read"),)))
        eve = manager.with_principal(Principal("eve", "default", grants=(Grant("shared.", "read"),)))
        for i in range(1000):
            with pytest.raises(NotFoundError):
                await mallory.get("secret" if i % 2 else f"absent{i}")
        with pytest.raises(AccessDeniedError):
            await eve.update("secret", data={})
        server, _ = await manager.collect_metrics()
        assert server["denied_requests"] == {"eve": {"write": 1}, "mallory": {"read": 1000}}
        # Other principals' names and counts are for an admin of the whole namespace only.
        assert (await eve.collect_metrics())[0]["denied_requests"] == {"eve": {"write": 1}}
        exposition = await prometheus_text(manager)
        assert 'groundhog_denied_requests_total{operation="read",principal="mallory"} 1000.0' in exposition
        assert 'groundhog_denied_requests_total{operation="write",principal="eve"} 1.0' in exposition
        during = await all_rows(manager.store)
    finally:
        await manager.close()  # a clean shutdown writes the counts still pending
    assert [(r.principal, r.operation, r.context) for r in during] == [
        ("local", "register", "secret"),
        ("mallory", "read", "absent0"),
        ("eve", "write", "secret"),
    ]
    reopened = audited_store(backend)
    await reopened.open()
    try:
        rows = await all_rows(reopened)
    finally:
        await reopened.close()
    mallory_rows = [r for r in rows if r.principal == "mallory"]
    assert [(r.operation, r.context, r.outcome) for r in mallory_rows] == [
        ("read", "absent0", "denied"),
        ("denied_requests", None, "denied"),
    ]
    summary = mallory_rows[1].detail
    assert summary is not None and summary.startswith("999 denied requests not itemized since ")
    assert summary.endswith("(read 999)") and len(summary) <= 500
    assert MARKER not in repr(rows)
    result = await verify(backend)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"audit log OK: {len(rows)} row(s) verified"), result.stdout


@CHAINS
async def test_verify_names_an_altered_row(backend: Backend, chain: str) -> None:
    await two_chains(backend)
    await drop_triggers(backend)
    await backend.sql("UPDATE audit_log SET principal = 'someone-else' WHERE namespace = %s AND position = 4", (chain,))
    result = await verify(backend)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"audit log FAILED in chain {chain!r} at row 4, log sequence {logged(chain, 4)} (altered): row 4 was altered "
        "(its HMAC does not match its content); 3 row(s) before it verified"
    )  # the other chain is intact: no line of its own


@CHAINS
async def test_verify_names_a_removed_row(backend: Backend, chain: str) -> None:
    await two_chains(backend)
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE namespace = %s AND position = 3", (chain,))
    result = await verify(backend)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"audit log FAILED in chain {chain!r} at row 3, before log sequence {logged(chain, 4)} (removed): row 3 is "
        "missing (the log goes from row 2 to row 4); 2 row(s) before it verified"
    )


@CHAINS
async def test_verify_names_the_first_row_removed(backend: Backend, chain: str) -> None:
    await two_chains(backend)
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE namespace = %s AND position <= 2", (chain,))
    result = await verify(backend)
    assert result.returncode == 1
    assert f"FAILED in chain {chain!r} at row 1, before log sequence {logged(chain, 3)} (removed): rows 1-2 are " in (
        result.stdout
    )


@CHAINS
async def test_verify_notices_a_removed_tail(backend: Backend, chain: str) -> None:
    await two_chains(backend)
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE namespace = %s AND position >= 5", (chain,))
    result = await verify(backend)
    assert result.returncode == 1
    # The chain's namespace committed changes its rows no longer reach.
    assert result.stdout.strip() == (
        f"audit log FAILED in chain {chain!r} at row 5 (missing tail): the log ends at row 4, but changes up to "
        f"sequence {logged(chain, 6)} were committed and the last audited one is {logged(chain, 4)}: rows were "
        "removed from the end of the log (or audit was turned off for those writes); 4 row(s) before it verified"
    )


@CHAINS
@pytest.mark.parametrize(("a", "b"), [(2, 5), (3, 4)])
async def test_verify_names_reordered_rows(backend: Backend, chain: str, a: int, b: int) -> None:
    await two_chains(backend)
    await drop_triggers(backend)
    await swap(backend, chain, a, b)
    result = await verify(backend)
    assert result.returncode == 1
    assert result.stdout.strip() == (
        f"audit log FAILED in chain {chain!r} at row {a}, log sequence {logged(chain, a)} (reordered): row {a} holds "
        f"the content of row {b}: rows were reordered; {a - 1} row(s) before it verified"
    )


async def test_rows_moved_to_another_chain_are_named(backend: Backend) -> None:
    """A row given another namespace leaves a gap in its chain and a stranger in the other."""
    await two_chains(backend)
    await drop_triggers(backend)
    await backend.sql(
        "UPDATE audit_log SET namespace = 'team', position = 7 WHERE namespace = 'default' AND position = 6"
    )
    result = await verify(backend)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "audit log FAILED in chain 'default' at row 6 (missing tail): the log ends at row 5, but changes up to "
        "sequence 6 were committed and the last audited one is 5: rows were removed from the end of the log (or "
        "audit was turned off for those writes); 5 row(s) before it verified",
        "audit log FAILED in chain 'team' at row 7, log sequence 6 (altered): row 7 was altered (its HMAC does not "
        "match its content); 6 row(s) before it verified",
    ]


async def test_verify_with_another_key_says_so(backend: Backend) -> None:
    await seeded(backend, writes=2)
    other = "another-key-0123456789abcdef0123456789abcdef"
    result = await verify(backend, key=other)
    assert result.returncode == 1
    assert f"row 1 was signed with audit key '{KEY.key_id}', not with the configured key" in result.stdout


# -- key handling -------------------------------------------------------------------------------


def test_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "db" / "g.sqlite"))
    first = audit_key(settings)
    path = tmp_path / "db" / "g.sqlite.audit-key"
    # Created at the first signed row, not at start: a server that refuses to start leaves no file.
    assert first is not None and not path.exists()
    with pytest.raises(Exception, match=r"audit: no audit key: .*g\.sqlite\.audit-key does not exist"):
        audit_key(settings, create=False)
    assert first.key_id and path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text().strip()) == 64
    again = audit_key(settings)
    assert again is not None and again.key_id == first.key_id
    assert audit_key(Settings(database=settings.database, audit=False)) is None
    from_env = audit_key(Settings(database=settings.database, audit_key=KEY_TEXT))  # pyright: ignore[reportArgumentType]
    assert from_env is not None and from_env.key_id == KEY.key_id
    assert KEY_TEXT not in repr(from_env)
    key, created = load_or_create_key_file(path)
    assert not created and key.key_id == first.key_id


def test_a_short_key_is_refused() -> None:
    with pytest.raises(Exception, match="audit_key: must be at least 32 characters; got 5"):
        AuditKey("short")


# -- the audit_log tool and denials over MCP ----------------------------------------------------


@pytest.fixture
async def served(db_path: Path) -> AsyncGenerator[tuple[StateManager, Client]]:
    settings = Settings(database=str(db_path), audit_key=KEY_TEXT, tools="all")  # pyright: ignore[reportArgumentType]
    from groundhog_mcp.app import open_manager

    manager = open_manager(settings)
    await manager.start()
    try:
        async with Client(create_server(settings, manager)) as client:
            yield manager, client
    finally:
        await manager.close()


async def test_audit_log_tool_pages_and_filters(served: tuple[StateManager, Client]) -> None:
    manager, client = served
    started = utcnow()
    await call(client, "register_context", name="proj.alpha")
    await call(client, "register_context", name="proj.beta")
    await call(client, "register_context", name="misc")
    await call(client, "update_state", name="proj.alpha", data={"x": 1})
    await call(client, "update_state", name="proj.alpha", merge_patch={"y": 2})
    await call(client, "rollback_state", name="proj.alpha", revision=1)
    # Another namespace's writes never show.
    await manager.with_principal(Principal("bob", "elsewhere")).register("proj.hidden")

    first = await call(client, "audit_log", limit=2)
    assert first["namespace"] == "default"
    assert [(e["operation"], e["context"], e["revision"]) for e in first["entries"]] == [
        ("rollback", "proj.alpha", 4),
        ("update", "proj.alpha", 3),
    ]
    assert all(e["request_id"] and e["principal"] == "local" for e in first["entries"])
    pages = [first]
    while pages[-1]["next_cursor"]:
        pages.append(await call(client, "audit_log", limit=2, cursor=pages[-1]["next_cursor"]))
    entries = [e for page in pages for e in page["entries"]]
    assert [e["sequence"] for e in entries] == [6, 5, 4, 3, 2, 1]
    assert len(pages) == 3 and pages[-1]["next_cursor"] is None

    oldest = await call(client, "audit_log", newest_first=False, limit=100)
    assert [e["sequence"] for e in oldest["entries"]] == [1, 2, 3, 4, 5, 6]
    only = await call(client, "audit_log", context="proj.alpha", newest_first=False)
    assert [e["operation"] for e in only["entries"]] == ["register", "update", "update", "rollback"]
    prefixed = await call(client, "audit_log", prefix="proj.", operation="register", newest_first=False)
    assert [e["context"] for e in prefixed["entries"]] == ["proj.alpha", "proj.beta"]
    assert (await call(client, "audit_log", principal="bob"))["entries"] == []
    timed = await call(
        client,
        "audit_log",
        since=(started - timedelta(seconds=1)).isoformat(),
        until=(utcnow() + timedelta(seconds=1)).isoformat(),
    )
    assert len(timed["entries"]) == 6
    assert (await call(client, "audit_log", since=(utcnow() + timedelta(hours=1)).isoformat()))["entries"] == []
    text = await fail(client, "audit_log", cursor="bogus")
    assert "cursor: not a cursor this server issued" in text


async def test_request_ids_are_the_mcp_request_ids(served: tuple[StateManager, Client]) -> None:
    manager, client = served
    await call(client, "register_context", name="r")
    await call(client, "update_state", name="r", data={"x": 1})
    rows = await all_rows(manager.store)
    ids = [r.request_id for r in rows]
    assert all(ids) and len(set(ids)) == 2


class NoTokens:
    async def verify_token(self, token: str) -> AccessToken | None:
        return None


async def test_a_request_without_a_principal_is_denied_and_audited(db_path: Path) -> None:
    settings = Settings(database=str(db_path), audit_key=KEY_TEXT, tools="all")  # pyright: ignore[reportArgumentType]
    from groundhog_mcp.app import open_manager

    manager = open_manager(settings)
    await manager.start()
    try:
        auth = AuthSettings(issuer_url=AnyHttpUrl("http://127.0.0.1:1"), resource_server_url=None)
        server = create_server(settings, manager, token_verifier=NoTokens(), auth=auth)
        async with Client(server) as client:
            text = await fail(client, "update_state", name="guarded", data={"x": MARKER})
            assert "authorization: this request carries no authenticated principal" in text
            await fail(client, "audit_log")
        rows = await all_rows(manager.store)
        assert len(rows) == 1  # the second denial of the minute is only counted...
        await manager.flush_denials()  # ...and its count written (at shutdown, or when the minute is over)
        rows = await all_rows(manager.store)
    finally:
        await manager.close()
    assert [(r.principal, r.namespace, r.operation, r.context, r.outcome) for r in rows] == [
        ("anonymous", "", "update_state", "guarded", "denied"),
        ("anonymous", "", "denied_requests", None, "denied"),
    ]
    assert rows[0].detail == "authorization: this request carries no authenticated principal"
    assert rows[0].request_id and rows[1].request_id is None
    assert rows[1].detail is not None
    assert rows[1].detail.startswith("1 denied request not itemized since ") and rows[1].detail.endswith(
        "(audit_log 1)"
    )
    assert MARKER not in repr(rows)


async def test_denials_by_grant_are_audited_and_audit_log_needs_admin(audited: StateManager) -> None:
    await audited.register("notes.a")
    reader = audited.with_principal(Principal("rita", "default", grants=(Grant("notes.", "read"),)))
    writer = audited.with_principal(Principal("walt", "default", grants=(Grant("notes.", "write"),)))
    notes_admin = audited.with_principal(Principal("ada", "default", grants=(Grant("notes.", "admin"),)))
    with pytest.raises(AccessDeniedError, match=r"the write grant on 'notes\.a' is missing for principal 'rita'"):
        await reader.update("notes.a", data={"x": MARKER})
    with pytest.raises(AccessDeniedError, match="the admin grant on '' is missing for principal 'walt'"):
        await writer.audit_log()
    with pytest.raises(NotFoundError):
        await reader.get("other")  # a refused read answers "not found", and is still recorded:
    await writer.update("notes.a", data={"x": 1})
    await audited.flush_denials()  # (counted: rita's minute has its row; here the count is written)
    rows = await all_rows(audited.store)
    assert [(r.principal, r.operation, r.context, r.outcome) for r in rows] == [
        ("local", "register", "notes.a", "ok"),
        ("rita", "write", "notes.a", "denied"),
        ("walt", "admin", None, "denied"),
        ("walt", "update", "notes.a", "ok"),
        ("rita", "denied_requests", None, "denied"),
    ]
    assert rows[-1].detail is not None and rows[-1].detail.endswith("(read 1)")
    assert MARKER not in repr(rows)
    # An admin of a prefix sees that prefix's rows; the whole log needs admin on every context.
    page = await notes_admin.audit_log(prefix="notes.", newest_first=False)
    assert [(r.principal, r.operation) for r in page.records] == [
        ("local", "register"),
        ("rita", "write"),
        ("walt", "update"),
    ]
    with pytest.raises(AccessDeniedError):
        await notes_admin.audit_log()
    last = (await audited.audit_log(limit=1)).records[0]
    assert (last.sequence, last.principal, last.operation, last.outcome) == (6, "ada", "admin", "denied")
