"""The library API: registry, contexts, state manager, events, metrics. Never imports ``mcp``."""

from groundhog_mcp.service.bus import ChangeBus, Resync, Subscription
from groundhog_mcp.service.caller import Caller
from groundhog_mcp.service.events import Event, EventHandler
from groundhog_mcp.service.metrics import ContextMetrics
from groundhog_mcp.service.registry import Context, ContextRegistry, ContextTemplate, info_of
from groundhog_mcp.service.state import ContextPage, EventResult, StateManager, WriteResult
from groundhog_mcp.service.validation import Limits

__all__ = [
    "Caller",
    "ChangeBus",
    "Context",
    "ContextMetrics",
    "ContextPage",
    "ContextRegistry",
    "ContextTemplate",
    "Event",
    "EventHandler",
    "EventResult",
    "Limits",
    "Resync",
    "StateManager",
    "Subscription",
    "WriteResult",
    "info_of",
]
