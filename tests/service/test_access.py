"""Grants: read | write | admin on context name prefixes, enforced by StateManager.authorize.

A context the principal may not read answers exactly like a missing one (same error text, the
same store lookups); a readable one it may not write answers with the missing grant's name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import AccessDeniedError, ContextState, NotFoundError, StateManager
from groundhog_mcp.errors import ContextError, EventHandlingError
from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.service import Event, WriteResult
from groundhog_mcp.store import SQLiteStore, Store
from tests.conformance.conftest import Kind, MakeBackend


def principal(name: str, *grants: str, namespace: str = "default") -> Principal:
    return Principal(name=name, namespace=namespace, grants=tuple(Grant.parse(g) for g in grants))


async def _register(manager: StateManager, name: str, data: dict[str, Any] | None = None) -> WriteResult:
    result = await manager.register(name, state=ContextState(data=data or {"n": 0}))
    assert isinstance(result, WriteResult)
    return result


def test_rights_nest_and_prefixes_match() -> None:
    reader = principal("r", "read:team.")
    assert reader.allows("read", "team.notes") and not reader.allows("read", "other")
    assert not reader.allows("write", "team.notes")
    admin = principal("a", "admin:team.")
    assert all(admin.allows(right, "team.x") for right in ("read", "write", "admin"))
    assert not admin.allows("read", "tea")
    assert Principal().allows("admin", "anything")  # the default local principal: admin on everything
    assert principal("p", "read:a.", "read:a.b", "write:c", "read:").prefixes("read") == ("",)
    assert principal("p", "read:a.b", "read:a.", "write:c").prefixes("read") == ("a.", "c")
    assert principal("p", "read:a.b", "write:c").prefixes("write") == ("c",)


async def test_reader_reads_but_every_write_names_the_missing_grant(manager: StateManager) -> None:
    await _register(manager, "team.notes")
    reader = manager.with_principal(principal("R", "read:team."))
    assert (await reader.get("team.notes")).revision == 1
    _, revision, state = await reader.read("team.notes")
    assert revision == 1 and state.data == {"n": 0}
    assert [h.revision for h in await reader.history("team.notes")] == [1]

    notes = "team.notes"
    writes: list[tuple[str, str, Callable[[], Awaitable[object]]]] = [
        ("write", notes, lambda: reader.update(notes, merge_patch_={"n": 1})),
        ("write", "team.new", lambda: reader.update("team.new", data={}, expected_revision=0)),
        ("write", "team.new", lambda: reader.register("team.new")),
        ("write", notes, lambda: reader.rollback(notes, 1)),
        ("write", notes, lambda: reader.emit_event(notes, Event("ping"))),
        ("write", notes, lambda: reader.merge([{"context": notes}, {"context": notes}], target=notes)),
        ("admin", notes, lambda: reader.unregister(notes)),
    ]
    for right, name, write in writes:
        with pytest.raises(AccessDeniedError) as caught:
            await write()
        assert str(caught.value) == f"access: the {right} grant on {name!r} is missing for principal 'R'"
    assert (await manager.get("team.notes")).revision == 1  # nothing was written

    writer = manager.with_principal(principal("W", "write:team."))
    await writer.update("team.notes", merge_patch_={"n": 2})
    with pytest.raises(AccessDeniedError, match=r"the admin grant on 'team\.notes' is missing for principal 'W'"):
        await writer.unregister("team.notes")
    await manager.with_principal(principal("A", "admin:team.")).unregister("team.notes")


class CountingCipher:
    """A real keyring that records each record it opens (decrypts) in the store's call list."""

    def __init__(self, inner: Keyring, calls: list[str]) -> None:
        self._inner = inner
        self._calls = calls

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        self._calls.append("cipher.open")
        return self._inner.open(blob, aad)


_BACKGROUND = frozenset({"poll_changes"})


