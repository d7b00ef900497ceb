"""groundhog-mcp: durable, shared, versioned context state for LLM agents, over MCP.

The library API mirrors the specification; the MCP server is a thin layer over it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from groundhog_mcp.errors import (
    AccessDeniedError,
    CompactedError,
    ConflictError,
    ContextError,
    EventHandlingError,
    InitializationError,
    LeasedError,
    LimitExceededError,
    MergeConflictError,
    MigrationError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
    StoreBusyError,
)
from groundhog_mcp.models import ContextConfig, ContextId, ContextInfo, ContextState, Grant, Principal

if TYPE_CHECKING:
    from groundhog_mcp.service import (
        ChangeBus,
        Context,
        ContextMetrics,
        ContextRegistry,
        ContextTemplate,
        Event,
        EventHandler,
        Limits,
        StateManager,
        WriteResult,
    )
    from groundhog_mcp.store import SQLiteStore, Store

# Imported on first use (PEP 562), not with the package: the CLI imports structlog its own way
# before the service and the store do (groundhog_mcp.cli), and every groundhog_mcp.X import runs this.
_LAZY = {
    **dict.fromkeys(
        (
            "ChangeBus",
            "Context",
            "ContextMetrics",
            "ContextRegistry",
            "ContextTemplate",
            "Event",
            "EventHandler",
            "Limits",
            "StateManager",
            "WriteResult",
        ),
        "groundhog_mcp.service",
    ),
    "SQLiteStore": "groundhog_mcp.store",
    "Store": "groundhog_mcp.store",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "AccessDeniedError",
    "ChangeBus",
    "CompactedError",
    "ConflictError",
    "Context",
    "ContextConfig",
    "ContextError",
    "ContextId",
    "ContextInfo",
    "ContextMetrics",
    "ContextRegistry",
    "ContextState",
    "ContextTemplate",
    "Event",
    "EventHandler",
    "EventHandlingError",
    "Grant",
    "InitializationError",
    "LeasedError",
    "LimitExceededError",
    "Limits",
    "MergeConflictError",
    "MigrationError",
    "NotFoundError",
    "Principal",
    "SQLiteStore",
    "StateManager",
    "StateUpdateError",
    "StateValidationError",
    "Store",
    "StoreBusyError",
    "WriteResult",
    "__version__",
]
