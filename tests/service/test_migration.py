"""State format migration: declared formats, upcast on read, migrate_context, failures that change nothing.

The 1,000-context databases are built once per module (with ``synchronous=NORMAL`` to build them
quickly) and copied for each test, which then runs on its copy with the default settings.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from groundhog_mcp import (
    ContextConfig,
    ContextRegistry,
    ContextState,
    ContextTemplate,
    Event,
    MigrationError,
    SQLiteStore,
    StateManager,
    StateValidationError,
    WriteResult,
)
from groundhog_mcp.service.migration import format_of, load_format_file, parse_state_format

COUNT = 1000

RENAME_TITLE = [{"op": "move", "from": "/title", "path": "/summary"}]
SPLIT_OWNER_ADD_PRIORITY = [
    {"op": "move", "from": "/owner/name", "path": "/owner_name"},
    {"op": "move", "from": "/owner/email", "path": "/owner_email"},
    {"op": "remove", "path": "/owner"},
    {"op": "add", "path": "/priority", "value": "normal"},
]
OWNER = {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}
SCHEMAS = {
    "1.0.0": {"type": "object", "required": ["title", "owner"], "properties": {"title": {"type": "string"}}},
    "2.0.0": {"type": "object", "required": ["summary", "owner"], "properties": {"owner": OWNER}},
}
V3_SCHEMA = {
    "type": "object",
    "required": ["summary", "owner_name", "priority"],
    "properties": {"priority": {"enum": ["low", "normal", "high"]}},
}
# v1 -> v2 renames a key, v2 -> v3 splits a field and adds a default: declared at registration.
DECLARATIVE = {
    "version": "3.0.0",
    "migrations": [
        {"from": "1.0.0", "to": "2.0.0", "patch": RENAME_TITLE},
        {"from": "2.0.0", "to": "3.0.0", "patch": SPLIT_OWNER_ADD_PRIORITY},
    ],
    "schemas": SCHEMAS,
}
# The same chain with the v2 -> v3 step as a Python upcaster (tests/plugin_package: split-owner).
WITH_PLUGIN = {
    "version": "3.0.0",
    "migrations": [
        {"from": "1.0.0", "to": "2.0.0", "patch": RENAME_TITLE},
        {"from": "2.0.0", "to": "3.0.0", "plugin": "split-owner"},
    ],
    "schemas": SCHEMAS,
}


def v1(i: int, *, email: bool = True) -> dict[str, Any]:
    owner = {"name": f"owner {i}", "email": f"o{i}@example.com"} if email else {"name": f"owner {i}"}
    return {"title": f"task {i}", "owner": owner, "n": i}


def v3(i: int) -> dict[str, Any]:
    return {
        "summary": f"task {i}",
        "owner_name": f"owner {i}",
        "owner_email": f"o{i}@example.com",
        "priority": "normal",
        "n": i,
    }


def name(i: int) -> str:
    return f"task-{i:04d}"


def build(path: Path, state_format: dict[str, Any], data: Callable[[int], dict[str, Any]]) -> None:
    async def fill() -> None:
        manager = StateManager(SQLiteStore(path, synchronous="NORMAL"))
        await manager.start()
        try:
            for i in range(COUNT):
                await manager.register(
                    name(i),
                    settings={"state_format": state_format},
                    schema=V3_SCHEMA,
                    state=ContextState(data=data(i), version="1.0.0"),
                )
            await manager.register("other", state=ContextState(data={"x": 1}))  # declares no format
        finally:
            await manager.close()

    anyio.run(fill)


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table: what "nothing changed" is compared on."""
    with sqlite3.connect(path) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


@pytest.fixture(scope="module")
def declarative_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("declarative") / "template.sqlite"
    build(path, DECLARATIVE, v1)
    return path


@pytest.fixture(scope="module")
def plugin_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 500th context's owner has no email: the split-owner upcaster refuses it."""
    path = tmp_path_factory.mktemp("plugin") / "template.sqlite"
    build(path, WITH_PLUGIN, lambda i: v1(i, email=i != 499))
    return path


