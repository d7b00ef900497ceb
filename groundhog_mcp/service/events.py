"""Events sent to contexts and the handlers that turn them into state changes.

A handler is either *declarative* (stored with the context: ``set | merge | append |
increment | remove`` at a JSON Pointer of the data, the value taken from the payload) or a
Python class implementing :class:`EventHandler`, found through the entry-point group
``groundhog_mcp.handlers`` (declared on a context as ``{"plugin": "<entry point name>"}``)
or given in-process by a :class:`~groundhog_mcp.service.registry.ContextTemplate`.
"""

from __future__ import annotations

import asyncio
import copy
import functools
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

from groundhog_mcp.errors import EventHandlingError, StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, pointer_tokens
from groundhog_mcp.service.patching import merge_patch
from groundhog_mcp.service.validation import check_schema_definition, schema_issues, small_json

if TYPE_CHECKING:
    from groundhog_mcp.service.registry import Context

__all__ = [
    "ENTRY_POINT_GROUP",
    "DeclarativeHandler",
    "Event",
    "EventHandler",
    "HandlerFailure",
    "handler_from_spec",
    "parse_handler_specs",
]

ENTRY_POINT_GROUP = "groundhog_mcp.handlers"
Action = Literal["set", "merge", "append", "increment", "remove"]
_ACTIONS: tuple[Action, ...] = ("set", "merge", "append", "increment", "remove")
_EVENT_TYPE_MAX = 128


@dataclass(frozen=True)
class Event:
    """An application event: ``{type, payload, idempotency_key?}``."""

    type: str
    payload: JSONObject = field(default_factory=dict[str, Any])
    idempotency_key: str | None = None


@runtime_checkable
class EventHandler(Protocol):
    """Handles one event type for a context (the specification's ``EventHandler``).

    ``validate_event`` runs first and raises to reject the event (rejected events are not
    retried); ``handle_event`` then changes the context's state through
    ``context.update_state``. A handler that raises is retried with backoff, then the
    event is dead-lettered. The state change commits atomically with the event record.
    """

    async def validate_event(self, event: Event) -> None: ...

    async def handle_event(self, event: Event, context: Context) -> None: ...


class HandlerFailure(Exception):
    """A handler raised: retried with backoff, then dead-lettered."""


@dataclass(frozen=True)
class DeclarativeHandler:
    """``{"action", "path", "value_from"?, "value"?, "payload_schema"?}``: no code, stored with the context."""

    action: Action
    path: str
    value_from: str | None = None
    value: Any = None
    payload_schema: JSONObject | None = None

    async def validate_event(self, event: Event) -> None:
        if self.payload_schema is not None:
            schema = self.payload_schema
            # A client's schema and payload: validated in a worker thread, on the work budget.
            issues = await asyncio.to_thread(lambda: list(schema_issues(schema, event.payload)))
            if issues:
                raise StateValidationError(issues, field="payload")
        if self.value_from is not None:
            self._payload_value(event)

    async def handle_event(self, event: Event, context: Context) -> None:
        state = await context.get_state()
        if small_json(state.data, event.payload):
            data = self.apply(state.data, event)  # a thread hop would cost more than the copy
        else:
            data = await asyncio.to_thread(self.apply, state.data, event)  # copies the whole data
        await context.update_state(ContextState(data=data, metadata=state.metadata, version=state.version))

    def _payload_value(self, event: Event) -> Any:
        if self.value_from is None:
            return copy.deepcopy(self.value) if self.value is not None else (1 if self.action == "increment" else None)
        node: Any = event.payload
        for token in pointer_tokens(self.value_from):
            if isinstance(node, dict) and token in node:
                node = node[token]
            elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
                node = node[int(token)]
            else:
                raise StateValidationError(
                    [ValidationIssue(self.value_from, "not present in the payload (value_from)")], field="payload"
                )
        return copy.deepcopy(node)

    def apply(self, data: JSONObject, event: Event) -> JSONObject:
        """The new data; raises :class:`HandlerFailure` when the state does not fit the action."""
        value = self._payload_value(event)
        result = copy.deepcopy(data)
        tokens = pointer_tokens(self.path)
        if not tokens:
            if self.action == "set" and isinstance(value, dict):
                return cast(JSONObject, value)
            if self.action == "merge" and isinstance(value, dict):
                return cast(JSONObject, merge_patch(result, value))
            raise HandlerFailure(f"{self.action} at the root needs an object value")
        parent: Any = result
        for token in tokens[:-1]:
            if isinstance(parent, dict):
                parent = parent.setdefault(token, {})
            elif isinstance(parent, list) and token.isdigit() and int(token) < len(parent):
                parent = parent[int(token)]
            else:
                raise HandlerFailure(f"path {self.path}: {token!r} is not an object key or array index here")
        last = tokens[-1]
        if isinstance(parent, list):
            parent = cast(list[Any], parent)
            if not (last.isdigit() and int(last) < len(parent)):
                raise HandlerFailure(f"path {self.path}: {last!r} is not an index of the array")
            key: Any = int(last)
            exists = True
        elif isinstance(parent, dict):
            parent = cast(dict[str, Any], parent)
            key = last
            exists = last in parent
        else:
            raise HandlerFailure(f"path {self.path}: the parent is not an object or array")
        current = parent[key] if exists else None
        if self.action == "set":
            parent[key] = value
        elif self.action == "merge":
            parent[key] = merge_patch(current, value)
        elif self.action == "append":
            if current is None:
                parent[key] = [value]
            elif isinstance(current, list):
                cast(list[Any], current).append(value)
            else:
                raise HandlerFailure(f"append at {self.path}: the value there is not an array")
        elif self.action == "increment":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise HandlerFailure(f"increment at {self.path}: the amount is not a number")
            if current is None:
                parent[key] = value
            elif isinstance(current, bool) or not isinstance(current, int | float):
                raise HandlerFailure(f"increment at {self.path}: the value there is not a number")
            else:
                parent[key] = current + value
        elif exists:  # remove
            del parent[key]
        return result


