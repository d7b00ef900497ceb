"""Changing a context's definition (update_context) on every backend."""

from __future__ import annotations

import asyncio

import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.errors import (
    AccessDeniedError,
    ConflictError,
    NotFoundError,
    SealedSearchError,
    StateValidationError,
)
from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.store.search import SQLITE_SEARCH, index_statement, parse_ref

from .conftest import Backend
from .test_search import explain, on, query

SCHEMA = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "done": {"type": "boolean"}, "priority": {"type": "integer"}},
    "required": ["title", "done", "priority"],
}


async def test_a_schema_the_state_breaks_is_refused_listing_every_violation(manager: StateManager) -> None:
    await manager.register("task", state=ContextState(data={"title": 7, "done": "no"}), metadata={"v": 1})
    before = await manager.get("task")
    with pytest.raises(StateValidationError) as refused:
        await manager.update_context("task", schema=SCHEMA)
    assert refused.value.field == "state"
    assert [(i.pointer, i.message) for i in refused.value.issues] == [
        ("/data", "'priority' is a required property (JSON Schema rule 'required')"),
        ("/data/done", "must be of type 'boolean' (got a string) (JSON Schema rule 'type')"),
        ("/data/title", "must be of type 'string' (got an integer) (JSON Schema rule 'type')"),
        ("", "refused by the new definition; nothing was changed"),
    ]
    assert await manager.get("task") == before  # nothing written
    # Fixed state first, then the schema is accepted: a new revision, the state unchanged.
    await manager.update("task", data={"title": "write docs", "done": False, "priority": 2})
    result = await manager.update_context("task", schema=SCHEMA, version="2.0.0", expected_revision=2)
    assert (result.context.revision, result.change.op, result.change.patch) == (3, "redefine", [])
    assert (result.context.schema, result.context.version, result.context.metadata) == (SCHEMA, "2.0.0", {"v": 1})
    stored = await manager.get("task")
    assert (stored.schema, stored.version, stored.state.data["title"]) == (SCHEMA, "2.0.0", "write docs")
    assert [e.op for e in await manager.history("task")] == ["redefine", "update", "register"]
    # The new schema is enforced on the next write.
    with pytest.raises(StateValidationError, match=r"^state.data.priority: must be of type 'integer' \(got a string\)"):
        await manager.update("task", merge_patch_={"priority": "high"})
    with pytest.raises(ConflictError):
        await manager.update_context("task", metadata={"v": 2}, expected_revision=2)
    # validate_current=False lets a stricter schema in; the state stays as it is until written.
    strict = {**SCHEMA, "properties": {**SCHEMA["properties"], "priority": {"type": "integer", "maximum": 1}}}
    await manager.update_context("task", schema=strict, validate_current=False)
    assert (await manager.get("task")).state.data["priority"] == 2


async def test_handlers_settings_and_expiry_change_too(manager: StateManager) -> None:
    await manager.register("counter", state=ContextState(data={"n": 0}))
    await manager.update_context("counter", handlers={"inc": {"action": "increment", "path": "/n"}})
    from groundhog_mcp.service.events import Event

    assert (await manager.emit_event("counter", Event(type="inc", payload={}))).revision == 3
    await manager.update_context("counter", settings={"ttl_seconds": 1.5})
    assert "expires_at" in (await manager.get("counter")).settings
    await asyncio.sleep(1.6)
    with pytest.raises(NotFoundError):
        await manager.get("counter")
    ops = [c.op for c in await manager.changes_after(0)]
    assert ops == ["register", "redefine", "event", "redefine", "expired"]


async def test_bad_definitions_and_missing_grants_are_refused(manager: StateManager) -> None:
    await manager.register("c")
    with pytest.raises(StateValidationError, match=r"^update_context: give at least one of json_schema, settings"):
        await manager.update_context("c")
    with pytest.raises(StateValidationError, match=r"^version: must be a semantic version like 1.0.0; got '2'$"):
        await manager.update_context("c", version="2")
    with pytest.raises(StateValidationError, match=r"^schema"):
        await manager.update_context("c", schema={"type": "nonsense"})
    with pytest.raises(StateValidationError, match=r"^event_handlers"):
        await manager.update_context("c", handlers={"x": {"action": "explode"}})
    writer = manager.with_principal(Principal(name="writer", grants=(Grant(prefix="", right="write"),)))
    with pytest.raises(AccessDeniedError, match=r"^access: the admin grant on 'c' is missing"):
        await writer.update_context("c", metadata={"a": 1})
    tenant = manager.with_principal(Principal(name="other", namespace="tenant-b"))
    with pytest.raises(NotFoundError, match=r"^name: no context named 'c'$"):
        await tenant.update_context("c", metadata={"a": 1})
    # While leased, a redefinition is a write like the others: it needs the token.
    grant = await manager.take_lease("c")
    from groundhog_mcp.errors import LeasedError

    with pytest.raises(LeasedError):
        await manager.update_context("c", metadata={"a": 1})
    await manager.with_lease(grant.lease.token).update_context("c", metadata={"a": 1})
    assert (await manager.get("c")).revision == 2


async def test_new_search_indexes_are_created_as_at_registration(manager: StateManager, backend: Backend) -> None:
    for i in range(40):
        await manager.register(f"c{i}", state=ContextState(data={"status": "open" if i % 4 else "done", "n": i}))
    settings = {"search_indexes": ["/data/status"]}
    if backend.cipher is not None:  # a state index would need plaintext: refused, nothing written
        with pytest.raises(SealedSearchError):
            await manager.update_context("c0", settings=settings)
        assert (await manager.get("c0")).revision == 1
        return
    ref = parse_ref("/data/status", "test")
    index = index_statement(SQLITE_SEARCH, ref).split()[5]  # CREATE INDEX IF NOT EXISTS <name> ...
    done = query(conditions=(on("/data/status", "eq", "done"),))
    assert not await index_exists(backend, index)
    assert index not in await explain(backend, manager, done)
    result = await manager.update_context("c0", settings=settings)
    assert (result.change.op, result.context.settings) == ("redefine", settings)
    assert await index_exists(backend, index)
    assert index in await explain(backend, manager, done)  # a find on the pointer is an index lookup
    found = await manager.find(where=[{"path": "/data/status", "op": "eq", "value": "done"}])
    assert sorted(f.name for f in found.contexts) == sorted(f"c{i}" for i in range(0, 40, 4))
    # Another instance (another process) knows it too.
    other = StateManager(backend.store())
    await other.start()
    try:
        assert index in await explain(backend, other, done)
    finally:
        await other.close()


async def index_exists(backend: Backend, index: str) -> bool:
    if backend.kind == "sqlite":
        rows = await backend.sql("SELECT name FROM sqlite_master WHERE type = 'index' AND name = %s", (index,))
    else:
        rows = await backend.sql(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname = %s", (backend.pg_schema, index)
        )
    return len(rows) == 1
