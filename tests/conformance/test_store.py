"""The Store contract, run unchanged against every backend (``[sqlite]`` and ``[postgres]``).

Only the public Store API is used, except where a test must prove something the API
can't show (the migrations table, that a refused database was not modified).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import re
import uuid
from typing import Any

import anyio
import pytest

from groundhog_mcp import (
    ConflictError,
    ContextState,
    InitializationError,
    NotFoundError,
    StateManager,
    StateUpdateError,
    StateValidationError,
    StoreBusyError,
)
from groundhog_mcp.errors import ValidationIssue
from groundhog_mcp.models import DEFAULT_NAMESPACE, JSONObject, dumps, json_diff, parse_timestamp, utcnow
from groundhog_mcp.store import Store, StoredContext
from groundhog_mcp.store.base import (
    DeadLetter,
    EventAlreadyHandled,
    EventRecord,
    Mutation,
    Mutator,
    NewContext,
    StoredRevision,
)
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION, MIGRATIONS

from .conftest import Backend, MakeBackend

NS = DEFAULT_NAMESPACE


def new_context(name: str, data: JSONObject | None = None, *, namespace: str = NS, **fields: Any) -> NewContext:
    return NewContext(
        id=fields.pop("id", None) or uuid.uuid4(),
        namespace=namespace,
        name=name,
        version=fields.pop("version", "1.0.0"),
        metadata=fields.pop("metadata", {}),
        settings=fields.pop("settings", {}),
        schema=fields.pop("schema", None),
        handlers=fields.pop("handlers", {}),
        state=ContextState(data=data or {}),
    )


def set_data(data: JSONObject, op: str = "update") -> Mutator:
    def mutator(current: StoredContext) -> Mutation:
        state = ContextState(data=data, metadata=current.state.metadata, version=current.state.version)
        return Mutation(state, json_diff(current.state.document(), state.document()), op)

    return mutator


async def register(store: Store, name: str, data: JSONObject | None = None, **fields: Any) -> StoredContext:
    stored, change = await store.register(new_context(name, data, **fields), actor="tester", if_exists="error")
    assert change is not None
    return stored


async def write(store: Store, name: str, data: JSONObject, expected: int | None = None) -> StoredContext:
    stored, _ = await store.mutate(NS, name, expected, set_data(data), actor="tester")
    return stored


async def all_changes(store: Store) -> list[Any]:
    changes: list[Any] = []
    while page := await store.changes_after(changes[-1].sequence if changes else 0, limit=100):
        changes += page
    return changes


async def exported(store: Store) -> list[JSONObject]:
    return [r async for r in store.export_records() if r["type"] != "header"]


def failing(error: BaseException) -> Mutator:
    def mutator(current: StoredContext) -> Mutation:
        raise error

    return mutator


# -- register / get / list ---------------------------------------------------------------------


async def test_register_round_trips_every_field_exactly(store: Store) -> None:
    # Key order, "\u0000", exponents, 64-bit integers and non-ASCII text all come back as given.
    data = {"z": 1, "a": [1, 2.5, -0.0, 1e300, 2**64 - 1, -(2**63)], "nul": "a\u0000b", "ü": {"😀": None, "b": True}}
    fields: dict[str, Any] = {
        "version": "2.1.0-beta.1",
        "metadata": {"z": 1e20, "a": "\u0000", "m": [{"y": 1, "x": 2}]},
        "settings": {"keep_revisions": 5, "b": False},
        "schema": {"type": "object", "properties": {"z": {"type": "integer"}}},
        "handlers": {"on_event": {"kind": "merge"}},
    }
    before = await store.last_sequence()
    stored, change = await store.register(new_context("c", data, **fields), actor="alice", if_exists="error")
    assert change is not None
    assert (stored.revision, change.revision, change.sequence, change.op) == (1, 1, before + 1, "register")
    assert (change.actor, change.name, change.namespace, change.context_id, change.patch) == (
        "alice",
        "c",
        NS,
        stored.id,
        None,
    )
    assert stored.created_at == stored.updated_at == change.timestamp
    got = await store.get(NS, "c")
    assert got == stored
    assert got is not None and await store.get_by_id(stored.id) == got
    assert dumps(got.state.to_json()) == dumps(stored.state.to_json())  # same text, same key order
    assert [dumps(v) for v in (got.metadata, got.settings, got.schema, got.handlers)] == [
        dumps(fields[k]) for k in ("metadata", "settings", "schema", "handlers")
    ]
    assert got.state_size == len(dumps(stored.state.to_json()).encode("utf-8"))


async def test_large_state_round_trips(store: Store) -> None:
    data = {f"k{i}": "é" * 100 + str(i) for i in range(2000)}  # ~ 400 KB: the off-loop path
    stored = await register(store, "big", data)
    updated = await write(store, "big", {**data, "more": 1}, expected=1)
    got = await store.get(NS, "big")
    assert got == updated and got.state.data == {**data, "more": 1}
    first = await store.read_revision(stored.id, 1)
    assert isinstance(first, StoredRevision) and first.state == stored.state


async def test_register_if_exists(store: Store) -> None:
    first = await register(store, "c", {"v": 1})
    last = await store.last_sequence()
    with pytest.raises(ConflictError, match=r"name: a context named 'c' already exists \(revision 1\)") as info:
        await store.register(new_context("c", {"v": 2}), actor="t", if_exists="error")
    assert (info.value.expected_revision, info.value.current_revision) == (0, 1)
    again, change = await store.register(new_context("c", {"v": 2}), actor="t", if_exists="return")
    assert change is None and again == first
    assert await store.last_sequence() == last  # nothing written, no sequence used


async def test_get_missing_and_not_found_writes(store: Store) -> None:
    assert await store.get(NS, "nope") is None
    assert await store.get_by_id(uuid.uuid4()) is None
    with pytest.raises(NotFoundError, match="name: no context named 'nope'"):
        await store.mutate(NS, "nope", None, set_data({}), actor="t")
    with pytest.raises(NotFoundError, match="name: no context named 'nope'"):
        await store.unregister(NS, "nope", None, purge=False, actor="t")
    assert await store.last_sequence() == 0


async def test_namespaces_are_separate(store: Store) -> None:
    a = await register(store, "c", {"ns": 1})
    b = await register(store, "c", {"ns": 2}, namespace="other")
    assert a.id != b.id and b.revision == 1
    await store.mutate("other", "c", 1, set_data({"ns": 3}), actor="t")
    assert (await store.get(NS, "c")) == a
    assert [c.namespace for c in await store.list("other", prefix="", after=None, limit=10)] == ["other"]
    # An id's namespace and name, nothing decoded: for the grant check before the context is read.
    assert await store.locate(a.id) == (NS, "c") and await store.locate(b.id) == ("other", "c")
    assert await store.locate(uuid.uuid4()) is None
    await store.unregister("other", "c", None, purge=False, actor="t")
    assert await store.locate(b.id) is None


async def test_list_orders_bytewise_with_prefix_and_cursor(store: Store) -> None:
    names = ["b", "a_c", "aB", "a.b", "A", "a", "a-b", "ab", "a_b", "Z9", "0"]
    for name in names:
        await register(store, name)
    await register(store, "a_other_ns", namespace="other")
    await register(store, "a_gone")
    await store.unregister(NS, "a_gone", None, purge=False, actor="t")

    listed = [c.name for c in await store.list(NS, prefix="", after=None, limit=100)]
    assert listed == sorted(names)  # code-point order, as SQLite's BINARY collation
    # "_" and "." are literal in a prefix (no LIKE wildcards).
    assert [c.name for c in await store.list(NS, prefix="a_", after=None, limit=100)] == ["a_b", "a_c"]
    assert [c.name for c in await store.list(NS, prefix="a.", after=None, limit=100)] == ["a.b"]
    assert [c.name for c in await store.list(NS, prefix="a", after="a-b", limit=2)] == ["a.b", "aB"]
    pages: list[str] = []
    after: str | None = None
    while page := await store.list(NS, prefix="", after=after, limit=3):
        pages += [c.name for c in page]
        after = page[-1].name
    assert pages == listed
    assert await store.list(NS, prefix="zz", after=None, limit=10) == []


# -- mutate and CAS ----------------------------------------------------------------------------


async def test_mutate_with_matching_or_no_expected_revision(store: Store) -> None:
    await register(store, "c", {"n": 0})
    seen: list[int] = []

    def merge(current: StoredContext) -> Mutation:
        seen.append(current.revision)
        state = ContextState(data={"n": current.state.data["n"] + 1})
        return Mutation(state, json_diff(current.state.document(), state.document()), "merge")

    stored, change = await store.mutate(NS, "c", 1, merge, actor="bob")
    assert (stored.revision, change.revision, change.op, change.actor) == (2, 2, "merge", "bob")
    assert change.patch == [{"op": "replace", "path": "/data/n", "value": 1}]
    stored, change = await store.mutate(NS, "c", None, merge, actor="bob")
    assert stored.revision == 3 and stored.state.data == {"n": 2} and seen == [1, 2]
    assert await store.get(NS, "c") == stored
    assert stored.updated_at == change.timestamp and stored.created_at < stored.updated_at


async def test_conflict_reports_current_revision_and_the_missed_diff(store: Store) -> None:
    await register(store, "c", {"n": 1, "keep": True})
    await write(store, "c", {"n": 2, "keep": True})
    third = await write(store, "c", {"n": 3, "new": [1]})
    last = await store.last_sequence()

    with pytest.raises(ConflictError) as info:
        await store.mutate(NS, "c", 1, set_data({"n": 99}), actor="t")
    error = info.value
    assert (error.name, error.expected_revision, error.current_revision) == ("c", 1, 3)
    assert error.missed_patch == json_diff(ContextState(data={"n": 1, "keep": True}).document(), third.state.document())
    assert "expected revision 1 but context 'c' is at revision 3; changes since revision 1 (RFC 6902)" in str(error)

    with pytest.raises(ConflictError) as ahead:
        await store.mutate(NS, "c", 7, set_data({"n": 99}), actor="t")
    assert ahead.value.current_revision == 3 and ahead.value.missed_patch is None

    with pytest.raises(ConflictError, match="0 means create-only but context 'c' already exists at revision 3"):
        await store.mutate(NS, "c", 0, set_data({"n": 99}), actor="t")

    assert await store.get(NS, "c") == third
    assert await store.last_sequence() == last


@pytest.mark.parametrize(
    "error",
    [StateValidationError([ValidationIssue("/data/n", "must be a string")]), RuntimeError("a bug in a mutator")],
    ids=["context-error", "bug"],
)
async def test_failed_mutator_leaves_everything_byte_identical(store: Store, error: Exception) -> None:
    await register(store, "c", {"n": 1})
    await write(store, "c", {"n": 2})
    before, records, last = await store.get(NS, "c"), await exported(store), await store.last_sequence()
    with pytest.raises(type(error)) as raised:
        await store.mutate(NS, "c", 2, failing(error), actor="t")
    assert raised.value is error  # passed through as is, not wrapped
    after = await store.get(NS, "c")
    assert after == before and after is not None and before is not None
    assert dumps(after.state.to_json()) == dumps(before.state.to_json())
    assert await exported(store) == records
    assert await store.last_sequence() == last
    _, change = await store.mutate(NS, "c", 2, set_data({"n": 3}), actor="t")
    assert change.sequence == last + 1 and change.revision == 3


# -- unregister, purge, revisions never reused -------------------------------------------------


async def test_unregister_keeps_history_unless_purged(store: Store) -> None:
    first = await register(store, "c", {"v": 1})
    await write(store, "c", {"v": 2})
    with pytest.raises(ConflictError):
        await store.unregister(NS, "c", 1, purge=False, actor="t")
    assert (await store.get(NS, "c")) is not None

    change = await store.unregister(NS, "c", 2, purge=False, actor="carol")
    assert (change.revision, change.op, change.actor, change.patch, change.context_id) == (
        3,
        "unregister",
        "carol",
        None,
        first.id,
    )
    assert await store.get(NS, "c") is None and await store.get_by_id(first.id) is None
    assert await store.list(NS, prefix="", after=None, limit=10) == []
    assert [h.revision for h in await store.history(first.id, before=None, limit=10)] == [2, 1]
    old = await store.read_revision(first.id, 1)
    assert isinstance(old, StoredRevision) and old.state.data == {"v": 1}

    again = await register(store, "c", {"v": "new"})
    await store.unregister(NS, "c", None, purge=True, actor="t")
    assert await store.history(again.id, before=None, limit=10) == []
    assert await store.read_revision(again.id, again.revision) is None
    # Purging one registration leaves the earlier one's history alone.
    assert [h.revision for h in await store.history(first.id, before=None, limit=10)] == [2, 1]


async def test_revisions_never_reused_after_reregistration_or_purge(store: Store) -> None:
    first = await register(store, "c", {"v": 1})
    await write(store, "c", {"v": 2})
    assert (await store.unregister(NS, "c", None, purge=False, actor="t")).revision == 3
    second = await register(store, "c", {"v": "again"})
    assert second.revision == 4 and second.id != first.id
    assert (await store.unregister(NS, "c", None, purge=True, actor="t")).revision == 5
    third = await register(store, "c")
    assert third.revision == 6
    changes = [c for c in await all_changes(store) if c.name == "c"]
    assert [c.revision for c in changes] == [1, 2, 3, 4, 5, 6]
    assert [c.context_id for c in changes] == [first.id] * 3 + [second.id] * 2 + [third.id]


async def test_sequence_strictly_increases_and_is_never_reused(backend: Backend, store: Store) -> None:
    written: list[int] = []
    await register(store, "a")
    await register(store, "b")
    for i in range(3):
        written.append((await store.mutate(NS, "a", None, set_data({"i": i}), actor="t"))[1].sequence)
        written.append((await store.mutate(NS, "b", None, set_data({"i": i}), actor="t"))[1].sequence)
        with pytest.raises(ConflictError):  # failed writes use no sequence
            await store.mutate(NS, "a", 1, set_data({}), actor="t")
        with pytest.raises(ConflictError):
            await store.register(new_context("a"), actor="t", if_exists="error")
    written.append((await store.unregister(NS, "b", None, purge=True, actor="t")).sequence)
    sequences = [c.sequence for c in await all_changes(store)]
    assert sequences == sorted(set(sequences)) and sequences[2:] == written
    assert await store.last_sequence() == sequences[-1]

    # Another instance continues after the last sequence, even though b's history was purged.
    other = backend.store()
    await other.open()
    try:
        assert await other.last_sequence() == sequences[-1]
        _, change = await other.mutate(NS, "a", None, set_data({"x": 1}), actor="t")
        assert change.sequence == sequences[-1] + 1
    finally:
        await other.close()
    assert await store.last_sequence() == sequences[-1] + 1


async def test_purge_removes_content_from_the_change_feed_too(store: Store) -> None:
    keep = await register(store, "keep", {"v": 1})
    await write(store, "keep", {"v": 2})
    gone = await register(store, "gone", {"secret": 1})
    await write(store, "gone", {"secret": 2})
    await store.unregister(NS, "gone", None, purge=True, actor="t")
    changes = await all_changes(store)
    assert [(c.name, c.revision) for c in changes if c.context_id == gone.id] == [("gone", r) for r in (1, 2, 3)]
    assert all(c.patch is None for c in changes if c.context_id == gone.id)
    assert [c.patch for c in changes if c.context_id == keep.id][1] == [
        {"op": "replace", "path": "/data/v", "value": 2}
    ]


async def test_a_revision_below_a_registration_is_not_reported_as_compacted(store: Store) -> None:
    await register(store, "c")
    await store.unregister(NS, "c", None, purge=False, actor="t")
    second = await register(store, "c")
    assert second.revision == 3
    assert await store.read_revision(second.id, 1) is None  # it belongs to the first registration


# -- history, revisions, change feed -----------------------------------------------------------


async def test_history_is_newest_first_and_pages_with_before(store: Store) -> None:
    states = [await register(store, "c", {"r": 1})]
    for r in range(2, 6):
        states.append(await write(store, "c", {"r": r, "pad": "x" * r}))
    changes = {c.revision: c for c in await all_changes(store)}
    cid = states[0].id

    pages: list[list[int]] = []
    before: int | None = None
    while page := await store.history(cid, before=before, limit=2):
        pages.append([h.revision for h in page])
        before = page[-1].revision
    assert pages == [[5, 4], [3, 2], [1]]

    entries = await store.history(cid, before=None, limit=100)
    for entry, state in zip(entries, reversed(states), strict=True):
        change = changes[entry.revision]
        assert (entry.sequence, entry.op, entry.actor, entry.timestamp) == (
            change.sequence,
            change.op,
            change.actor,
            change.timestamp,
        )
        assert entry.size == state.state_size
    assert [h.revision for h in await store.history(cid, before=3, limit=100)] == [2, 1]
    assert await store.history(uuid.uuid4(), before=None, limit=10) == []


async def test_read_revision_returns_each_snapshot(store: Store) -> None:
    states = [await register(store, "c", {"r": 1})]
    for r in range(2, 5):
        states.append(await write(store, "c", {"r": r}))
    for state in states:
        found = await store.read_revision(state.id, state.revision)
        assert isinstance(found, StoredRevision)
        assert found.context_id == state.id and found.state == state.state
        assert dumps(found.state.to_json()) == dumps(state.state.to_json())
        assert (found.entry.revision, found.entry.size, found.entry.timestamp) == (
            state.revision,
            state.state_size,
            state.updated_at,
        )
    assert await store.read_revision(states[0].id, 99) is None
    assert await store.read_revision(uuid.uuid4(), 1) is None


async def test_changes_after_in_sequence_order_with_limit(store: Store) -> None:
    returned: list[Any] = []
    for name in ("a", "b"):
        _, change = await store.register(new_context(name, {"v": 0}), actor="t", if_exists="error")
        returned.append(change)
    for i in range(1, 4):
        for name in ("b", "a"):
            returned.append((await store.mutate(NS, name, None, set_data({"v": i}), actor="t"))[1])
    returned.append(await store.unregister(NS, "a", None, purge=False, actor="t"))

    assert await all_changes(store) == returned  # every field, timestamps to the microsecond
    assert await store.changes_after(0, limit=3) == returned[:3]
    assert await store.changes_after(returned[3].sequence, limit=2) == returned[4:6]
    assert await store.changes_after(returned[-1].sequence, limit=10) == []
    assert returned[2].patch == [{"op": "replace", "path": "/data/v", "value": 1}]


async def test_a_second_instance_sees_every_committed_write(backend: Backend, store: Store) -> None:
    other = backend.store()
    await other.open()
    try:
        await register(store, "c", {"v": 1})
        mine = await write(store, "c", {"v": 2})
        assert await other.get(NS, "c") == mine
        theirs, change = await other.mutate(NS, "c", 2, set_data({"v": 3}), actor="other")
        assert await store.get(NS, "c") == theirs
        assert (await store.changes_after(change.sequence - 1, limit=10)) == [change]
    finally:
        await other.close()


# -- concurrency across instances --------------------------------------------------------------


async def test_concurrent_cas_writers_through_two_instances_lose_nothing(backend: Backend) -> None:
    stores = [backend.store(), backend.store()]
    for s in stores:
        await s.open()
    try:
        await register(stores[0], "counter", {"n": 0})
        conflicts = 0

        async def increment_100_times(s: Store) -> None:
            nonlocal conflicts
            for _ in range(100):
                while True:
                    current = await s.get(NS, "counter")
                    assert current is not None
                    # The new value comes from what was *read*: only CAS keeps this correct.
                    new = {"n": current.state.data["n"] + 1}
                    try:
                        await s.mutate(NS, "counter", current.revision, set_data(new), actor="t")
                        break
                    except (ConflictError, StoreBusyError):
                        conflicts += 1
                        await asyncio.sleep(0)

        await asyncio.gather(*(increment_100_times(s) for s in stores))
        final = await stores[1].get(NS, "counter")
        assert final is not None and final.state.data == {"n": 200} and final.revision == 201
        changes = await all_changes(stores[0])
        assert [c.revision for c in changes] == list(range(1, 202))
        assert [c.sequence for c in changes] == sorted({c.sequence for c in changes})
        entries = await stores[0].history(final.id, before=None, limit=1000)
        assert [h.revision for h in entries] == list(range(201, 0, -1))
    finally:
        for s in stores:
            await s.close()


@pytest.mark.parametrize("if_exists", ["error", "return"])
async def test_concurrent_registers_of_one_name_create_it_once(backend: Backend, if_exists: Any) -> None:
    stores = [backend.store(), backend.store()]
    for s in stores:
        await s.open()
    try:
        # A new name, then the same name again after an unregister (its revision row exists).
        for round_, revision in ((1, 1), (2, 3)):
            attempts = [
                s.register(new_context("c", {"by": i}), actor="t", if_exists=if_exists)
                for i, s in enumerate(stores * 5)
            ]
            results = await asyncio.gather(*attempts, return_exceptions=True)
            created = [r for r in results if isinstance(r, tuple) and r[1] is not None]
            assert len(created) == 1, results
            winner = created[0][0]
            assert winner.revision == revision
            if if_exists == "return":
                assert all(isinstance(r, tuple) and r[0].id == winner.id for r in results), results
            else:
                errors = [r for r in results if not isinstance(r, tuple)]
                assert len(errors) == 9 and all(isinstance(e, ConflictError) for e in errors), errors
            assert len(await all_changes(stores[0])) == 2 * round_ - 1
            await stores[1].unregister(NS, "c", None, purge=False, actor="t")
    finally:
        for s in stores:
            await s.close()


# -- events, idempotency, dead letters ---------------------------------------------------------


async def test_an_event_commits_with_its_write_and_its_key_is_answered_once(store: Store) -> None:
    ctx = await register(store, "c", {"n": 0})
    event = EventRecord("increment", {"by": 1}, "key-1")
    stored, change = await store.mutate(NS, "c", 1, set_data({"n": 1}, "event"), actor="t", event=event)
    seen = await store.find_event(ctx.id, "key-1")
    assert seen is not None
    assert (seen.context_id, seen.type, seen.idempotency_key, seen.revision, seen.sequence) == (
        ctx.id,
        "increment",
        "key-1",
        2,
        change.sequence,
    )
    assert seen.created_at == change.timestamp
    last = await store.last_sequence()
    # A repeat is answered before the revision check, and writes nothing.
    with pytest.raises(EventAlreadyHandled) as repeat:
        await store.mutate(NS, "c", 1, set_data({"n": 99}, "event"), actor="t", event=event)
    assert repeat.value.event == seen
    assert await store.get(NS, "c") == stored and await store.last_sequence() == last
    # No key: no idempotency; another context: another key space.
    await store.mutate(NS, "c", None, set_data({"n": 2}), actor="t", event=EventRecord("increment", {}, None))
    other = await register(store, "d")
    await store.mutate(NS, "d", None, set_data({"n": 1}), actor="t", event=event)
    assert await store.find_event(other.id, "key-1") is not None
    assert await store.find_event(ctx.id, "key-2") is None


async def test_a_failed_write_records_no_event(store: Store) -> None:
    ctx = await register(store, "c")
    with pytest.raises(RuntimeError):
        await store.mutate(NS, "c", None, failing(RuntimeError("x")), actor="t", event=EventRecord("e", {}, "k"))
    with pytest.raises(ConflictError):
        await store.mutate(NS, "c", 5, set_data({}), actor="t", event=EventRecord("e", {}, "k"))
    assert await store.find_event(ctx.id, "k") is None


async def test_one_event_key_applies_once_across_instances(backend: Backend) -> None:
    stores = [backend.store(), backend.store()]
    for s in stores:
        await s.open()
    try:
        await register(stores[0], "c", {"n": 0})
        event = EventRecord("increment", {}, "once")

        def increment(current: StoredContext) -> Mutation:
            state = ContextState(data={"n": current.state.data["n"] + 1})
            return Mutation(state, json_diff(current.state.document(), state.document()), "event")

        results = await asyncio.gather(
            *(s.mutate(NS, "c", None, increment, actor="t", event=event) for s in stores * 5), return_exceptions=True
        )
        assert sum(isinstance(r, tuple) for r in results) == 1
        assert all(isinstance(r, tuple | EventAlreadyHandled) for r in results), results
        final = await stores[1].get(NS, "c")
        assert final is not None and final.state.data == {"n": 1}
    finally:
        for s in stores:
            await s.close()


def letter(ctx: StoredContext, **fields: Any) -> DeadLetter:
    values: dict[str, Any] = {
        "id": 0,
        "namespace": ctx.namespace,
        "context_id": ctx.id,
        "name": ctx.name,
        "type": "increment",
        "payload": {"by": 1, "z": [1.5]},
        "idempotency_key": None,
        "attempts": 3,
        "last_error": "handler failed: boom",
        "created_at": utcnow(),
    }
    return DeadLetter(**{**values, **fields})


async def test_dead_letters_are_kept_listed_updated_and_replayed(store: Store) -> None:
    a = await register(store, "a")
    b = await register(store, "b")
    elsewhere = await register(store, "a", namespace="other")
    first = await store.add_dead_letter(letter(a, idempotency_key="k1"))
    second = await store.add_dead_letter(letter(b))
    third = await store.add_dead_letter(letter(a, type="other"))
    await store.add_dead_letter(letter(elsewhere))
    assert 0 < first.id < second.id < third.id
    assert first == letter(a, idempotency_key="k1", id=first.id, created_at=first.created_at)

    got = await store.get_dead_letter(NS, first.id)
    assert got == first
    assert await store.get_dead_letter("other", first.id) is None
    # The name alone, for the grant check before the letter is read (the same namespace rule).
    assert await store.dead_letter_name(NS, second.id) == "b"
    assert await store.dead_letter_name("other", first.id) is None
    assert await store.dead_letter_name(NS, third.id + 100) is None

    await store.add_dead_letter(letter(a, id=first.id, attempts=2, last_error="still failing"))
    updated = await store.get_dead_letter(NS, first.id)
    assert updated is not None and (updated.attempts, updated.last_error) == (5, "still failing")

    listing = await store.list_dead_letters(NS, name=None, after_id=0, limit=10, include_replayed=False)
    assert [d.id for d in listing] == [first.id, second.id, third.id]
    by_name = await store.list_dead_letters(NS, name="a", after_id=0, limit=10, include_replayed=False)
    assert [d.id for d in by_name] == [first.id, third.id]
    page = await store.list_dead_letters(NS, name=None, after_id=first.id, limit=1, include_replayed=False)
    assert [d.id for d in page] == [second.id]

    await store.mark_replayed(second.id, 7)
    replayed = await store.get_dead_letter(NS, second.id)
    assert replayed is not None and replayed.replay_revision == 7 and replayed.replayed_at is not None
    pending = await store.list_dead_letters(NS, name=None, after_id=0, limit=10, include_replayed=False)
    assert [d.id for d in pending] == [first.id, third.id]
    everything = await store.list_dead_letters(NS, name=None, after_id=0, limit=10, include_replayed=True)
    assert [d.id for d in everything] == [first.id, second.id, third.id]


async def test_context_counts(store: Store) -> None:
    a = await register(store, "a")
    b = await register(store, "b")
    for i in range(3):
        await store.mutate(NS, "a", None, set_data({"i": i}), actor="t", event=EventRecord("e", {}, f"k{i}"))
    await write(store, "a", {"plain": True})
    open_letter = await store.add_dead_letter(letter(a))
    replayed = await store.add_dead_letter(letter(a))
    await store.mark_replayed(replayed.id, 5)
    assert open_letter.id != replayed.id
    unknown = uuid.uuid4()
    counts = await store.context_counts([b.id, a.id, unknown])
    assert counts == {b.id: (0, 0, 0), a.id: (4, 3, 1), unknown: (0, 0, 0)}
    assert list(counts) == [b.id, a.id, unknown]
    assert await store.context_counts([]) == {}


async def test_purge_removes_events_and_dead_letters(store: Store) -> None:
    ctx = await register(store, "c")
    await store.mutate(NS, "c", None, set_data({"n": 1}), actor="t", event=EventRecord("e", {}, "k"))
    dead = await store.add_dead_letter(letter(ctx))
    await store.unregister(NS, "c", None, purge=True, actor="t")
    assert await store.find_event(ctx.id, "k") is None
    assert await store.get_dead_letter(NS, dead.id) is None


# -- migrations --------------------------------------------------------------------------------


async def test_migrations_are_recorded(backend: Backend, store: Store) -> None:
    await register(store, "c")
    status = await store.status()
    assert (status.backend, status.schema_version, status.latest_schema_version) == (
        backend.kind,
        LATEST_SCHEMA_VERSION,
        LATEST_SCHEMA_VERSION,
    )
    assert (status.pending_migrations, status.contexts, status.last_sequence) == ([], 1, 1)
    rows = await backend.sql("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
    assert await store.migrate() == []


async def test_two_instances_starting_together_migrate_once(backend: Backend) -> None:
    stores = [backend.store() for _ in range(3)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        rows = await backend.sql("SELECT version FROM schema_migrations ORDER BY version")
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        await register(stores[0], "c")
        assert await stores[2].get(NS, "c") is not None
    finally:
        for s in stores:
            await s.close()


async def test_migrate_applies_pending_migrations_once(backend: Backend) -> None:
    store = backend.store(auto_migrate=False)
    await store.open()
    try:
        assert await store.last_sequence() == 0
        assert await store.migrate() == [m.version for m in MIGRATIONS]
        assert await store.migrate() == []
        status = await store.status()
        assert (status.schema_version, status.pending_migrations) == (LATEST_SCHEMA_VERSION, [])
        await register(store, "c")
    finally:
        await store.close()


async def test_status_of_a_database_not_migrated_yet(backend: Backend) -> None:
    store = backend.store(auto_migrate=False)
    await store.open()
    try:
        status = await store.status()
        assert (status.schema_version, status.contexts, status.last_sequence) == (0, 0, 0)
        assert status.pending_migrations == [m.version for m in MIGRATIONS]
    finally:
        await store.close()


@pytest.mark.parametrize("auto_migrate", [True, False])
async def test_a_newer_schema_is_refused_and_not_modified(backend: Backend, auto_migrate: bool) -> None:
    store = backend.store()
    await store.open()
    await register(store, "c", {"v": 1})
    await store.close()
    await backend.sql("INSERT INTO schema_migrations VALUES (999, 'from the future', '2030-01-01T00:00:00Z')")
    before = await backend.fingerprint()
    newer = backend.store(auto_migrate=auto_migrate)
    with pytest.raises(InitializationError, match=r"schema version 999, newer than .*(not modified)"):
        await newer.open()
    await newer.close()
    assert await backend.fingerprint() == before


# -- export / import ---------------------------------------------------------------------------


async def populate(store: Store) -> None:
    """Every kind of record: live, unregistered and purged contexts, events with and without an
    idempotency key, open and replayed dead letters (the purged context's go with it)."""
    a = await register(
        store, "a", {"n": 1, "ü": "\u0000"}, metadata={"m": 1e20}, schema={"type": "object"}, settings={"s": 1}
    )
    await store.mutate(NS, "a", None, set_data({"n": 2}, "event"), actor="t", event=EventRecord("set", {"n": 2}, "k-a"))
    await store.mutate(NS, "a", None, set_data({"n": 3}, "event"), actor="t", event=EventRecord("set", {"n": 3}, None))
    await store.add_dead_letter(letter(a, idempotency_key="k-dead"))
    replayed = await store.add_dead_letter(letter(a, type="other", payload={}))
    await store.mark_replayed(replayed.id, 3)
    gone = await register(store, "gone", {"x": 1})
    await store.add_dead_letter(letter(gone))
    await store.unregister(NS, "gone", None, purge=False, actor="t")
    purged = await register(store, "purged")
    await store.mutate(NS, "purged", None, set_data({}, "event"), actor="t", event=EventRecord("e", {}, "k-p"))
    await store.add_dead_letter(letter(purged))
    await store.unregister(NS, "purged", None, purge=True, actor="t")
    await register(store, "a", {"other": True}, namespace="team-b")


async def all_dead_letters(store: Store, namespace: str = NS) -> list[DeadLetter]:
    return await store.list_dead_letters(namespace, name=None, after_id=0, limit=100, include_replayed=True)


async def test_export_import_round_trip(backend: Backend, store: Store, make_backend: MakeBackend) -> None:
    await populate(store)
    records = await exported(store)
    copy_backend = await make_backend(backend.kind)
    copy = copy_backend.store()
    await copy.open()
    try:
        assert await copy.import_records(records) == 3  # live or unregistered; the purged one is gone
        assert await exported(copy) == records
        assert await copy.get(NS, "a") == await store.get(NS, "a")
        assert await all_changes(copy) == await all_changes(store)
        source_a = await store.get(NS, "a")
        assert source_a is not None
        first = await copy.read_revision(source_a.id, 1)
        assert isinstance(first, StoredRevision) and first.state.data == {"n": 1, "ü": "\u0000"}
        # The copy continues where the source stopped: revisions per name and the sequence.
        assert await copy.last_sequence() == await store.last_sequence()
        again = await register(copy, "gone")
        assert again.revision == 3
        assert (await copy.changes_after(0, limit=100))[-1].sequence == await store.last_sequence() + 1
        assert (await register(copy, "purged")).revision == 4
        with pytest.raises(StateUpdateError, match="not empty"):
            await copy.import_records(records)
        # Events came along: a repeated idempotency key is still answered with the first result.
        seen = await copy.find_event(source_a.id, "k-a")
        assert seen is not None and seen == await store.find_event(source_a.id, "k-a")
        with pytest.raises(EventAlreadyHandled) as repeat:
            await copy.mutate(NS, "a", None, set_data({"n": 9}), actor="t", event=EventRecord("set", {}, "k-a"))
        assert repeat.value.event == seen
        # So did the dead letters, replayed or not; new ids continue after the imported ones.
        letters = await all_dead_letters(copy)
        assert letters == await all_dead_letters(store) and len(letters) == 3
        assert [d.replay_revision for d in letters] == [None, 3, None]
        assert (await copy.add_dead_letter(letter(source_a))).id > letters[-1].id
        await copy.mutate(NS, "a", None, set_data({"n": 4}, "event"), actor="t", event=EventRecord("set", {}, "k-new"))
        new_event = await copy.find_event(source_a.id, "k-new")
        assert new_event is not None and new_event.id > seen.id
    finally:
        await copy.close()


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("context", "name"),
        ("context", "state"),
        ("revision", "sequence"),
        ("name_revision", "last_revision"),
        ("change", "timestamp"),
        ("change", "patch"),  # may be null, but not missing
        ("event", "idempotency_key"),
        ("event", "payload"),
        ("dead_letter", "attempts"),
        ("dead_letter", "replayed_at"),
    ],
)
async def test_import_names_the_record_and_the_missing_field_and_writes_nothing(
    backend: Backend, store: Store, make_backend: MakeBackend, kind: str, field: str
) -> None:
    await populate(store)
    records = [r async for r in store.export_records()]
    number = next(n for n, r in enumerate(records, start=1) if r["type"] == kind)
    del records[number - 1][field]
    copy = (await make_backend(backend.kind)).store()
    await copy.open()
    try:
        expected = rf"^import: record {number} \({kind}\): missing field '{field}'; nothing was imported$"
        with pytest.raises(StateUpdateError, match=expected):
            await copy.import_records(records)
        assert await exported(copy) == []
    finally:
        await copy.close()


