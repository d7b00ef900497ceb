"""Events sent to contexts and the handler protocol that turns them into state changes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from groundhog_mcp.models import JSONObject

if TYPE_CHECKING:
    from groundhog_mcp.service.registry import Context

__all__ = ["Event", "EventHandler"]


@dataclass(frozen=True)
class Event:
    """An application event: ``{type, payload, idempotency_key?}``."""

    type: str
    payload: JSONObject = field(default_factory=dict[str, Any])
    idempotency_key: str | None = None


@runtime_checkable
class EventHandler(Protocol):
    """Handles one event type for a context (the specification's ``EventHandler``).

    ``validate_event`` runs first and raises to reject the event; ``handle_event`` then
    changes the context's state (through ``context.update_state``).
    """

    async def validate_event(self, event: Event) -> None: ...

    async def handle_event(self, event: Event, context: Context) -> None: ...
