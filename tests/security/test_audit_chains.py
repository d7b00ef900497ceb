"""One audit chain per namespace (schema 10): a log written before it stays verifiable as the
legacy chain, an anchor kept from then still applies, and a namespace admin verifies its own
chain without reading another namespace's rows. Both backends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import AccessDeniedError
from groundhog_mcp.models import Grant, Principal, utcnow
from groundhog_mcp.store import migrations, postgres, sqlite, sqlite_open
from groundhog_mcp.store.base import AuditQuery, AuditRecord, Store
from tests.conformance.conftest import Backend, MakeBackend
from tests.security.test_audit import KEY, audited_store, cli, drop_triggers

pytestmark = pytest.mark.anyio

LEGACY_ROWS = 4


def legacy_rows() -> list[AuditRecord]:
    """Denials in two namespaces as schema 9 signed them: one chain over the log, no position."""
    rows: list[AuditRecord] = []
    previous = ""
    at = utcnow() - timedelta(days=1)
    for sequence in range(1, LEGACY_ROWS + 1):
        unsigned = AuditRecord(
            sequence=sequence,
            timestamp=at + timedelta(seconds=sequence),
            principal="mallory",
            namespace="default" if sequence % 2 else "team",
            operation="read",
            outcome="denied",
            context=None,
            context_id=None,
            revision=None,
            change_sequence=None,
            request_id=None,
            detail="denied",
            key_id=KEY.key_id,
            hmac="",
        )
        record = AuditRecord(**{**unsigned.__dict__, "hmac": KEY.sign(unsigned.content(), previous)})
        rows.append(record)
        previous = record.hmac
    return rows


async def at_schema_9(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> list[AuditRecord]:
    """A database migrated to schema 9 holding :func:`legacy_rows`."""
    with monkeypatch.context() as patched:
        for module in (sqlite, sqlite_open, postgres):
            patched.setattr(module, "MIGRATIONS", migrations.MIGRATIONS[:9])
            patched.setattr(module, "LATEST_SCHEMA_VERSION", 9)
        store = backend.store()
        await store.open()
        await store.close()
    rows = legacy_rows()
    for r in rows:
        values: tuple[Any, ...] = (r.sequence, r.timestamp.isoformat(), *r.stored_values()[:-1])
        await backend.sql(
            "INSERT INTO audit_log (sequence, timestamp, principal, namespace, operation, outcome, context,"
            " context_id, revision, change_sequence, request_id, detail, key_id, hmac)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            values,
        )
    if backend.kind == "postgres":
        await backend.sql("UPDATE audit_head SET sequence = %s, hmac = %s", (rows[-1].sequence, rows[-1].hmac))
    return rows


@pytest.fixture(params=["sqlite", "postgres"])
async def migrated(
    request: pytest.FixtureRequest, make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> tuple[Backend, list[AuditRecord]]:
    """Schema 9 with a legacy log, migrated to 10 by the next start, then written in two namespaces."""
    backend = await make_backend(request.param)
    legacy = await at_schema_9(backend, monkeypatch)
    manager = StateManager(audited_store(backend))
    await manager.start()
    try:
        await manager.register("c")
        await manager.with_principal(Principal("bob", "team")).register("c")
        await manager.update("c", data={"v": 1})
    finally:
        await manager.close()
    return backend, legacy


async def test_a_legacy_log_stays_verifiable_and_new_rows_chain_per_namespace(
    migrated: tuple[Backend, list[AuditRecord]],
) -> None:
    backend, legacy = migrated
    rows = await backend.sql("SELECT sequence, namespace, position FROM audit_log ORDER BY sequence")
    assert [tuple(r) for r in rows] == [
        (1, "default", None),
        (2, "team", None),
        (3, "default", None),
        (4, "team", None),
        (5, "default", 1),  # the log's sequence continues; each namespace's chain starts at 1
        (6, "team", 1),
        (7, "default", 2),
    ]
    result = await cli(backend, "audit", "verify")
    assert result.returncode == 0, result.stdout
    head_default = (await backend.sql("SELECT hmac FROM audit_log WHERE sequence = 7"))[0][0]
    head_team = (await backend.sql("SELECT hmac FROM audit_log WHERE sequence = 6"))[0][0]
    assert result.stdout.splitlines() == [
        f"audit log OK: 7 row(s) verified in 3 chain(s), key {KEY.key_id}",
        f"  the legacy chain: rows 1-4, head 4:{legacy[-1].hmac}",
        f"  chain 'default': rows 1-2, head default@2:{head_default}",
        f"  chain 'team': rows 1-1, head team@1:{head_team}",
    ]
    # The head `audit head` printed before schema 10 still anchors those rows.
    anchored = await cli(backend, "audit", "verify", "--head", f"4:{legacy[-1].hmac}")
    assert anchored.returncode == 0 and "the legacy chain: rows 1-4" in anchored.stdout
    assert "reaches the anchored head 4" in anchored.stdout
    heads = await cli(backend, "audit", "head")
    assert [line.split('"head": ')[1] for line in heads.stdout.splitlines()] == [
        f'"4:{legacy[-1].hmac}"}}',
        f'"default@2:{head_default}"}}',
        f'"team@1:{head_team}"}}',
    ]


async def test_a_tampered_legacy_row_is_named(migrated: tuple[Backend, list[AuditRecord]]) -> None:
    backend, _ = migrated
    await drop_triggers(backend)
    await backend.sql("UPDATE audit_log SET detail = 'nothing to see' WHERE sequence = 2")
    result = await cli(backend, "audit", "verify")
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "audit log FAILED in the legacy chain at row 2, log sequence 2 (altered): row 2 was altered (its HMAC does "
        "not match its content); 1 row(s) before it verified"
    )


async def test_a_cut_legacy_tail_is_noticed_by_the_head_the_migration_recorded(
    migrated: tuple[Backend, list[AuditRecord]],
) -> None:
    backend, _ = migrated
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE sequence >= 3 AND position IS NULL")
    result = await cli(backend, "audit", "verify")
    assert result.returncode == 1
    assert result.stdout.strip() == (
        "audit log FAILED in the legacy chain at row 3 (missing tail): the log ends at row 2, but the head the store "
        "recorded is row 4: rows 3-4 are gone (cut from the end of the log, with or without the writes they "
        "recorded); 2 row(s) before it verified"
    )


async def test_audit_commands_ask_for_the_migration_first(make_backend: MakeBackend, monkeypatch: Any) -> None:
    backend = await make_backend("sqlite")
    await at_schema_9(backend, monkeypatch)
    result = await cli(backend, "audit", "verify")
    assert (result.returncode, result.stdout) == (1, "")
    assert "has schema version 9; the audit commands need 10" in result.stderr
    assert "run `groundhog-mcp db migrate`" in result.stderr


# -- a namespace admin verifies its own chain -----------------------------------------------------


class Watched:
    """Records the namespaces of the audit rows a store hands out (the store itself answers)."""

    def __init__(self, store: Store) -> None:
        self.seen: set[str] = set()
        original = store.read_audit

        async def read_audit(query: AuditQuery) -> list[AuditRecord]:
            rows = await original(query)
            self.seen.update(r.namespace for r in rows)
            return rows

        store.read_audit = read_audit  # type: ignore[method-assign]


async def test_a_namespace_admin_verifies_its_own_chain_only(backend: Backend) -> None:
    store = audited_store(backend)
    watched = Watched(store)
    manager = StateManager(store)
    await manager.start()
    try:
        alice = manager.with_principal(Principal("alice", "a"))
        bob = manager.with_principal(Principal("bob", "b"))
        await alice.register("notes")
        for i in range(3):
            await bob.register(f"n{i}")
        await alice.update("notes", data={"v": 1})
        mine = await alice.verify_audit(KEY)
        assert [(c.chain, c.rows, c.problem) for c in mine.chains] == [("a", 2, None)]
        assert watched.seen == {"a"}  # no row of b was read to answer a
        # b's chain is tampered with: a's answer does not change, b's names its row.
        await drop_triggers(backend)
        await backend.sql("UPDATE audit_log SET principal = 'alice' WHERE namespace = 'b' AND position = 2")
        again = await alice.verify_audit(KEY)
        assert [(c.chain, c.rows, c.problem) for c in again.chains] == [("a", 2, None)]
        theirs = await bob.verify_audit(KEY)
        assert theirs.rows == 1 and theirs.problem is not None
        assert (theirs.problem.sequence, theirs.problem.kind) == (2, "altered")
        # A principal with less than admin of the whole namespace cannot verify.
        clerk = manager.with_principal(Principal("carol", "a", grants=(Grant("notes", "admin"),)))
        with pytest.raises(AccessDeniedError):
            await clerk.verify_audit(KEY)
    finally:
        await manager.close()