@pytest.mark.parametrize(
    ("kind", "field", "value", "message"),
    [
        ("revision", "revision", "2", "field 'revision' must be an integer; got '2'"),
        ("context", "id", "not-a-uuid", "field 'id' must be a UUID; got 'not-a-uuid'"),
        ("event", "created_at", "2024-01-01 10:00", "field 'created_at' must be an RFC 3339 timestamp"),
        ("dead_letter", "payload", [1], "field 'payload' must be a JSON object; got [1]"),
        ("context", "namespace", None, "field 'namespace' must not be null"),
    ],
)
async def test_import_names_a_field_of_the_wrong_type(
    backend: Backend, store: Store, make_backend: MakeBackend, kind: str, field: str, value: Any, message: str
) -> None:
    await populate(store)
    records = [r async for r in store.export_records()]
    number = next(n for n, r in enumerate(records, start=1) if r["type"] == kind)
    records[number - 1][field] = value
    copy = (await make_backend(backend.kind)).store()
    await copy.open()
    try:
        with pytest.raises(StateUpdateError, match=rf"^import: record {number} \({kind}\): {re.escape(message)}"):
            await copy.import_records(records)
        assert await exported(copy) == []
    finally:
        await copy.close()


async def test_import_reads_format_version_1_and_refuses_a_newer_one(
    backend: Backend, store: Store, make_backend: MakeBackend
) -> None:
    await populate(store)
    header, *rest = [r async for r in store.export_records()]
    assert (header["format"], header["format_version"]) == ("groundhog-export", 2)
    # Version 1 had no event and dead letter records.
    version_1 = [{**header, "format_version": 1}, *(r for r in rest if r["type"] not in ("event", "dead_letter"))]
    copy = (await make_backend(backend.kind)).store()
    await copy.open()
    try:
        with pytest.raises(StateUpdateError, match=r"format_version 3 is newer than 2; upgrade groundhog-mcp"):
            await copy.import_records([{**header, "format_version": 3}, *rest])
        with pytest.raises(StateUpdateError, match=r"^import: record 2: unknown record type 'audit'"):
            await copy.import_records([header, {"type": "audit"}])
        assert await copy.import_records(version_1) == 3
        assert await exported(copy) == version_1[1:]
    finally:
        await copy.close()


