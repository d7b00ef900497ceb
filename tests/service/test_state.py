"""StateManager behaviour on a real SQLite file: writes, CAS, validation, history."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from groundhog_mcp import (
    ConflictError,
    ContextState,
    NotFoundError,
    StateManager,
    StateUpdateError,
    StateValidationError,
)
from groundhog_mcp.service import WriteResult


def _raw_row(db_path: Path, name: str) -> tuple[object, ...]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute("SELECT revision, state FROM contexts WHERE name = ?", (name,)).fetchone()


async def _register(manager: StateManager, name: str, data: dict[str, object], **kwargs: object) -> WriteResult:
    result = await manager.register(name, state=ContextState(data=data), **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, WriteResult)
    return result


async def test_register_starts_at_revision_one_and_get_or_create_returns_existing(manager: StateManager) -> None:
    created = await _register(manager, "notes", {"a": 1})
    assert created.context.revision == 1
    assert created.change.op == "register"
    again = await manager.register("notes", if_exists="return")
    assert not isinstance(again, WriteResult)
    assert again.id == created.context.id and again.revision == 1
    with pytest.raises(ConflictError, match="already exists"):
        await manager.register("notes")


async def test_update_modes_and_applied_diff(manager: StateManager) -> None:
    await _register(manager, "c", {"a": 1, "list": [1]})
    replaced = await manager.update("c", data={"b": 2}, expected_revision=1)
    assert replaced.context.state.data == {"b": 2}
    assert {"op": "remove", "path": "/data/a"} in replaced.change.patch
    merged = await manager.update("c", merge_patch_={"b": None, "c": {"d": 1}}, expected_revision=2)
    assert merged.context.state.data == {"c": {"d": 1}}
    patched = await manager.update(
        "c", patch=[{"op": "test", "path": "/c/d", "value": 1}, {"op": "add", "path": "/e", "value": [1]}]
    )
    assert patched.context.state.data == {"c": {"d": 1}, "e": [1]}
    assert patched.context.revision == 4
    meta = await manager.update("c", metadata={"owner": "me"})
    assert meta.context.state.metadata == {"owner": "me"} and meta.context.state.data == patched.context.state.data


async def test_exactly_one_update_mode(manager: StateManager) -> None:
    await _register(manager, "c", {})
    with pytest.raises(StateValidationError, match="exactly one of data"):
        await manager.update("c", data={}, merge_patch_={})
    with pytest.raises(StateValidationError, match="got none"):
        await manager.update("c")


async def test_failed_test_op_changes_nothing(manager: StateManager, db_path: Path) -> None:
    await _register(manager, "c", {"x": 1})
    before = _raw_row(db_path, "c")
    with pytest.raises(StateUpdateError, match="'test' operation failed"):
        await manager.update(
            "c", patch=[{"op": "add", "path": "/y", "value": 2}, {"op": "test", "path": "/x", "value": 99}]
        )
    assert _raw_row(db_path, "c") == before


async def test_conflict_reports_current_revision_and_missed_diff(manager: StateManager) -> None:
    await _register(manager, "c", {"n": 0})
    await manager.update("c", data={"n": 1}, expected_revision=1)
    await manager.update("c", data={"n": 2}, expected_revision=2)
    with pytest.raises(ConflictError) as caught:
        await manager.update("c", data={"n": 99}, expected_revision=1)
    error = caught.value
    assert error.current_revision == 3 and error.expected_revision == 1
    assert error.missed_patch == [{"op": "replace", "path": "/data/n", "value": 2}]
    assert "is at revision 3" in str(error) and '"/data/n"' in str(error)
    assert (await manager.get("c")).state.data == {"n": 2}


async def test_expected_revision_zero_is_create_only(manager: StateManager) -> None:
    created = await manager.update("fresh", data={"a": 1}, expected_revision=0)
    assert created.context.revision == 1 and created.context.state.data == {"a": 1}
    with pytest.raises(ConflictError, match="already exists"):
        await manager.update("fresh", data={"a": 2}, expected_revision=0)


async def test_update_of_missing_context_is_not_found(manager: StateManager) -> None:
    with pytest.raises(NotFoundError, match="no context named 'ghost'"):
        await manager.update("ghost", data={})


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_nested(65), "data" + ".a" * 64 + ": nesting depth 65 exceeds limit 64"),
        ({"x": float("nan")}, "data.x: nan is not a JSON number"),
        ({"x": [float("inf")]}, "data.x.0: inf is not a JSON number"),
        ({"x": 2**70}, "data.x: integer out of range"),
        ({"x": "\ud800"}, "data.x: string contains a lone surrogate"),
        ({"\udfff": 1}, "object key contains a lone surrogate"),
    ],
)
async def test_invalid_values_are_rejected_with_pointer_rule_and_limit(
    manager: StateManager, db_path: Path, data: dict[str, object], message: str
) -> None:
    await _register(manager, "c", {"ok": True})
    before = _raw_row(db_path, "c")
    with pytest.raises(StateValidationError) as caught:
        await manager.update("c", data=data)
    assert message in str(caught.value)
    assert _raw_row(db_path, "c") == before


async def test_depth_64_is_accepted(manager: StateManager) -> None:
    await _register(manager, "c", _nested(64))
    _, _, state = await manager.read("c")
    assert state.data == _nested(64)


async def test_state_size_limit(manager: StateManager) -> None:
    await _register(manager, "c", {})
    with pytest.raises(StateValidationError, match=r"state: serialised size \d+ bytes exceeds limit 1048576 bytes"):
        await manager.update("c", data={"blob": "x" * (1024 * 1024)})


async def test_json_schema_is_enforced_with_pointers(manager: StateManager, db_path: Path) -> None:
    schema = {
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["count"],
    }
    await _register(manager, "c", {"count": 0}, schema=schema)
    before = _raw_row(db_path, "c")
    with pytest.raises(StateValidationError) as caught:
        await manager.update("c", data={"count": -1, "tags": ["a", 2]})
    text = str(caught.value)
    assert "state.data.count: must be at least 0 (JSON Schema rule 'minimum')" in text
    assert "state.data.tags.1: must be of type 'string' (got an integer)" in text
    assert _raw_row(db_path, "c") == before
    _, issues = await manager.check("c", data={"tags": []})
    assert [(i.pointer, "required" in i.message) for i in issues] == [("/data", True)]


async def test_invalid_schema_is_rejected_at_registration(manager: StateManager) -> None:
    with pytest.raises(StateValidationError, match=r"schema.*not a valid JSON Schema"):
        await manager.register("c", schema={"type": "no-such-type"})


async def test_initial_state_must_satisfy_the_schema(manager: StateManager) -> None:
    with pytest.raises(StateValidationError, match="required"):
        await manager.register("c", state=ContextState(data={}), schema={"required": ["x"]})
    with pytest.raises(NotFoundError):
        await manager.get("c")


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "a b", "x" * 129, "é", "a\n"])
async def test_bad_names_are_rejected(manager: StateManager, name: str) -> None:
    with pytest.raises(StateValidationError, match=r"name: must match \^\[A-Za-z0-9._-\]\{1,128\}\$"):
        await manager.register(name)


async def test_history_diff_and_rollback(manager: StateManager) -> None:
    await _register(manager, "c", {"v": 1})
    for v in (2, 3, 4):
        await manager.update("c", data={"v": v})
    entries = await manager.history("c", limit=2)
    assert [e.revision for e in entries] == [4, 3]
    older = await manager.history("c", before=3, limit=10)
    assert [e.revision for e in older] == [2, 1] and older[-1].op == "register"
    assert await manager.diff("c", 1, 3) == [{"op": "replace", "path": "/data/v", "value": 3}]
    rolled = await manager.rollback("c", 2, expected_revision=4)
    assert rolled.context.revision == 5 and rolled.context.state.data == {"v": 2}
    assert rolled.change.op == "rollback"
    _, at, state = await manager.read("c", 4)
    assert at == 4 and state.data == {"v": 4}
    with pytest.raises(NotFoundError, match="has no revision 9"):
        await manager.read("c", 9)


async def test_list_pages_with_cursor_and_prefix(manager: StateManager) -> None:
    for i in range(7):
        await _register(manager, f"team.{i}", {})
    await _register(manager, "other", {})
    names: list[str] = []
    cursor = None
    while True:
        page = await manager.list(prefix="team.", cursor=cursor, limit=3)
        names += [c.name for c in page.contexts]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert names == [f"team.{i}" for i in range(7)]
    with pytest.raises(StateValidationError, match="cursor: not a cursor this server issued"):
        await manager.list(cursor="!!!")
    with pytest.raises(StateValidationError, match="limit: must be between 1 and 100; got 101"):
        await manager.list(limit=101)


async def test_merge_states_folds_in_order(manager: StateManager) -> None:
    a = ContextState(data={"x": 1, "keep": {"a": 1}}, version="1.0.0")
    b = ContextState(data={"x": 2, "keep": {"b": 2}}, metadata={"m": 1}, version="1.2.0")
    merged = await manager.merge_states([a, b])
    assert merged.data == {"x": 2, "keep": {"a": 1, "b": 2}}
    assert merged.metadata == {"m": 1} and merged.version == "1.2.0"
    with pytest.raises(StateValidationError, match="at least 2"):
        await manager.merge_states([a])


def test_context_state_values() -> None:
    state = ContextState.new()
    changed = state.with_data("k", {"v": 1})
    assert state.data == {} and changed.data == {"k": {"v": 1}}
    assert changed == ContextState(data={"k": {"v": 1}}, timestamp=state.timestamp)
    assert changed != state
    assert state.timestamp.tzinfo is not None and state.timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="semantic version"):
        ContextState(version="1.0")
    assert ContextState.from_json(changed.to_json()) == changed


async def test_revision_of_an_earlier_registration_is_not_called_compacted(manager: StateManager) -> None:
    await _register(manager, "b", {"v": 1})
    await manager.update("b", data={"v": 2})
    await manager.unregister("b")
    await _register(manager, "b", {"v": "new"})
    with pytest.raises(NotFoundError, match="belongs to an earlier registration") as caught:
        await manager.read("b", 2)
    assert "compacted" not in str(caught.value)


async def test_remote_schema_references_are_never_fetched(manager: StateManager) -> None:
    schema = {"$ref": "http://127.0.0.1:9/never-fetched.json"}
    refused = r"\$ref that cannot be resolved .* remote references are never fetched"
    with pytest.raises(StateValidationError, match=refused):
        await manager.register("c", schema=schema)
    local = {"$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}}
    await manager.register("d", schema=local)
    with pytest.raises(StateValidationError, match=r"must be of type 'integer' \(got a string\)"):
        await manager.update("d", data={"n": "x"})