async def open_copy(template: Path, tmp_path: Path) -> tuple[Path, StateManager]:
    path = tmp_path / "copy.sqlite"
    shutil.copy(template, path)
    manager = StateManager(SQLiteStore(path, synchronous="NORMAL"))  # fsync per commit is not under test here
    await manager.start()
    return path, manager


@pytest.fixture
async def declared(declarative_db: Path, tmp_path: Path) -> AsyncGenerator[tuple[Path, StateManager]]:
    path, manager = await open_copy(declarative_db, tmp_path)
    try:
        yield path, manager
    finally:
        await manager.close()


@pytest.fixture
async def plugged(plugin_db: Path, tmp_path: Path) -> AsyncGenerator[tuple[Path, StateManager]]:
    path, manager = await open_copy(plugin_db, tmp_path)
    try:
        yield path, manager
    finally:
        await manager.close()


# -- lazily: upcast on read -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_reads_upcast_1000_old_states_without_touching_history_or_bytes(
    declared: tuple[Path, StateManager],
) -> None:
    path, manager = declared
    before = dump(path)
    for i in range(COUNT):
        context, revision, state = await manager.read(name(i))
        assert (revision, state.version, state.data) == (1, "3.0.0", v3(i))
        assert context.state.version == "1.0.0"  # the stored record is as written
    _, _, past, stored_version = await manager.read_upcast(name(7), 1)
    assert (past.data, stored_version) == (v3(7), "1.0.0")
    assert await manager.load_state((await manager.get(name(3))).id) == (await manager.read(name(3)))[2]
    assert [e.revision for e in await manager.history(name(5))] == [1]
    other = await manager.read("other")
    assert (other[2].version, other[2].data) == ("1.0.0", {"x": 1})  # no format declared: as stored
    assert dump(path) == before


@pytest.mark.anyio
async def test_a_write_applies_to_the_upcast_state_and_stores_the_current_format(
    declared: tuple[Path, StateManager],
) -> None:
    _, manager = declared
    result = await manager.update(name(1), merge_patch_={"priority": "high"}, expected_revision=1)
    assert result.context.state.version == "3.0.0"
    assert result.context.state.data == {**v3(1), "priority": "high"}
    old = await manager.store.read_revision(result.context.id, 1)
    assert old is not None and not isinstance(old, int) and old.state.data == v1(1)  # history untouched
    with pytest.raises(StateValidationError, match=r"state\.data\.priority: is not one of the 3 values"):
        await manager.update(name(2), patch=[{"op": "replace", "path": "/priority", "value": "urgent"}])


# -- eagerly: migrate_context ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_migrate_rewrites_1000_contexts_as_new_revisions_and_keeps_history(
    declared: tuple[Path, StateManager],
) -> None:
    _, manager = declared
    seen: list[tuple[int, int | None, str]] = []

    async def progress(done: int, total: int | None, message: str) -> None:
        seen.append((done, total, message))

    report = await manager.migrate(prefix="task-", progress=progress)
    assert (report.matched, report.migrated, report.unchanged, report.without_format) == (COUNT, COUNT, 0, 0)
    assert [c.name for c in report.contexts] == [name(i) for i in range(COUNT)]
    first = report.contexts[0]
    assert (first.from_version, first.to_version, first.revision, first.previous_revision) == ("1.0.0", "3.0.0", 2, 1)
    assert first.steps == ["1.0.0 -> 2.0.0", "2.0.0 -> 3.0.0"]
    assert {"op": "replace", "path": "/version", "value": "3.0.0"} in first.patch
    # progress: counting pages (total unknown), then writes with the total, ending at COUNT of COUNT
    assert seen[0][1] is None and seen[-1][:2] == (COUNT, COUNT)
    writes = [done for done, total, _ in seen if total == COUNT]
    assert writes == sorted(writes) and len(writes) >= 10

    for i in (0, 499, 999):
        stored = await manager.store.get("default", name(i))
        assert stored is not None
        assert (stored.revision, stored.state.version, stored.state.data) == (2, "3.0.0", v3(i))
        old = await manager.store.read_revision(stored.id, 1)
        assert old is not None and not isinstance(old, int)
        assert (old.state.version, old.state.data) == ("1.0.0", v1(i))  # history is never rewritten
        entries = await manager.history(name(i))
        assert [(e.revision, e.op) for e in entries] == [(2, "migrate"), (1, "register")]
    assert (await manager.read("other"))[1] == 1  # not selected by the prefix

    again = await manager.migrate(prefix="")
    assert (again.matched, again.migrated, again.unchanged, again.without_format) == (COUNT + 1, 0, COUNT, 1)