async def test_import_rejects_invalid_state_and_writes_nothing(
    backend: Backend, store: Store, make_backend: MakeBackend
) -> None:
    await register(store, "a")
    records = [r async for r in store.export_records()]
    for record in records:
        if record["type"] == "context":
            record["state"]["timestamp"] = "yesterday"
    copy = (await make_backend(backend.kind)).store()
    await copy.open()
    try:
        with pytest.raises(
            StateUpdateError, match=r"record 2 \(context\): state/timestamp: 'yesterday' does not match"
        ):
            await copy.import_records(records)
        assert await copy.list(NS, prefix="", after=None, limit=10) == []
        assert await copy.last_sequence() == 0
    finally:
        await copy.close()


async def test_import_refuses_a_non_empty_store(store: Store) -> None:
    await register(store, "a")
    records = await exported(store)
    with pytest.raises(StateUpdateError, match=r"not empty \(1 contexts, 1 changes\)"):
        await store.import_records(records)
    assert len(await all_changes(store)) == 1


async def test_sqlite_to_postgres_and_back_keeps_everything(make_backend: MakeBackend) -> None:
    chain = [await make_backend(kind) for kind in ("sqlite", "postgres", "sqlite")]
    stores = [b.store() for b in chain]
    for s in stores:
        await s.open()
    try:
        await populate(stores[0])
        for _ in range(3):
            await write(stores[0], "a", {"n": 3, "t": parse_timestamp("2024-02-29T23:59:59.999999Z").isoformat()})
        records = await exported(stores[0])
        kinds = collections.Counter(r["type"] for r in records)
        assert kinds == {
            "context": 3,
            "revision": 8,
            "name_revision": 4,
            "change": 12,
            "event": 2,
            "dead_letter": 3,
        }
        source_a = await stores[0].get(NS, "a")
        assert source_a is not None
        for source, target in itertools.pairwise(stores):
            assert await target.import_records(await exported(source)) == 3
            # Every context, revision snapshot, change, event and dead letter, exactly.
            assert await exported(target) == records
            assert await target.get(NS, "a") == source_a
            assert await all_changes(target) == await all_changes(stores[0])
            assert await target.last_sequence() == await stores[0].last_sequence()
            for revision in range(1, source_a.revision + 1):
                assert await target.read_revision(source_a.id, revision) == await stores[0].read_revision(
                    source_a.id, revision
                )
            assert await target.find_event(source_a.id, "k-a") == await stores[0].find_event(source_a.id, "k-a")
            assert await all_dead_letters(target) == await all_dead_letters(stores[0])
    finally:
        for s in stores:
            await s.close()


