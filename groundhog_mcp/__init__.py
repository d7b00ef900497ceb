"""groundhog-mcp: durable, shared, versioned context state for LLM agents, over MCP.

The library API mirrors the specification; the MCP server is a thin layer over it.
"""

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
