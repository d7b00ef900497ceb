"""``migrate_context`` and ``register_context(state_format=...)`` through the SDK's in-memory client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from groundhog_mcp import ContextState, SQLiteStore, StateManager
from tests.server.conftest import call, fail
from tests.service.test_migration import DECLARATIVE, V3_SCHEMA, WITH_PLUGIN, v1, v3

COUNT = 250


@pytest.fixture
async def tasks(db_path: Path) -> Path:
    """COUNT contexts stored in format 1.0.0 of a 3.0.0 format, written before the server starts."""
    manager = StateManager(SQLiteStore(db_path, synchronous="NORMAL"))
    await manager.start()
    try:
        for i in range(COUNT):
            await manager.register(
                f"task-{i:03d}",
                settings={"state_format": DECLARATIVE},
                schema=V3_SCHEMA,
                state=ContextState(data=v1(i), version="1.0.0"),
            )
        await manager.register(
            "broken", settings={"state_format": WITH_PLUGIN}, state=ContextState(data=v1(7, email=False))
        )
    finally:
        await manager.close()
    return db_path


async def test_the_tool_is_listed_as_destructive(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    annotations = tools["migrate_context"].annotations
    assert annotations is not None and annotations.destructive_hint is True and annotations.read_only_hint is False
    assert "state_format" in tools["register_context"].input_schema["properties"]


async def test_read_upcasts_then_dry_run_then_migrate_with_progress(tasks: Path, client: Client) -> None:
    state = await call(client, "get_state", name="task-007")
    assert state["upcast_from"] == "1.0.0"
    assert state["state"]["version"] == "3.0.0" and state["state"]["data"] == v3(7)
    assert state["revision"] == 1
    resource = await client.read_resource("groundhog://contexts/task-007/state")
    document = json.loads(resource.contents[0].text)  # type: ignore[union-attr]
    assert document["state"]["version"] == "3.0.0" and document["state"]["data"] == v3(7)

    dry = await call(client, "migrate_context", prefix="task-", dry_run=True)
    assert (dry["dry_run"], dry["matched"], dry["migrated"], dry["unchanged"]) == (True, COUNT, COUNT, 0)
    assert len(dry["contexts"]) == 100 and dry["more_contexts"] == COUNT - 100
    first = dry["contexts"][0]
    assert (first["name"], first["from_version"], first["to_version"]) == ("task-000", "1.0.0", "3.0.0")
    assert {"op": "add", "path": "/data/priority", "value": "normal"} in first["patch"]
    assert (await call(client, "get_context", name="task-000"))["revision"] == 1  # the dry run wrote nothing

    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    result = await client.call_tool("migrate_context", {"prefix": "task-"}, progress_callback=on_progress)
    assert not result.is_error and result.structured_content is not None
    report = result.structured_content
    assert (report["dry_run"], report["matched"], report["migrated"]) == (False, COUNT, COUNT)
    assert report["contexts"][0]["revision"] == 2 and report["contexts"][0]["previous_revision"] == 1
    assert progress, "no progress notification arrived"
    assert progress[0][1] is None and "checked" in (progress[0][2] or "")
    assert progress[-1][:2] == (COUNT, COUNT) and progress[-1][2] == f"migrated {COUNT} of {COUNT} contexts"
    assert [p[0] for p in progress if p[1] is not None] == sorted(p[0] for p in progress if p[1] is not None)

    state = await call(client, "get_state", name="task-007")
    assert "upcast_from" not in state and state["revision"] == 2 and state["state"]["data"] == v3(7)
    history = await call(client, "get_history", name="task-007")
    assert [r["op"] for r in history["revisions"]] == ["migrate", "register"]
    old = await call(client, "get_state", name="task-007", revision=1)
    assert old["upcast_from"] == "1.0.0" and old["state"]["data"] == v3(7)  # past revisions read upcast
    diff = await call(client, "diff_states", name="task-007", from_revision=1)
    assert {"op": "remove", "path": "/data/title"} in diff["patch"]  # history itself is as stored


async def test_a_failing_upcaster_is_a_tool_error_naming_context_step_and_cause(tasks: Path, client: Client) -> None:
    text = await fail(client, "migrate_context", prefix="")
    assert "migration: context 'broken', step 2.0.0 -> 3.0.0: ValueError: owner 'owner 7' has no email" in text
    assert (await call(client, "get_context", name="task-000"))["revision"] == 1  # the batch changed nothing
    text = await fail(client, "get_state", name="broken")
    assert "context 'broken', step 2.0.0 -> 3.0.0" in text


async def test_register_with_a_state_format_and_its_errors(client: Client) -> None:
    created = await call(
        client,
        "register_context",
        name="t",
        state={"data": v3(1)},
        state_format=DECLARATIVE,
        json_schema=V3_SCHEMA,
    )
    assert created["state_version"] == "3.0.0"  # a state without a version is in the current format
    assert created["settings"]["state_format"]["version"] == "3.0.0"
    old = await call(
        client, "register_context", name="old", state={"data": v1(2), "version": "1.0.0"}, state_format="example-task"
    )
    assert old["state_version"] == "1.0.0"
    read = await call(client, "get_state", name="old")
    assert read["upcast_from"] == "1.0.0" and read["state"]["data"]["summary"] == "task 2"

    cycle = {
        "version": "3.0.0",
        "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": []}, {"from": "2.0.0", "to": "1.0.0", "patch": []}],
    }
    text = await fail(client, "register_context", name="c", state_format=cycle)
    assert "settings.state_format.migrations: a cycle: 1.0.0 -> 2.0.0 -> 1.0.0" in text
    text = await fail(client, "migrate_context")
    assert "name: give exactly one of name (one context) or prefix" in text
    text = await fail(client, "migrate_context", name="t", to_version="9.0.0")
    assert "context 't', no step: no migration path from format version 3.0.0 to 9.0.0" in text
    done = await call(client, "migrate_context", name="t")
    assert (done["migrated"], done["unchanged"]) == (0, 1)
    text = await fail(client, "update_state", name="t", data={"summary": "x"})
    assert "'owner_name' is a required property" in text