@pytest.mark.anyio
async def test_dry_run_shows_the_diff_per_context_and_changes_nothing(
    declared: tuple[Path, StateManager],
) -> None:
    path, manager = declared
    before = dump(path)
    report = await manager.migrate(prefix="task-", dry_run=True)
    assert report.dry_run and (report.matched, report.migrated) == (COUNT, COUNT)
    plan = {c.name: c for c in report.contexts}
    assert len(plan) == COUNT
    assert (plan[name(42)].revision, plan[name(42)].previous_revision) == (1, None)
    assert plan[name(42)].patch == [
        {"op": "remove", "path": "/data/title"},
        {"op": "remove", "path": "/data/owner"},
        {"op": "add", "path": "/data/summary", "value": "task 42"},
        {"op": "add", "path": "/data/owner_name", "value": "owner 42"},
        {"op": "add", "path": "/data/owner_email", "value": "o42@example.com"},
        {"op": "add", "path": "/data/priority", "value": "normal"},
        {"op": "replace", "path": "/version", "value": "3.0.0"},
    ]
    assert dump(path) == before


@pytest.mark.anyio
async def test_an_upcaster_failing_on_the_500th_context_leaves_every_context_unchanged(
    plugged: tuple[Path, StateManager],
) -> None:
    path, manager = plugged
    before = dump(path)
    with pytest.raises(MigrationError) as failure:
        await manager.migrate(prefix="task-")
    message = str(failure.value)
    assert "context 'task-0499'" in message
    assert "step 2.0.0 -> 3.0.0" in message
    assert "ValueError: owner 'owner 499' has no email" in message
    assert (failure.value.context, failure.value.step) == ("task-0499", ("2.0.0", "3.0.0"))
    assert dump(path) == before
    # Lazily the Python upcaster serves the other contexts; the broken one fails the same way.
    assert (await manager.read(name(498)))[2].data == v3(498)
    with pytest.raises(MigrationError, match=r"'task-0499', step 2.0.0 -> 3.0.0: ValueError"):
        await manager.read(name(499))
    with pytest.raises(MigrationError, match="'task-0499'"):
        await manager.migrate(name(499), dry_run=True)
    assert dump(path) == before


# -- where formats come from ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_format_from_a_schemas_file(manager: StateManager) -> None:
    fmt = load_format_file("example-task")
    assert (fmt.version, fmt.name, fmt.versions()) == ("3.0.0", "example-task", ["1.0.0", "2.0.0", "3.0.0"])
    old = {"title": "write docs", "owner": {"name": "Ada", "email": "ada@example.com"}}
    await manager.register("t", settings={"state_format": "example-task"}, state=ContextState(data=old))
    expected = {"summary": "write docs", "owner_name": "Ada", "owner_email": "ada@example.com", "priority": "normal"}
    assert (await manager.read("t"))[2].data == expected
    report = await manager.migrate("t")
    assert report.contexts[0].revision == 2 and (await manager.store.get("default", "t")) is not None
    with pytest.raises(StateValidationError, match=r"state\.data: 'owner' is a required property"):
        await manager.register("u", settings={"state_format": "example-task"}, state=ContextState(data={"title": "x"}))
    with pytest.raises(StateValidationError, match=r"no format file schemas/formats/nope\.json"):
        await manager.register("v", settings={"state_format": {"name": "nope"}})
    with pytest.raises(StateValidationError, match="a named format takes only name"):
        await manager.register("w", settings={"state_format": {"name": "example-task", "version": "4.0.0"}})