class CountingStore:
    """A real SQLite store that records which of its methods were awaited, in order (and, when
    encrypted, every record it decrypts: the decoding work a call does)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner
        self.calls: list[str] = []
        cipher = getattr(inner, "cipher", None)
        if cipher is not None:
            inner.cipher = CountingCipher(cipher, self.calls)  # type: ignore[attr-defined]

    def __getattr__(self, attribute: str) -> Any:
        value = getattr(self._inner, attribute)
        if not callable(value) or attribute.startswith("_"):
            return value

        def counted(*args: Any, **kwargs: Any) -> Any:
            # The change feed's poller polls on its own timer (other processes' writes), whatever
            # a request does: not part of any request's work.
            if attribute not in _BACKGROUND:
                self.calls.append(attribute)
            return value(*args, **kwargs)

        return counted


async def test_a_denied_write_looks_nothing_up(db_path: Path) -> None:
    store = CountingStore(SQLiteStore(db_path))
    owner = StateManager(store)  # type: ignore[arg-type]
    owner.denial_summary_interval = 3600  # no background summary row in the middle of a count
    owner.denials.window = 0.0  # every denial is due its own audit row
    await owner.start()
    try:
        await _register(owner, "secret")
        outsider = owner.with_principal(principal("R", "read:shared."))
        # Writes to a name it may not read: the grant is missing either way, nothing is looked up
        # (the one store call is the denial's audit row, the same for both names).
        for name in ("secret", "absent"):
            store.calls.clear()
            with pytest.raises(AccessDeniedError, match=f"the write grant on '{name}' is missing"):
                await outsider.update(name, data={})
            assert store.calls == ["append_audit"]
    finally:
        await owner.close()


@pytest.mark.parametrize("itemized", [True, False], ids=["denial-itemized", "denial-counted"])
@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_denied_read_does_the_store_work_of_a_missing_one(
    make_backend: MakeBackend, kind: Kind, itemized: bool
) -> None:
    """Every read path checks the grant on the name before it reads anything: a large existing
    context the reader may not read is neither read nor decrypted, exactly like a missing name.
    (Itemized: each denial writes its audit row; counted: the principal's minute already has its
    row, so a denial touches no store at all.)"""
    backend = await make_backend(kind)
    store = CountingStore(backend.store(cipher=Keyring(parse_key(generate_key(), source="test"))))
    owner = StateManager(store)  # type: ignore[arg-type]
    owner.denial_summary_interval = 3600  # no background summary row in the middle of a count
    await owner.start()
    try:
        big = {"blob": "x" * 500_000, "items": list(range(20_000))}
        await _register(owner, "secret", big)
        await owner.update("secret", merge_patch_={"n": 1})
        handlers = {"inc": {"action": "increment", "path": "/n", "max_attempts": 1}}
        await owner.register("secret.events", state=ContextState(data={"n": "NaN"}), handlers=handlers)
        await _register(owner, "shared.doc")
        with pytest.raises(EventHandlingError):
            await owner.emit_event("secret.events", Event("inc", {"pad": "y" * 100_000}))
        letter_id = (await owner.list_dead_letters(name="secret.events"))[0].id
        context_id = (await owner.get("secret")).id
        reader = owner.with_principal(principal("R", "read:shared."))
        if itemized:
            owner.denials.window = 0.0  # every denial is due its own row
        else:
            with pytest.raises(NotFoundError):
                await reader.get("opens.the.minute")  # the minute's row; later denials are counted

        by_name: list[tuple[str, Callable[[str], Awaitable[object]]]] = [
            ("get", reader.get),
            ("read", reader.read),
            ("read at a revision", lambda name: reader.read(name, 1)),
            ("read_upcast", reader.read_upcast),
            ("history", reader.history),
            ("diff", lambda name: reader.diff(name, 1)),
            ("check", lambda name: reader.check(name, data={})),
            ("collect_metrics", lambda name: reader.collect_metrics([name])),
            ("merge input", lambda name: reader.merge([{"context": name}, {"context": "shared.doc"}])),
            (
                "merge input at a revision",
                lambda name: reader.merge([{"context": "shared.doc"}, {"context": name, "revision": 1}]),
            ),
            (
                "merge base",
                lambda name: reader.merge(
                    [{"context": "shared.doc"}, {"context": "shared.doc"}], strategy="three_way", base={"context": name}
                ),
            ),
            ("list_dead_letters", lambda name: reader.list_dead_letters(name=f"{name}.events")),
        ]
        absent_id = uuid.uuid4()
        by_id: list[tuple[str, Callable[[str], Awaitable[object]]]] = [
            ("load_state", lambda name: reader.load_state(context_id if name == "secret" else absent_id)),
            ("replay_dead_letter", lambda name: reader.replay_dead_letter(letter_id if name == "secret" else 999)),
        ]
        for label, operation in by_name + by_id:
            answers: list[tuple[str, str, list[str]]] = []
            for name in ("secret", "absent"):
                store.calls.clear()
                try:
                    outcome = repr(await operation(name))
                except ContextError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                for varying in (name, str(context_id), str(absent_id), f"#{letter_id}", "#999"):
                    outcome = outcome.replace(varying, "X")
                answers.append((label, outcome, store.calls[:]))
            assert answers[0] == answers[1], answers
            if not label.startswith("merge"):  # (a merge reads and decrypts its readable input)
                assert "cipher.open" not in answers[0][2], answers
        # Exactly the denial's audit row (or nothing), nothing else, on the simple paths.
        store.calls.clear()
        with pytest.raises(NotFoundError):
            await reader.read("secret")
        assert store.calls == (["append_audit"] if itemized else [])
    finally:
        await owner.close()


async def test_lists_feeds_and_metrics_show_only_readable_contexts(manager: StateManager) -> None:
    for name in ("a.1", "a.2", "b.1", "c.1", "c.2", "c.3", "d.1"):
        await _register(manager, name)
    viewer = manager.with_principal(principal("V", "read:a.", "read:c.", "write:c.3"))
    names: list[str] = []
    cursor: str | None = None
    while True:  # pages of two, across the two readable prefixes, in name order
        page = await viewer.list(cursor=cursor, limit=2)
        names += [c.name for c in page.contexts]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert names == ["a.1", "a.2", "c.1", "c.2", "c.3"]
    assert [c.name for c in (await viewer.list(prefix="c.2")).contexts] == ["c.2"]
    assert [c.name for c in (await viewer.list(prefix="b")).contexts] == []
    assert [c.name for c in (await viewer.list(prefix="")).contexts] == names

    await manager.update("c.1", merge_patch_={"n": 1})
    await manager.update("b.1", merge_patch_={"n": 1})  # the store's latest change, not readable
    changes = await viewer.changes_after(0)
    assert {c.name for c in changes} == set(names)
    assert "b.1" not in {c.name for c in changes}
    found, _ = await viewer.wait_for_changes(["b.1", "c.1"], after_sequence=0, timeout=0)
    assert [(c.name, c.op) for c in found] == [("c.1", "register"), ("c.1", "update")]

    server, contexts = await viewer.collect_metrics()
    assert [c.name for c in contexts] == names
    assert server["contexts"] == 5
    c1_sequence = max(c.sequence for c in changes if c.name == "c.1")
    assert server["last_sequence"] == c1_sequence  # b.1's later write does not show
    everything, _ = await manager.collect_metrics()
    assert everything["contexts"] == 7 and everything["last_sequence"] > 0


async def test_metrics_of_another_namespace_are_not_counted(manager: StateManager) -> None:
    await _register(manager, "mine")
    other = manager.with_principal(principal("B", "admin:", namespace="other"))
    server, contexts = await other.collect_metrics()
    assert contexts == [] and server["contexts"] == 0 and server["last_sequence"] == 0
    manager.metrics.count_error("NotFoundError", namespace="default")
    server, _ = await other.collect_metrics()
    assert server["errors"] == {}
    server, _ = await manager.collect_metrics()
    assert server["errors"] == {"NotFoundError": 1} and server["contexts"] == 1


async def test_dead_letters_of_unreadable_contexts_are_missing(manager: StateManager) -> None:
    handlers = {"inc": {"action": "increment", "path": "/n", "max_attempts": 1}}
    for name in ("hidden", "open.one"):
        await manager.register(name, state=ContextState(data={"n": "not a number"}), handlers=handlers)
        with pytest.raises(EventHandlingError, match="dead letter"):
            await manager.emit_event(name, Event("inc"))
    hidden_id, open_id = (letter.id for letter in await manager.list_dead_letters())
    reader = manager.with_principal(principal("R", "read:open."))
    assert [letter.name for letter in await reader.list_dead_letters(limit=1)] == ["open.one"]
    assert await reader.list_dead_letters(name="hidden") == []
    with pytest.raises(NotFoundError) as hidden:
        await reader.replay_dead_letter(hidden_id)
    with pytest.raises(NotFoundError) as absent:
        await reader.replay_dead_letter(999)
    assert str(hidden.value).replace(str(hidden_id), "N") == str(absent.value).replace("999", "N")
    with pytest.raises(AccessDeniedError, match=r"the write grant on 'open\.one' is missing for principal 'R'"):
        await reader.replay_dead_letter(open_id)


async def test_migrate_needs_admin_and_never_selects_what_it_cannot_read(manager: StateManager) -> None:
    state_format = {
        "version": "2.0.0",
        "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": [{"op": "add", "path": "/v2", "value": True}]}],
    }
    for context in ("team.a", "team.b", "secret.c"):
        await manager.register(
            context, settings={"state_format": state_format}, state=ContextState(data={"n": 0}, version="1.0.0")
        )
    writer = manager.with_principal(principal("W", "write:team."))
    with pytest.raises(AccessDeniedError, match=re.escape("the admin grant on 'team.a' is missing for principal 'W'")):
        await writer.migrate("team.a")
    with pytest.raises(AccessDeniedError, match=re.escape("admin grant on 'team.a'")):
        await writer.migrate(prefix="team.")
    # Admin on team.a only: a prefix that also selects the readable team.b is refused whole.
    partial = manager.with_principal(principal("P", "admin:team.a", "read:team."))
    with pytest.raises(AccessDeniedError, match=re.escape("admin grant on 'team.b'")):
        await partial.migrate(prefix="")
    assert (await manager.get("team.a")).revision == 1  # nothing was written
    # Admin on team.: secret.c is not readable, so it is not selected, not refused, not migrated.
    team_admin = manager.with_principal(principal("T", "admin:team."))
    report = await team_admin.migrate(prefix="")
    assert report.matched == 2 and report.migrated == 2, report
    assert (await manager.get("secret.c")).revision == 1
    assert [(await manager.get(n)).revision for n in ("team.a", "team.b")] == [2, 2]  # one migrate revision each