def _spec_error(event_type: str, message: str) -> StateValidationError:
    return StateValidationError([ValidationIssue(f"/{event_type}", message)], field="event_handlers")


def parse_handler_specs(specs: JSONObject) -> JSONObject:
    """Check the ``event_handlers`` given at registration; returns them unchanged when valid."""
    for event_type, spec in specs.items():
        if not 1 <= len(event_type) <= _EVENT_TYPE_MAX:
            raise _spec_error(event_type, f"event type must be 1-{_EVENT_TYPE_MAX} characters")
        handler_from_spec(event_type, spec)
    return specs


def handler_from_spec(event_type: str, spec: Any) -> EventHandler:
    """The handler a stored spec describes (raises a clear error for a bad spec)."""
    if not isinstance(spec, dict):
        raise _spec_error(event_type, "must be an object: {action, path, ...} or {plugin}")
    spec = cast(JSONObject, spec)
    if "plugin" in spec:
        unknown = set(spec) - {"plugin", "max_attempts"}
        if unknown:
            raise _spec_error(event_type, f"unknown keys {sorted(unknown)} (a plugin spec takes plugin)")
        return load_plugin(str(spec["plugin"]))
    unknown = set(spec) - {"action", "path", "value_from", "value", "payload_schema", "max_attempts"}
    if unknown:
        raise _spec_error(event_type, f"unknown keys {sorted(unknown)}")
    action = spec.get("action")
    if action not in _ACTIONS:
        raise _spec_error(event_type, f"action must be one of {', '.join(_ACTIONS)}; got {action!r}")
    path = spec.get("path")
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _spec_error(event_type, "path must be a JSON Pointer into the data ('' or starting with '/')")
    value_from = spec.get("value_from")
    if value_from is not None and (not isinstance(value_from, str) or (value_from and not value_from.startswith("/"))):
        raise _spec_error(event_type, "value_from must be a JSON Pointer into the payload")
    schema = spec.get("payload_schema")
    if schema is not None:
        if not isinstance(schema, dict):
            raise _spec_error(event_type, "payload_schema must be a JSON Schema object")
        check_schema_definition(cast(JSONObject, schema), field=f"event_handlers.{event_type}.payload_schema")
    attempts = spec.get("max_attempts")
    if attempts is not None and (not isinstance(attempts, int) or not 1 <= attempts <= 10):
        raise _spec_error(event_type, "max_attempts must be an integer from 1 to 10")
    return DeclarativeHandler(
        action=action,
        path=path,
        value_from=value_from,
        value=spec.get("value"),
        payload_schema=cast(JSONObject | None, schema),
    )


@functools.cache
def _plugins() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def load_plugin(name: str) -> EventHandler:
    entry_point = _plugins().get(name)
    if entry_point is None:
        known = ", ".join(sorted(_plugins())) or "none installed"
        raise EventHandlingError(
            f"plugin: no event handler plugin {name!r} in entry-point group {ENTRY_POINT_GROUP} (known: {known})"
        )
    try:
        loaded = entry_point.load()
        handler = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:
        raise EventHandlingError(f"plugin: {name!r} could not be loaded ({type(exc).__name__}: {exc})") from exc
    if not isinstance(handler, EventHandler):
        raise EventHandlingError(f"plugin: {name!r} does not implement validate_event and handle_event")
    return handler
