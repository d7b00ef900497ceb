"""stdio that answers every request line it receives.

The SDK's stdio transport parses each line with a strict JSON parser and silently drops a line
it refuses (a lone-surrogate escape, nesting beyond the parser's limit, an integer of more than
4300 digits, malformed JSON): the client then waits forever. This wrapper gives such a line a
second chance with Python's ``json`` module and, when that fails too, answers it with a
JSON-RPC error (id recovered from the text when possible). A reply to a recovered request is
made encodable (lone surrogates escaped) before it is written.

It also answers what the SDK would take for something else: a request whose ``id`` is an
object, array, boolean, null or fraction is parsed by the SDK as a *notification* (and never
answered), and a valid JSON object that is no JSON-RPC message at all (no ``jsonrpc`` member,
``params`` not an object, a batch array) is dropped. Both get ``-32600 Invalid request``,
with the id when it is usable.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from io import TextIOWrapper
from typing import Any

import anyio
import mcp_types as types
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.mcpserver import MCPServer
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

__all__ = ["hardened_stdio", "recover_line", "run_stdio"]

_ID = re.compile(r'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,30})')
_FRAGILE_IDS_KEPT = 1000
# A top-level-looking ``"id"`` whose value cannot be a request id: only such lines are parsed
# twice (the hint may also match inside params; the full parse then decides).
_BAD_ID_HINT = re.compile(r'"id"\s*:\s*(?:[\[{tfn]|-?\d+[.eE])')


def _error(request_id: Any, code: int, message: str) -> SessionMessage:
    return SessionMessage(
        types.JSONRPCError(jsonrpc="2.0", id=request_id, error=types.ErrorData(code=code, message=message))
    )


def _id_from_text(line: str) -> str | int | None:
    match = _ID.search(line[:4000])
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def _usable_id(value: Any) -> str | int | None:
    return value if isinstance(value, str | int) and not isinstance(value, bool) else None


def _type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", float: "a fraction", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def misread_request(line: str) -> SessionMessage | None:
    """The ``-32600`` answer to a request line the SDK would misread as a notification
    (an ``id`` that is neither a string nor an integer), else None."""
    if _BAD_ID_HINT.search(line) is None:
        return None
    try:
        parsed = json.loads(line)
    except (ValueError, RecursionError):
        return None  # the SDK's parser refuses it too; recover_line answers it
    if not isinstance(parsed, dict) or "method" not in parsed or "id" not in parsed:
        return None
    request_id = parsed["id"]  # pyright: ignore[reportUnknownVariableType]
    if _usable_id(request_id) is not None:
        return None
    return _error(
        None, types.INVALID_REQUEST, f"Invalid request: id must be a string or an integer, not {_type_name(request_id)}"
    )


def invalid_message(error: ValidationError) -> SessionMessage | None:
    """The ``-32600`` answer to valid JSON that is no JSON-RPC message (None for what looks like
    a notification: those get no reply)."""
    document: Any = None
    for detail in error.errors():
        if not detail["loc"][1:]:
            document = detail.get("input")  # the whole message: a union member's own failure
        elif isinstance(detail.get("input"), dict) and len(detail["loc"]) == 2 and detail["type"] == "missing":
            document = detail["input"]
        if document is not None:
            break
    if isinstance(document, dict) and "id" not in document:
        return None
    request_id = _usable_id(document.get("id")) if isinstance(document, dict) else None  # pyright: ignore[reportUnknownMemberType, reportUnknownArgumentType]
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"][1:]) or "message"
    return _error(request_id, types.INVALID_REQUEST, f"Invalid request: {where}: {first['msg']}"[:300])


class _BorrowedText(TextIOWrapper):
    """Text over stdin's buffer that leaves the buffer open when it is collected."""

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.detach()


class _CheckedLines:
    """stdin as the SDK's reader iterates it, minus the request lines it would misread; those
    are answered through ``answer`` once the transport is up. (Handing the SDK our own stdin
    means it does not point fd 0 at /dev/null while serving; groundhog starts no children.)"""

    def __init__(self) -> None:
        self._lines = anyio.wrap_file(_BorrowedText(sys.stdin.buffer, encoding="utf-8", errors="replace"))
        self.answer: Callable[[SessionMessage], Awaitable[None]] | None = None
        self.ready = anyio.Event()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._checked()

    async def _checked(self) -> AsyncIterator[str]:
        async for line in self._lines:
            error = misread_request(line)
            if error is None:
                yield line
                continue
            await self.ready.wait()
            assert self.answer is not None
            await self.answer(error)


