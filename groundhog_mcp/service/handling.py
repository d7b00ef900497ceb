"""Handling events on contexts, and the dead letters of events whose handler kept failing.

The state manager's :meth:`~groundhog_mcp.service.state.StateManager.emit_event`,
``list_dead_letters`` and ``replay_dead_letter`` are these functions, acting as its caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from groundhog_mcp.errors import (
    ConflictError,
    ContextError,
    EventHandlingError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import ContextState, JSONObject, dumps, utcnow
from groundhog_mcp.service.events import Event, EventHandler, HandlerFailure, handler_from_spec
from groundhog_mcp.service.metrics import metric_key
from groundhog_mcp.service.reads import check_written, inline_if_small
from groundhog_mcp.service.validation import Limits, check_limit, check_name, inspect_json, raise_if_invalid
from groundhog_mcp.service.writes import mutation
from groundhog_mcp.store.base import DeadLetter, EventAlreadyHandled, EventRecord, Mutation, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["EventResult", "emit_event", "list_dead_letters", "replay_dead_letter"]

_BACKOFF_BASE = 0.05
_BACKOFF_CAP = 1.0
_MAX_EVENT_RACES = 50
MAX_SCAN_PAGES = 20


@dataclass(frozen=True)
class EventResult:
    """What handling an event did: the revision it produced (or, for a repeat, the first one)."""

    name: str
    type: str
    revision: int
    sequence: int
    patch: list[JSONObject]
    duplicate: bool = False


async def emit_event(
    manager: StateManager,
    name: str,
    event: Event,
    *,
    handlers: Mapping[str, EventHandler] | None = None,
    dead_letter: DeadLetter | None = None,
) -> EventResult:
    """Handle ``event`` on context ``name``: validate, run the handler, commit the state change
    and the event record in one transaction. A repeated ``idempotency_key`` returns the first
    result; a failing handler is retried with backoff, then the event is dead-lettered."""
    check_name(name)
    await manager.authorize("write", name)
    check_event(event, manager.limits)
    context = await manager.get(name)
    if event.idempotency_key is not None:
        seen = await manager.store.find_event(context.id, event.idempotency_key)
        if seen is not None:
            return EventResult(context.name, event.type, seen.revision, seen.sequence, [], duplicate=True)
    handler, attempts = _handler_for(context, event.type, handlers, manager.event_max_attempts)
    try:
        await handler.validate_event(event)
    except ContextError:
        raise
    except Exception as exc:
        raise EventHandlingError(
            f"payload: the {event.type!r} handler rejected the event ({type(exc).__name__}: {exc}); nothing was changed"
        ) from None
    caller = manager.caller
    last_error = ""
    attempt = races = 0
    while attempt < attempts:
        # The first attempt handles the context as just read; a retry reads it again. (Its revision
        # is the write's expected revision: a write in between is a conflict, then a retry.)
        current = context if attempt == races == 0 else await manager.get(name)
        try:
            started = time.perf_counter()
            try:
                upcast_current = await manager.reader.upcast_context_off_loop(current)
                staged = await _run_handler(handler, event, upcast_current)
            finally:
                manager.metrics.observe_handler(
                    metric_key(caller.principal.namespace, name), time.perf_counter() - started
                )
            result = await manager.writer.mutate(
                caller,
                name,
                current.revision,
                _event_mutator(staged, manager.limits),
                event=_record_of(event),
                detail=_event_detail(event, dead_letter),
                inline=inline_if_small(staged.data, staged.metadata),
            )
            return EventResult(
                name, event.type, result.context.revision, result.change.sequence, result.change.patch or []
            )
        except ConflictError:
            races += 1  # another writer got in between: not the handler's fault, try again
            if races > _MAX_EVENT_RACES:
                raise
            continue
        except EventAlreadyHandled as done:
            return EventResult(name, event.type, done.event.revision, done.event.sequence, [], duplicate=True)
        except (HandlerFailure, StateValidationError, StateUpdateError, EventHandlingError) as exc:
            last_error = str(exc)
        attempt += 1
        if attempt < attempts:
            await asyncio.sleep(min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1)))
    letter = await manager.store.add_dead_letter(
        dead_letter
        or DeadLetter(
            id=0,
            namespace=context.namespace,
            context_id=context.id,
            name=context.name,
            type=event.type,
            payload=event.payload,
            idempotency_key=event.idempotency_key,
            attempts=attempts,
            last_error=last_error[:2000],
            created_at=utcnow(),
        ),
        actor=caller.principal.name,
        audit=manager.audit.note(caller, _event_detail(event, dead_letter)),
    )
    raise EventHandlingError(
        f"type: the {event.type!r} handler of context {name!r} failed {attempts} time(s); the state is "
        f"unchanged and the event is dead letter #{letter.id} (last error: {last_error[:500]}); "
        "fix the cause, then replay_dead_letter"
    )


async def list_dead_letters(
    manager: StateManager,
    *,
    name: str | None = None,
    after_id: int = 0,
    limit: int = 50,
    include_replayed: bool = False,
) -> list[DeadLetter]:
    """The dead letters of the contexts this principal may read (of ``name`` only, if given),
    after letter ``after_id``, oldest first; replayed ones only with ``include_replayed``."""
    if name is not None:
        check_name(name)
    principal = manager.principal
    check_limit(limit, manager.limits.max_page)
    if name is not None and not principal.allows("read", name):
        return []  # like a context without letters, and without reading any
    found: list[DeadLetter] = []
    for _ in range(MAX_SCAN_PAGES):
        page = await manager.store.list_dead_letters(
            principal.namespace, name=name, after_id=after_id, limit=limit, include_replayed=include_replayed
        )
        # Letters of contexts this principal may not read are left out, like missing ones.
        found += [letter for letter in page if principal.allows("read", letter.name)]
        if len(found) >= limit or len(page) < limit:
            break
        after_id = page[-1].id
    return found[:limit]


async def replay_dead_letter(
    manager: StateManager, letter_id: int, *, handlers: Mapping[str, EventHandler] | None = None
) -> EventResult:
    """Handle a dead-lettered event again; applied once even if replayed twice."""
    missing = f"id: no dead letter #{letter_id}"
    namespace = manager.principal.namespace
    # The context's name first (nothing decoded), the grants on it, and only then the letter.
    name = await manager.store.dead_letter_name(namespace, letter_id)
    if name is None:
        raise NotFoundError(missing)
    await manager.authorize("read", name, missing=missing, itemize=False)
    await manager.authorize("write", name)
    letter = await manager.store.get_dead_letter(namespace, letter_id)
    if letter is None:
        raise NotFoundError(missing)
    if letter.replayed_at is not None:
        raise StateUpdateError(
            f"id: dead letter #{letter_id} was already replayed (revision {letter.replay_revision}); "
            "it is applied only once"
        )
    # A key makes the replay exactly-once even if this call is retried.
    key = letter.idempotency_key or f"dead-letter-{letter.id}"
    event = Event(type=letter.type, payload=letter.payload, idempotency_key=key)
    result = await manager.emit_event(letter.name, event, handlers=handlers, dead_letter=letter)
    await manager.store.mark_replayed(letter.id, result.revision)
    return result


def check_event(event: Event, limits: Limits) -> None:
    if not 1 <= len(event.type) <= 128:
        raise StateValidationError(
            [ValidationIssue("", f"must be 1-128 characters; got {len(event.type)}")], field="type"
        )
    if event.idempotency_key is not None and not 1 <= len(event.idempotency_key) <= 200:
        raise StateValidationError(
            [ValidationIssue("", f"must be 1-200 characters; got {len(event.idempotency_key)}")],
            field="idempotency_key",
        )
    raise_if_invalid(inspect_json(event.payload, limits), "payload")
    size = len(dumps(event.payload).encode("utf-8"))
    if size > limits.max_event_payload_bytes:
        raise StateValidationError(
            [ValidationIssue("", f"serialised size {size} bytes exceeds limit {limits.max_event_payload_bytes} bytes")],
            field="payload",
        )


def _event_mutator(staged: ContextState, limits: Limits) -> Callable[[StoredContext], Mutation]:
    def apply(current: StoredContext) -> Mutation:
        state = ContextState(data=staged.data, metadata=staged.metadata, timestamp=utcnow(), version=staged.version)
        text = check_written(state, current, limits)
        return mutation(current, state, op="event", text=text)

    return apply


def _handler_for(
    context: StoredContext, event_type: str, handlers: Mapping[str, EventHandler] | None, max_attempts: int
) -> tuple[EventHandler, int]:
    spec = context.handlers.get(event_type)
    attempts = max_attempts
    if isinstance(spec, dict) and isinstance(spec.get("max_attempts"), int):
        attempts = int(spec["max_attempts"])  # pyright: ignore[reportUnknownArgumentType]
    if handlers and event_type in handlers:
        return handlers[event_type], attempts
    if spec is not None:
        return handler_from_spec(event_type, spec), attempts
    known: list[str] = sorted({*context.handlers, *(handlers or {})})
    raise EventHandlingError(
        f"type: context {context.name!r} has no handler for event type {event_type!r} "
        f"(handlers: {', '.join(known) or 'none'}); register the context with event_handlers"
    )


def _event_detail(event: Event, dead_letter: DeadLetter | None) -> str:
    """An event's audit note: its type (never its payload), and the dead letter it replays."""
    detail = f"event type {event.type!r}"
    if dead_letter is not None and dead_letter.id:
        detail += f", replay of dead letter #{dead_letter.id}"
    return detail


def _record_of(event: Event) -> EventRecord:
    return EventRecord(type=event.type, payload=event.payload, idempotency_key=event.idempotency_key)


async def _run_handler(handler: EventHandler, event: Event, current: StoredContext) -> ContextState:
    """Run a handler against a staging view of the context; returns the state it wants written."""
    from groundhog_mcp.service.registry import StagedContext  # registry builds on the state manager

    staged = StagedContext(current)
    try:
        await handler.handle_event(event, staged)
    except (HandlerFailure, ContextError):
        raise
    except Exception as exc:
        raise HandlerFailure(f"{type(exc).__name__}: {exc}") from exc
    return staged.staged or current.state