# -- through the service -----------------------------------------------------------------------


async def test_a_manager_publishes_every_change_of_another_instance_once_in_order(backend: Backend) -> None:
    # SQLite notices the other instance by polling data_version, PostgreSQL by LISTEN/NOTIFY.
    managers = [StateManager(backend.store()), StateManager(backend.store())]
    for m in managers:
        await m.start()
    try:
        listener, writer = managers
        subscription = listener.bus.subscribe()
        await writer.register("c", state=ContextState(data={"n": 0}))
        for n in range(1, 20):
            await writer.update("c", data={"n": n}, expected_revision=n)
        received: list[Any] = []
        with anyio.fail_after(15):
            while len(received) < 20:
                received.append(await subscription.get())
        assert [(c.name, c.revision) for c in received] == [("c", r) for r in range(1, 21)]
        assert [c.sequence for c in received] == sorted({c.sequence for c in received})
        assert received == await all_changes(writer.store)
    finally:
        for m in managers:
            await m.close()


async def test_state_manager_works_unchanged(manager: StateManager) -> None:
    await manager.register("doc", state=ContextState(data={"title": "a", "tags": []}), schema={"type": "object"})
    await manager.update("doc", merge_patch_={"title": "b"}, expected_revision=1)
    await manager.update("doc", patch=[{"op": "add", "path": "/tags/-", "value": "x"}])
    assert (await manager.get("doc")).state.data == {"title": "b", "tags": ["x"]}
    assert await manager.diff("doc", 1, 3) == [
        {"op": "replace", "path": "/data/title", "value": "b"},
        {"op": "add", "path": "/data/tags/0", "value": "x"},
    ]
    rolled = await manager.rollback("doc", 1)
    assert rolled.context.revision == 4 and rolled.context.state.data == {"title": "a", "tags": []}
    _, _, old = await manager.read("doc", 2)
    assert old.data == {"title": "b", "tags": []}
    with pytest.raises(ConflictError):
        await manager.update("doc", data={}, expected_revision=2)
    assert [h.revision for h in await manager.history("doc", limit=2)] == [4, 3]
    page = await manager.list(limit=1)
    assert [c.name for c in page.contexts] == ["doc"] and page.next_cursor is None


