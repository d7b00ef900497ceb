"""The typed error contract on the wire: a stable code a client branches on, never the text.

A tool error is a ``CallToolResult`` with ``isError: true``, the human text in ``content``
(unchanged: ``Error executing tool X: <message>``) and, in ``structuredContent``::

    {"error": {"code": "conflict", "retryable": true, "message": "...", "current_revision": 7}}

``current_revision`` comes with a conflict (when the context exists), ``oldest_available`` with
``compacted``, ``holder`` and ``expires_at`` with ``leased`` (while another agent holds the
lease), ``field`` when the error names one argument. Resource reads and prompts fail with
a JSON-RPC error whose ``data`` is ``{"code": ..., "retryable": ...}``.

Why every tool's ``outputSchema`` admits the error shape: the TypeScript SDK's client (and so
the Inspector and clients built on it) validates ``structuredContent`` against the output schema
whenever it is present, error or not; an error object that broke the schema would reach the
caller as a protocol error instead of the error text. :func:`admit_error_results` moves each
schema's ``required`` into an ``anyOf`` with the error alternative, so both shapes validate.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

import structlog
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS, CallToolResult, TextContent

from groundhog_mcp.errors import CompactedError, ConflictError, ContextError, LeasedError, StateValidationError
from groundhog_mcp.models import format_timestamp
from groundhog_mcp.server.arguments import INVALID_ARGUMENT

__all__ = [
    "ERROR_SCHEMA",
    "INTERNAL",
    "CodedToolError",
    "admit_error_results",
    "error_data",
    "error_result",
    "invalid_params",
    "protocol_error",
    "protocol_errors",
    "tool_error_result",
]

log = structlog.get_logger("groundhog_mcp.tools")

INTERNAL = "internal"
"""A bug in groundhog-mcp: the text carries an error id to find the traceback in the server log."""

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Why the call failed; branch on code (docs/errors.md), show message to people",
    "properties": {
        "code": {"type": "string"},
        "retryable": {"type": "boolean"},
        "message": {"type": "string"},
        "current_revision": {"type": "integer"},
        "holder": {"type": "string"},
        "expires_at": {"type": "string"},
        "oldest_available": {"type": "integer"},
        "field": {"type": "string"},
    },
    "required": ["code", "retryable", "message"],
}


class CodedToolError(ToolError):
    """A tool error that knows its code: what the structured part of the error result says."""

    def __init__(self, message: str, *, code: str, retryable: bool = False, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
        self.details = {key: value for key, value in details.items() if value is not None}

    @classmethod
    def of(cls, exc: ContextError) -> CodedToolError:
        return cls(str(exc), code=exc.code, retryable=exc.retryable, **_details(exc))


def _details(exc: ContextError) -> dict[str, Any]:
    """What a program needs to act, beyond the code: never state data."""
    if isinstance(exc, ConflictError):
        return {"current_revision": exc.current_revision}
    if isinstance(exc, CompactedError):
        return {"oldest_available": exc.oldest_available}
    if isinstance(exc, LeasedError):
        expires = format_timestamp(exc.expires_at) if exc.expires_at is not None else None
        return {"holder": exc.holder, "expires_at": expires}
    if isinstance(exc, StateValidationError):
        return {"field": exc.field}
    return {}


def error_result(
    text: str, *, code: str, retryable: bool = False, details: dict[str, Any] | None = None
) -> CallToolResult:
    """An ``isError`` result: the text for people, ``structuredContent.error`` for programs."""
    error: dict[str, Any] = {"code": code, "retryable": retryable, "message": text, **(details or {})}
    return CallToolResult(
        content=[TextContent(type="text", text=text)], structured_content={"error": error}, is_error=True
    )


def tool_error_result(tool: str, exc: ToolError, *, field: str | None = None) -> CallToolResult:
    """The error result for a ToolError out of the SDK's ``call_tool`` (whose text is
    ``Error executing tool X: ...``): the code of the :class:`CodedToolError` under it, else
    ``internal`` for a crash and ``invalid_argument`` for the SDK's own refusals (arguments)."""
    cause = exc.__cause__
    coded = exc if isinstance(exc, CodedToolError) else cause if isinstance(cause, CodedToolError) else None
    if coded is not None:
        return error_result(str(exc), code=coded.code, retryable=coded.retryable, details=coded.details)
    if isinstance(exc, UnexpectedToolError):
        # The SDK would log this crash with its traceback; answering here, we log it.
        log.error("tool raised an unexpected exception", tool=tool, exc_info=exc.__cause__ or exc)
        return error_result(str(exc), code=INTERNAL)
    log.info("tool call refused", tool=tool, code=INVALID_ARGUMENT)
    return error_result(str(exc), code=INVALID_ARGUMENT, details={"field": field} if field else None)


def error_data(exc: ContextError) -> dict[str, Any]:
    """The JSON-RPC error ``data`` of a failed resource read or prompt."""
    return {"code": exc.code, "retryable": exc.retryable, **{k: v for k, v in _details(exc).items() if v is not None}}


def protocol_error(rpc_code: int, exc: ContextError) -> MCPError:
    """A JSON-RPC error carrying the error's code (resources, prompts, subscriptions)."""
    return MCPError(code=rpc_code, message=str(exc), data=error_data(exc))


P = ParamSpec("P")
R = TypeVar("R")


def protocol_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate a resource or prompt handler: a :class:`ContextError` it raises is answered as a
    JSON-RPC invalid-params error (-32602) carrying the error's code (``not_found`` too, as the
    SDK answers a ``ResourceNotFoundError``)."""

    @functools.wraps(fn)
    async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except ContextError as exc:
            raise protocol_error(INVALID_PARAMS, exc) from None

    return guarded


def invalid_params(message: str, *, code: str = INVALID_ARGUMENT) -> MCPError:
    """A JSON-RPC invalid-params error (-32602) the server raises itself, with its code in ``data``."""
    return MCPError(code=INVALID_PARAMS, message=message, data={"code": code, "retryable": False})


def admit_error_results(server: MCPServer[Any]) -> None:
    """Let every tool's output schema accept ``{"error": {...}}`` (call after the tools are added)."""
    for tool in server._tool_manager.list_tools():  # pyright: ignore[reportPrivateUsage]
        schema = tool.fn_metadata.output_schema
        if schema is None or "error" in schema.get("properties", {}):
            continue
        amended = dict(schema)
        amended["properties"] = {**schema.get("properties", {}), "error": ERROR_SCHEMA}
        required = amended.pop("required", None)
        success: dict[str, Any] = {"required": required} if required else {"not": {"required": ["error"]}}
        if "anyOf" in amended:  # keep a schema's own alternatives: both must hold
            amended["allOf"] = [*amended.get("allOf", []), {"anyOf": amended.pop("anyOf")}]
        amended["anyOf"] = [success, {"required": ["error"]}]
        tool.fn_metadata.output_schema = amended