@pytest.mark.anyio
async def test_a_class_upcaster_from_the_entry_point_group(manager: StateManager) -> None:
    fmt = {"version": "2.0.0", "migrations": [{"from": "1.0.0", "to": "2.0.0", "plugin": "split-full-name"}]}
    await manager.register("people", settings={"state_format": fmt}, state=ContextState(data={"name": "Ada Lovelace"}))
    assert (await manager.read("people"))[2].data == {"first_name": "Ada", "last_name": "Lovelace"}
    with pytest.raises(StateValidationError, match=r"migrations\.0\.plugin: no upcaster plugin 'missing'"):
        await manager.register(
            "x",
            settings={"state_format": {**fmt, "migrations": [{"from": "1.0.0", "to": "2.0.0", "plugin": "missing"}]}},
        )


@pytest.mark.parametrize(
    ("migrations", "message"),
    [
        (
            [{"from": "1.0.0", "to": "2.0.0", "patch": []}, {"from": "2.0.0", "to": "1.0.0", "patch": []}],
            "a cycle: 1.0.0 -> 2.0.0 -> 1.0.0",
        ),
        (
            [{"from": "1.0.0", "to": "2.0.0", "patch": []}],
            "a gap: the chain 1.0.0 -> 2.0.0 stops at 2.0.0, which has no step out of it and is not the current "
            "version 3.0.0",
        ),
        (
            [{"from": "1.0.0", "to": "3.0.0", "patch": []}, {"from": "1.0.0", "to": "2.0.0", "patch": []}],
            "a second step out of 1.0.0",
        ),
        ([{"from": "3.0.0", "to": "4.0.0", "patch": []}], "a step out of the current version"),
        ([{"from": "1.0.0", "to": "3.0.0", "patch": [{"op": "frobnicate", "path": "/a"}]}], "not a valid RFC 6902"),
        ([{"from": "1.0.0", "to": "3.0.0"}], "JSON Schema rule 'oneOf'"),
    ],
)
def test_a_broken_chain_is_an_error_at_registration(migrations: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(StateValidationError, match=r"settings\.state_format") as failure:
        parse_state_format({"version": "3.0.0", "migrations": migrations})
    assert message in str(failure.value)


@pytest.mark.anyio
async def test_registration_checks_the_declaration_and_the_initial_state(manager: StateManager) -> None:
    gap = {"version": "3.0.0", "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": []}]}
    with pytest.raises(StateValidationError, match="a gap"):
        await manager.register("a", settings={"state_format": gap})
    with pytest.raises(StateValidationError, match=r"schemas\.0\.5\.0|a gap: the chain 0\.5\.0"):
        await manager.register("b", settings={"state_format": {"version": "1.0.0", "schemas": {"0.5.0": {}}}})
    with pytest.raises(StateValidationError, match=r"state\.version: 9\.9\.9 is not a format version"):
        await manager.register(
            "c", settings={"state_format": DECLARATIVE}, state=ContextState(data={}, version="9.9.9")
        )
    assert await manager.store.get("default", "a") is None
    created = await manager.register("d", settings={"state_format": {"version": "2.0.0"}})
    assert isinstance(created, WriteResult)
    assert created.context.state.version == "2.0.0"  # an empty initial state is in the current format


# -- schemas are versioned with the format --------------------------------------------------------


@pytest.mark.anyio
async def test_each_state_is_validated_against_the_schema_of_its_format_version(manager: StateManager) -> None:
    await manager.register(
        "t", settings={"state_format": DECLARATIVE}, schema=V3_SCHEMA, state=ContextState(data=v1(1))
    )
    # an old-format write is checked against its own version's schema ...
    with pytest.raises(StateValidationError, match=r"'title' is a required property"):
        await manager.update("t", data={"summary": "x", "owner": {}}, version="1.0.0")
    with pytest.raises(StateValidationError, match=r"owner.name: 'name' is a required property|'name' is a required"):
        await manager.update("t", data={"summary": "x", "owner": {}}, version="2.0.0")
    written = await manager.update("t", data={"summary": "x", "owner": {"name": "n"}}, version="2.0.0")
    assert written.context.state.version == "2.0.0"
    # ... and a current-format write against the current one (the context's schema)
    with pytest.raises(StateValidationError, match=r"'owner_name' is a required property"):
        await manager.update("t", data={"summary": "x", "priority": "low"})
    # an upcast result is checked against the target version's schema
    breaking = {
        "version": "2.0.0",
        "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": [{"op": "add", "path": "/count", "value": "x"}]}],
        "schemas": {"2.0.0": {"properties": {"count": {"type": "integer"}}}},
    }
    await manager.register("b", settings={"state_format": breaking}, state=ContextState(data={}))
    with pytest.raises(MigrationError) as failure:
        await manager.migrate("b")
    assert "context 'b', step 1.0.0 -> 2.0.0: the result breaks the schema of format 2.0.0" in str(failure.value)
    assert "must be of type 'integer' (got a string)" in str(failure.value)
    assert (await manager.get("b")).revision == 1