# -- per-namespace summary (metrics of what a principal may read) -----------------------------


async def test_namespace_summary_counts_live_contexts_and_the_last_change_under_a_prefix(store: Store) -> None:
    assert await store.namespace_summary(NS, "") == (0, 0)
    for name in ("team.a", "team.b", "teamwork", "other"):
        await register(store, name)
    await register(store, "team.x", namespace="elsewhere")
    elsewhere_sequence = await store.last_sequence()
    await write(store, "team.a", {"n": 1})
    team_a_sequence = await store.last_sequence()
    await write(store, "other", {"n": 1})
    await register(store, "team.gone")
    await store.unregister(NS, "team.gone", None, purge=False, actor="t")
    gone_sequence = await store.last_sequence()
    await write(store, "other", {"n": 2})  # the store's latest change, outside the prefix

    assert await store.namespace_summary(NS, "team.") == (2, gone_sequence)
    assert await store.namespace_summary(NS, "team.a") == (1, team_a_sequence)
    assert await store.namespace_summary(NS, "team") == (3, gone_sequence)
    assert await store.namespace_summary(NS, "") == (4, await store.last_sequence())
    assert await store.namespace_summary("elsewhere", "") == (1, elsewhere_sequence)
    assert await store.namespace_summary("nobody", "") == (0, 0)
