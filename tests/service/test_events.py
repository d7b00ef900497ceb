"""Events: declarative and plugin handlers, atomicity, idempotency, retries and dead letters."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import pytest

from groundhog_mcp import (
    Context,
    ContextConfig,
    ContextRegistry,
    ContextState,
    Event,
    EventHandlingError,
    NotFoundError,
    StateManager,
    StateUpdateError,
    StateValidationError,
)
from groundhog_mcp.service import WriteResult


async def _with_handlers(manager: StateManager, handlers: dict[str, object], data: dict[str, object]) -> None:
    result = await manager.register("c", state=ContextState(data=data), handlers=handlers)  # type: ignore[arg-type]
    assert isinstance(result, WriteResult)


def _counts(db_path: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db_path) as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("changes", "events", "history")
        )


@pytest.mark.parametrize(
    ("spec", "payload", "expected"),
    [
        ({"action": "set", "path": "/status", "value_from": "/status"}, {"status": "done"}, {"n": 1, "status": "done"}),
        ({"action": "increment", "path": "/n", "value_from": "/by"}, {"by": 5}, {"n": 6}),
        ({"action": "increment", "path": "/n"}, {}, {"n": 2}),
        ({"action": "append", "path": "/log", "value_from": ""}, {"x": 1}, {"n": 1, "log": [{"x": 1}]}),
        ({"action": "merge", "path": "/cfg", "value_from": "/cfg"}, {"cfg": {"a": 1}}, {"n": 1, "cfg": {"a": 1}}),
        ({"action": "remove", "path": "/n"}, {}, {}),
        ({"action": "set", "path": "/deep/er", "value": True}, {}, {"n": 1, "deep": {"er": True}}),
    ],
)
async def test_declarative_actions(
    manager: StateManager, spec: dict[str, object], payload: dict[str, object], expected: dict[str, object]
) -> None:
    await _with_handlers(manager, {"evt": spec}, {"n": 1})
    result = await manager.emit_event("c", Event("evt", payload))
    assert result.revision == 2 and not result.duplicate
    assert (await manager.get("c")).state.data == expected
    history = await manager.history("c", limit=1)
    assert history[0].op == "event"


async def test_state_change_event_record_and_change_commit_together(manager: StateManager, db_path: Path) -> None:
    await _with_handlers(manager, {"add": {"action": "append", "path": "/items", "value_from": "/item"}}, {})
    before = _counts(db_path)
    await manager.emit_event("c", Event("add", {"item": "a"}, idempotency_key="k1"))
    assert _counts(db_path) == (before[0] + 1, before[1] + 1, before[2] + 1)


async def test_idempotency_key_applies_once(manager: StateManager, db_path: Path) -> None:
    await _with_handlers(manager, {"inc": {"action": "increment", "path": "/n"}}, {"n": 0})
    first = await manager.emit_event("c", Event("inc", {}, idempotency_key="once"))
    again = await manager.emit_event("c", Event("inc", {}, idempotency_key="once"))
    assert (again.revision, again.sequence, again.duplicate) == (first.revision, first.sequence, True)
    assert (await manager.get("c")).state.data == {"n": 1}
    other = await manager.emit_event("c", Event("inc", {}, idempotency_key="twice"))
    assert other.revision == 3 and (await manager.get("c")).state.data == {"n": 2}


async def test_invalid_event_is_rejected_at_once_not_dead_lettered(manager: StateManager) -> None:
    schema = {"type": "object", "required": ["item"], "properties": {"item": {"type": "string"}}}
    await _with_handlers(
        manager, {"add": {"action": "append", "path": "/items", "value_from": "/item", "payload_schema": schema}}, {}
    )
    with pytest.raises(StateValidationError, match=r"payload\.item: must be of type 'string' \(got an integer\)"):
        await manager.emit_event("c", Event("add", {"item": 3}))
    with pytest.raises(StateValidationError, match="payload: 'item' is a required property"):
        await manager.emit_event("c", Event("add", {}))
    assert await manager.list_dead_letters() == []
    assert (await manager.get("c")).revision == 1


async def test_unknown_event_type_and_bad_payloads(manager: StateManager) -> None:
    await _with_handlers(manager, {"inc": {"action": "increment", "path": "/n"}}, {"n": 0})
    with pytest.raises(EventHandlingError, match=r"no handler for event type 'nope' \(handlers: inc\)"):
        await manager.emit_event("c", Event("nope"))
    with pytest.raises(StateValidationError, match=r"payload: serialised size .* exceeds limit 262144 bytes"):
        await manager.emit_event("c", Event("inc", {"blob": "x" * (256 * 1024)}))
    with pytest.raises(StateValidationError, match=r"payload\.x: nan is not a JSON number"):
        await manager.emit_event("c", Event("inc", {"x": float("nan")}))
    with pytest.raises(NotFoundError):
        await manager.emit_event("missing", Event("inc"))


async def test_bad_handler_specs_are_refused_at_registration(manager: StateManager) -> None:
    with pytest.raises(StateValidationError, match=r"event_handlers\.evt: action must be one of"):
        await manager.register("c", handlers={"evt": {"action": "explode", "path": "/x"}})
    with pytest.raises(StateValidationError, match=r"event_handlers\.evt: unknown keys"):
        await manager.register("c", handlers={"evt": {"action": "set", "path": "/x", "oops": 1}})
    with pytest.raises(EventHandlingError, match="no event handler plugin 'ghost'"):
        await manager.register("c", handlers={"evt": {"plugin": "ghost"}})
    with pytest.raises(EventHandlingError, match="'not-a-handler' does not implement"):
        await manager.register("c", handlers={"evt": {"plugin": "not-a-handler"}})


async def test_plugin_failing_twice_then_succeeding_applies_exactly_once(manager: StateManager) -> None:
    await _with_handlers(manager, {"count": {"plugin": "flaky-counter"}}, {"count": 0})
    key = f"k-{uuid.uuid4()}"
    result = await manager.emit_event("c", Event("count", {"fail_times": 2, "by": 3}, idempotency_key=key))
    assert result.revision == 2
    assert (await manager.get("c")).state.data == {"count": 3}
    assert await manager.list_dead_letters() == []


async def test_failing_beyond_max_attempts_dead_letters_and_replay_applies_once(
    manager: StateManager, db_path: Path
) -> None:
    await _with_handlers(manager, {"count": {"plugin": "flaky-counter", "max_attempts": 2}}, {"count": 0})
    key = f"k-{uuid.uuid4()}"
    before = _counts(db_path)
    with pytest.raises(
        EventHandlingError, match=r"failed 2 time\(s\); the state is unchanged and the event is dead letter #1"
    ):
        await manager.emit_event("c", Event("count", {"fail_times": 3}, idempotency_key=key))
    assert _counts(db_path) == before
    assert (await manager.get("c")).revision == 1
    (letter,) = await manager.list_dead_letters()
    assert letter.type == "count" and letter.attempts == 2 and "planned failure 2" in letter.last_error
    replayed = await manager.replay_dead_letter(letter.id)  # third attempt of this key succeeds
    assert replayed.revision == 2 and (await manager.get("c")).state.data == {"count": 1}
    with pytest.raises(StateUpdateError, match="already replayed"):
        await manager.replay_dead_letter(letter.id)
    assert await manager.list_dead_letters() == []
    assert len(await manager.list_dead_letters(include_replayed=True)) == 1
    with pytest.raises(NotFoundError, match="no dead letter #99"):
        await manager.replay_dead_letter(99)


async def test_handler_that_breaks_the_schema_is_a_failure_and_changes_nothing(manager: StateManager) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer", "maximum": 1}}}
    await manager.register(
        "c",
        state=ContextState(data={"n": 1}),
        schema=schema,
        handlers={"inc": {"action": "increment", "path": "/n", "max_attempts": 1}},
    )
    with pytest.raises(EventHandlingError, match="dead letter") as caught:
        await manager.emit_event("c", Event("inc"))
    assert "maximum" in str(caught.value)
    assert (await manager.get("c")).state.data == {"n": 1}


class AppendTitle:
    """An in-process handler, as a ContextTemplate carries it (the specification's EventHandler)."""

    async def validate_event(self, event: Event) -> None:
        if "title" not in event.payload:
            raise ValueError("payload.title is required")

    async def handle_event(self, event: Event, context: Context) -> None:
        state = await context.get_state()
        await context.update_state(state.with_data("titles", [*state.data.get("titles", []), event.payload["title"]]))


async def test_context_handle_event_with_an_in_process_handler(manager: StateManager) -> None:
    registry = ContextRegistry(manager)
    context = Context(ContextConfig(name="notes"), event_handlers={"title": AppendTitle()})
    await registry.register_context(context)
    result = await context.handle_event(Event("title", {"title": "hello"}))
    assert result.revision == 2
    assert (await context.get_state()).data == {"titles": ["hello"]}
    with pytest.raises(EventHandlingError, match=r"rejected the event .*payload\.title is required"):
        await context.handle_event(Event("title", {}))