@pytest.mark.anyio
async def test_migrate_to_an_intermediate_version_and_rollback_to_an_old_revision(
    declared: tuple[Path, StateManager],
) -> None:
    _, manager = declared
    report = await manager.migrate(name(3), to_version="2.0.0")
    assert report.contexts[0].to_version == "2.0.0"
    stored = await manager.get(name(3))
    assert stored.state.version == "2.0.0" and stored.state.data == {
        "summary": "task 3",
        "owner": v1(3)["owner"],
        "n": 3,
    }
    assert (await manager.read(name(3)))[2].data == v3(3)  # reads still upcast the rest of the way
    with pytest.raises(MigrationError, match=r"no migration path from format version 2\.0\.0 to 1\.0\.0"):
        await manager.migrate(name(3), to_version="1.0.0")
    await manager.migrate(name(3))
    back = await manager.rollback(name(3), 1)
    assert back.context.state.version == "1.0.0"  # the old revision restored as written
    assert (await manager.read(name(3)))[2].data == v3(3)


@pytest.mark.anyio
async def test_merge_upcasts_its_inputs_first(declared: tuple[Path, StateManager]) -> None:
    _, manager = declared
    await manager.migrate(name(1))  # one input stored at 3.0.0, the other still at 1.0.0
    outcome = await manager.merge([{"context": name(1)}, {"context": name(2)}])
    assert outcome.state is not None
    assert outcome.state.version == "3.0.0" and outcome.state.data == v3(2)
    written = await manager.merge([{"context": name(4)}, {"context": name(5)}], target=name(4))
    assert written.write is not None and written.write.context.state.version == "3.0.0"


def test_format_of_settings_without_a_format_is_none() -> None:
    assert format_of({}) is None and format_of({"keep_revisions": 5}) is None


@pytest.mark.anyio
async def test_selection_arguments_are_checked(manager: StateManager) -> None:
    with pytest.raises(StateValidationError, match="give exactly one of name"):
        await manager.migrate()
    with pytest.raises(StateValidationError, match="expected_revision: only used with name"):
        await manager.migrate(prefix="a", expected_revision=1)
    await manager.register("plain")
    with pytest.raises(MigrationError, match="declares no state format"):
        await manager.migrate("plain")


@pytest.mark.anyio
async def test_events_and_the_library_api_see_the_upcast_state(manager: StateManager) -> None:
    registry = ContextRegistry(manager)
    context = ContextTemplate(
        ContextConfig(name="lib", settings={"state_format": DECLARATIVE}, state=ContextState(data=v1(1)))
    )
    await registry.register_context(context)
    assert (await context.get_state()).data == v3(1)
    await manager.register(
        "counted",
        settings={"state_format": DECLARATIVE},
        state=ContextState(data=v1(2)),
        handlers={"bump": {"action": "increment", "path": "/n"}},
    )
    result = await manager.emit_event("counted", Event(type="bump"))
    stored = await manager.get("counted")
    assert result.revision == 2 and stored.state.version == "3.0.0" and stored.state.data == {**v3(2), "n": 3}
    # save_state stores a state as given: an old format version is checked against its own schema
    await manager.save_state(stored.id, ContextState(data=v1(5), version="1.0.0"))
    assert (await manager.load_state(stored.id)).data == v3(5)
    with pytest.raises(StateValidationError, match=r"state\.data: 'title' is a required property"):
        await manager.save_state(stored.id, ContextState(data={}, version="1.0.0"))
