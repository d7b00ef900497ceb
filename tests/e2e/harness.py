"""Drives the real ``groundhog-mcp`` console script as a subprocess, two ways.

- :func:`mcp_client`: the MCP SDK ``Client`` over stdio (either protocol era), with the
  server's stderr captured to a file.
- :class:`RawServer`: hand-written JSON-RPC lines over the pipes, for what the SDK client
  hides: killing the server mid-request, and checking that every stdout line is protocol.

Every wait is bounded; nothing sleeps to wait for something.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import AsyncGenerator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.stdio import stdio_client

from groundhog_mcp.profiles import ALL_TOOLS

__all__ = [
    "HANDSHAKE_PROTOCOL_VERSION",
    "TOOL_NAMES",
    "Inbox",
    "RawServer",
    "ServerDied",
    "assert_error_text",
    "call_error",
    "call_ok",
    "cli_argv",
    "json_log_lines",
    "mcp_client",
    "raw_result_text",
    "result_text",
    "server_command",
    "server_env",
]

TOOL_NAMES = frozenset(ALL_TOOLS)

HANDSHAKE_PROTOCOL_VERSION = "2025-11-25"

# Generous bounds: they only turn a hang into a failure, they measure nothing.
CALL_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 15.0

_BARE_TOOL_ERROR = re.compile(r"Error executing tool \w+\s*:?\s*")


def server_command() -> str:
    """The ``groundhog-mcp`` executable every process-level test runs: server and CLI alike.

    ``GROUNDHOG_E2E_COMMAND`` points the whole suite at another build of it (an installed wheel,
    a checkout under test, a deliberately broken copy from tests/reliability/broken_build.py);
    it must be one executable taking the same arguments. Without it: the console script next
    to this interpreter, else the one on PATH.
    """
    override = os.environ.get("GROUNDHOG_E2E_COMMAND")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise RuntimeError(f"GROUNDHOG_E2E_COMMAND={override!r} is not an executable file")
        return override
    beside = Path(sys.executable).parent / "groundhog-mcp"
    if beside.is_file():
        return str(beside)
    found = shutil.which("groundhog-mcp")
    if found is None:
        raise RuntimeError("the groundhog-mcp console script is not installed: run `pip install -e .` first")
    return found


def cli_argv(*args: str) -> list[str]:
    """``groundhog-mcp ARGS`` as an argv list, honouring ``GROUNDHOG_E2E_COMMAND``: what a test that
    runs the CLI as a process passes to ``subprocess.run`` (never the venv's script by path)."""
    return [server_command(), *args]


def server_env(home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment whose user config and data dirs are private to the test.

    A developer's own ``config.toml`` or ``GROUNDHOG_*`` variables must not change what the
    server under test does.
    """
    env = {k: v for k, v in (base or {}).items() if not k.startswith("GROUNDHOG_")}
    env["GROUNDHOG_TOOLS"] = "all"  # the suite drives every tool, not only the default profile's
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        path = home / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    return env


def result_text(result: types.CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if isinstance(block, types.TextContent))


def assert_error_text(text: str, tool: str) -> None:
    """A tool error is a message a model can act on: never empty, bare or a traceback."""
    assert text.strip(), f"{tool}: empty error text"
    assert not _BARE_TOOL_ERROR.fullmatch(text), f"{tool}: bare error without a message: {text!r}"
    assert "Traceback" not in text, f"{tool}: traceback leaked to the client: {text}"
    assert "database is locked" not in text, f"{tool}: raw SQLite lock error leaked: {text}"


async def call_ok(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured output."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}({arguments}) failed: {result_text(result)}"
    assert result.structured_content is not None, f"{tool}: no structured output"
    return result.structured_content


async def call_error(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    """Call a tool that must fail with a tool error; return the checked error text."""
    result = await client.call_tool(tool, arguments)
    text = result_text(result)
    assert result.is_error, f"{tool}({arguments}) should have failed but returned {result.structured_content}"
    assert_error_text(text, tool)
    return text


class Inbox:
    """Everything the server pushed to a client: notifications and transport-level errors.

    A transport error is a stdout line that is not JSON-RPC: it must never happen.
    """

    def __init__(self) -> None:
        self.notifications: list[types.ServerNotification] = []
        self.transport_errors: list[Exception] = []
        self._changed = anyio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            self.transport_errors.append(message)
        else:
            self.notifications.append(message)
        self._changed.set()
        self._changed = anyio.Event()

    def count(self, kind: type[Any]) -> int:
        return sum(isinstance(n, kind) for n in self.notifications)

    async def wait_for_count(self, kind: type[Any], at_least: int) -> None:
        with anyio.fail_after(CALL_TIMEOUT_S):
            while self.count(kind) < at_least:
                await self._changed.wait()


@contextlib.asynccontextmanager
async def mcp_client(
    database: Path,
    *,
    mode: str,
    stderr_path: Path,
    env: dict[str, str],
    message_handler: Callable[[IncomingMessage], Any] | None = None,
    read_timeout_s: float = CALL_TIMEOUT_S,
) -> AsyncGenerator[Client]:
    """The SDK client connected over stdio to a fresh ``groundhog-mcp --database DATABASE``."""
    params = StdioServerParameters(command=server_command(), args=["--database", str(database)], env=env)
    with stderr_path.open("a", encoding="utf-8") as errlog:
        client = Client(
            stdio_client(params, errlog=errlog),
            mode=mode,
            message_handler=message_handler,
            read_timeout_seconds=read_timeout_s,
        )
        async with client:
            yield client


def json_log_lines(stderr_text: str) -> list[dict[str, Any]]:
    """The structured log records among the server's stderr lines."""
    records: list[dict[str, Any]] = []
    for line in stderr_text.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict) and "event" in record:
                records.append(record)
    return records


class ServerDied(AssertionError):
    """The server closed stdout (exited) while a response was expected."""


class RawServer:
    """``groundhog-mcp`` spoken to in raw newline-delimited JSON-RPC.

    Every stdout line is parsed strictly as one JSON-RPC 2.0 message: anything else on
    stdout fails the test (stdout belongs to the protocol).
    """

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.notifications: list[dict[str, Any]] = []
        self.stdout_lines = 0
        self._ids = itertools.count(1)

    @classmethod
    async def start(cls, database: Path, *, env: dict[str, str], stderr_path: Path) -> RawServer:
        with stderr_path.open("a", encoding="utf-8") as errlog:
            process = await asyncio.create_subprocess_exec(
                server_command(),
                "--database",
                str(database),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=errlog,
                env=env,
                limit=16 * 1024 * 1024,
            )
        return cls(process, stderr_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def _stderr_tail(self) -> str:
        return "\n".join(self.stderr_text().splitlines()[-20:])

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_line(json.dumps(message))

    async def send_line(self, line: str) -> None:
        """One hand-written line: also JSON no SDK would produce (``NaN``, ``Infinity``)."""
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode("utf-8"))
        await self.process.stdin.drain()

    async def send_request(self, method: str, params: dict[str, Any] | None = None) -> int:
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return request_id

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def receive(self) -> dict[str, Any] | None:
        """The next stdout message, or None at end of stdout."""
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), CALL_TIMEOUT_S)
        if not line:
            return None
        self.stdout_lines += 1
        return self.parse_protocol_line(line)

    @staticmethod
    def parse_protocol_line(line: bytes) -> dict[str, Any]:
        try:
            message = json.loads(line)
        except ValueError:
            raise AssertionError(f"stdout carried a non-protocol line: {line[:500]!r}") from None
        assert isinstance(message, dict), f"stdout line is not a JSON-RPC object: {line[:500]!r}"
        assert message.get("jsonrpc") == "2.0", f"stdout line is not JSON-RPC 2.0: {line[:500]!r}"
        is_response = "id" in message and ("result" in message or "error" in message)
        is_message = "method" in message
        assert is_response or is_message, f"stdout line is neither a response nor a request: {line[:500]!r}"
        return message

    async def response_to(self, request_id: int | str) -> dict[str, Any]:
        """Read until the response to ``request_id``; notifications on the way are kept."""
        while True:
            message = await self.receive()
            if message is None:
                raise ServerDied(f"server pid {self.pid} closed stdout; stderr:\n{self._stderr_tail()}")
            if message.get("id") == request_id and "method" not in message:
                if "error" in message:
                    raise AssertionError(f"JSON-RPC error for request {request_id}: {message['error']}")
                return message["result"]
            if "method" in message and "id" not in message:
                self.notifications.append(message)
                continue
            raise AssertionError(f"unexpected message while waiting for response {request_id}: {message}")

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.response_to(await self.send_request(method, params))

    async def initialize(self, protocol_version: str = HANDSHAKE_PROTOCOL_VERSION) -> dict[str, Any]:
        result = await self.request(
            "initialize",
            {
                "protocolVersion": protocol_version,
                "capabilities": {},
                "clientInfo": {"name": "groundhog-e2e-raw", "version": "0"},
            },
        )
        await self.notify("notifications/initialized")
        return result

    async def send_tool_call(self, name: str, arguments: dict[str, Any]) -> int:
        return await self.send_request("tools/call", {"name": name, "arguments": arguments})

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tools/call result (``content``, ``structuredContent``, ``isError``)."""
        return await self.request("tools/call", {"name": name, "arguments": arguments})

    async def call_ok(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        result = await self.call_tool(name, arguments)
        assert not result.get("isError"), f"{name}({arguments}) failed: {raw_result_text(result)}"
        structured = result.get("structuredContent")
        assert isinstance(structured, dict), f"{name}: no structured output in {result}"
        return structured

    def kill(self) -> None:
        """SIGKILL: no handler, no flush, no cleanup."""
        if self.process.returncode is None:
            # The process may have exited and been reaped before asyncio recorded its returncode.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGKILL)

    async def wait(self) -> int:
        return await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT_S)

    async def close(self) -> int:
        """End the session the stdio way (close stdin), drain stdout, wait for the exit."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                while (message := await self.receive()) is not None:
                    self.notifications.append(message)
                return await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.wait()
            raise AssertionError(
                f"server pid {self.pid} did not exit within {EXIT_TIMEOUT_S} s of stdin closing; "
                f"stderr:\n{self._stderr_tail()}"
            ) from None

    async def ensure_dead(self) -> None:
        """Cleanup for a failing test: never leave a server process behind."""
        if self.process.returncode is None:
            self.kill()
            with contextlib.suppress(TimeoutError):
                await self.wait()


def raw_result_text(result: dict[str, Any]) -> str:
    return "\n".join(block.get("text", "") for block in result.get("content", []) if block.get("type") == "text")