def recover_line(line: str) -> tuple[SessionMessage | None, SessionMessage | None]:
    """``(message to dispatch, error to answer)`` for a line the SDK's parser refused."""
    try:
        parsed = json.loads(line)
    except RecursionError:
        return None, _error(_id_from_text(line), types.INVALID_REQUEST, "Invalid request: JSON nested too deeply")
    except ValueError as exc:
        if "integer string conversion" in str(exc):
            return None, _error(
                _id_from_text(line), types.INVALID_PARAMS, "Invalid params: an integer has more than 4300 digits"
            )
        return None, _error(None, types.PARSE_ERROR, f"Parse error: {str(exc)[:200]}")
    try:
        message = types.jsonrpc_message_adapter.validate_python(parsed, by_name=False)
    except (ValidationError, RecursionError) as exc:
        request_id = parsed.get("id") if isinstance(parsed, dict) else None
        if isinstance(parsed, dict) and "id" not in parsed:
            return None, None  # an invalid notification gets no reply
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        return None, _error(request_id, types.INVALID_REQUEST, f"Invalid request: {str(exc).splitlines()[0][:200]}")
    return SessionMessage(message), None


def _escaped(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_escaped(k): _escaped(v) for k, v in value.items()}  # pyright: ignore[reportUnknownVariableType]
    if isinstance(value, list):
        return [_escaped(v) for v in value]  # pyright: ignore[reportUnknownVariableType]
    return value


def _encodable(message: SessionMessage) -> SessionMessage:
    raw = message.message.model_dump(by_alias=True, exclude_unset=True, mode="python")
    return SessionMessage(types.jsonrpc_message_adapter.validate_python(_escaped(raw), by_name=False))


@asynccontextmanager
async def hardened_stdio() -> AsyncGenerator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """The SDK's ``stdio_server`` streams, with refused lines answered instead of dropped."""
    lines = _CheckedLines()
    async with stdio_server(stdin=lines) as (sdk_read, sdk_write):  # pyright: ignore[reportArgumentType]
        lines.answer = sdk_write.send
        lines.ready.set()
        inbound_send, inbound = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        outbound, outbound_receive = anyio.create_memory_object_stream[SessionMessage](0)
        fragile: list[str | int] = []

        async def relay_inbound() -> None:
            async with inbound_send:
                async for item in sdk_read:
                    if isinstance(item, ValidationError):
                        errors = item.errors()
                        raw = errors[0].get("input") if errors and errors[0].get("type") == "json_invalid" else None
                        if raw is None:
                            answer = invalid_message(item)
                            if answer is not None:
                                await sdk_write.send(_encodable(answer))
                            continue
                        if isinstance(raw, str):
                            message, error = recover_line(raw)
                            if error is not None:
                                await sdk_write.send(_encodable(error))
                                continue
                            if message is not None:
                                request_id = getattr(message.message, "id", None)
                                if isinstance(request_id, str | int):
                                    fragile.append(request_id)
                                    del fragile[:-_FRAGILE_IDS_KEPT]
                                await inbound_send.send(message)
                                continue
                    await inbound_send.send(item)

        async def relay_outbound() -> None:
            async with outbound_receive, sdk_write:
                async for message in outbound_receive:
                    request_id = getattr(message.message, "id", None)
                    if request_id is not None and request_id in fragile:
                        fragile.remove(request_id)
                        message = _encodable(message)
                    await sdk_write.send(message)

        # The writer drains and then closes the SDK's stream (which ends its stdout task); the
        # reader is cancelled when the server is done (at end of input it has ended already).
        async with anyio.create_task_group() as writer:
            writer.start_soon(relay_outbound)
            async with anyio.create_task_group() as reader:
                reader.start_soon(relay_inbound)
                try:
                    yield inbound, outbound
                finally:
                    outbound.close()
                    reader.cancel_scope.cancel()


async def run_stdio(server: MCPServer[Any]) -> None:
    """Serve ``server`` over stdio (as ``MCPServer.run_stdio_async``, with the hardened streams)."""
    lowlevel = server._lowlevel_server  # pyright: ignore[reportPrivateUsage]
    async with hardened_stdio() as (read_stream, write_stream):
        await lowlevel.run(read_stream, write_stream, lowlevel.create_initialization_options())
