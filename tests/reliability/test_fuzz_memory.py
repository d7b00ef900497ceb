"""Fuzz every tool in memory (SDK ``Client(server)``): schema-generated arguments and hostile seeds.

- ``test_generated_arguments``: Hypothesis draws a tool from ``tools/list`` and arguments from
  its ``inputSchema`` (tests/reliability/schema_strategies.py), a third of them broken (wrong
  type, missing or unknown field); names are often those of real contexts, so calls go past
  "no such context". Any refusal must be a clear ``field: rule`` message; a refusal or a
  read-only tool changes nothing stored; the server answers a ping within 2 s after each call.
- ``test_hostile_seeds``: the table of tests/reliability/hostile.py that an SDK client can send.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from groundhog_mcp import ContextError, ContextState, StateManager
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.server import AppContext
from tests.e2e.harness import call_ok, result_text
from tests.reliability.battery import REPLY_WITHIN_S, assert_clear_error, scaled
from tests.reliability.fuzzing import Call, FuzzTally, GeneratedRun, Reply, StoreSnapshot, judge, read_back_with
from tests.reliability.hostile import SEED_CONTEXTS, hostile_cases

pytestmark = pytest.mark.reliability

EXAMPLES = scaled(1000, 20000)
CALL_TIMEOUT_S = 30.0


def memory_call(client: Client) -> Call:
    async def call(tool: str, arguments: dict[str, Any]) -> Reply:
        try:
            with anyio.fail_after(CALL_TIMEOUT_S):
                result = await client.call_tool(tool, arguments)
        except MCPError as exc:
            return Reply(True, exc.error.message, rpc_error=exc.error.model_dump())
        return Reply(result.is_error, result_text(result), result.structured_content)

    return call


@pytest.fixture
async def seeded(server: MCPServer[AppContext]) -> AsyncGenerator[Client]:
    async with Client(server, mode="legacy") as client:
        for name, arguments in SEED_CONTEXTS.items():
            await call_ok(client, "register_context", {"name": name, **arguments})
        yield client


async def _alive(client: Client) -> None:
    with anyio.fail_after(REPLY_WITHIN_S):
        await client.send_ping()


# A planted unclear error: the tally lists it, the test fails at tally.assert_clean().
_UNCLEAR = r"fuzz case\(s\) failed:.*an internal error instead of a refusal"


@pytest.mark.broken_build("unclear_missing_context", match=_UNCLEAR)
async def test_hostile_seeds(seeded: Client, db_path: Path) -> None:
    tools = {tool.name for tool in (await seeded.list_tools()).tools}
    call = memory_call(seeded)
    tally = FuzzTally()
    for case in hostile_cases(tools):
        if not case.memory:
            continue
        before = StoreSnapshot.read(db_path)
        reply = await call(case.tool, case.arguments)
        await judge(case, reply, database=db_path, before=before, read_back=read_back_with(call), tally=tally)
        await _alive(seeded)
    print(f"\nhostile seeds, {tally.summary('in memory')}")
    tally.assert_clean()


@pytest.mark.broken_build("raw_surrogates_in_errors", fails_with=UnicodeEncodeError, match="surrogates not allowed")
@pytest.mark.parametrize("field", ["data", "metadata"])
async def test_error_messages_are_valid_utf8(manager: StateManager, field: str) -> None:
    """What no SDK client can send (a lone surrogate in a key) must still produce a message any transport can carry."""
    await manager.register("alpha", state=ContextState(data={"n": 1}))
    with pytest.raises(ContextError) as caught:
        await manager.update("alpha", **{field: {"\udfff": 1}})
    message = str(caught.value)
    message.encode("utf-8")  # raises UnicodeEncodeError on a lone surrogate
    assert message == f"{field}.\\udfff: object key contains a lone surrogate (not valid UTF-8)"


# Without the check the surrogate is caught nowhere else: an unexpected UnicodeEncodeError, not a refusal.
@pytest.mark.broken_build("no_surrogate_check", fails_with=UnicodeEncodeError, match="surrogates not allowed")
async def test_a_lone_surrogate_in_a_value_is_refused(manager: StateManager) -> None:
    await manager.register("alpha", state=ContextState(data={"n": 1}))
    with pytest.raises(ContextError) as caught:
        await manager.update("alpha", data={"t": "x\ud800"})
    assert str(caught.value) == "data.t: string contains a lone surrogate (not valid UTF-8)"


class _HttpTrap:
    """A listener on a free loopback port that records every connection (on its own thread: the
    server under test may block its event loop while it fetches)."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                with contextlib.suppress(OSError):
                    self.requests.append(connection.recv(4096))
                    connection.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()


@pytest.mark.broken_build("fetches_remote_ref", match=r"the server fetched http://127\.0\.0\.1")
async def test_a_json_schema_ref_never_makes_the_server_fetch_a_url(seeded: Client) -> None:
    """jsonschema's deprecated automatic retrieval would fetch any URL a client puts in a $ref."""
    trap = _HttpTrap()
    try:
        url = f"http://127.0.0.1:{trap.port}/schema.json"
        reply = await memory_call(seeded)("register_context", {"name": "remote-ref", "json_schema": {"$ref": url}})
    finally:
        trap.close()
    assert trap.requests == [], f"the server fetched {url}: {trap.requests[0][:200]!r}"
    assert reply.is_error, "a schema whose $ref cannot be resolved locally was accepted"
    assert_clear_error(reply.text, "register_context", "schema", "$ref")


async def _seed(client: Client) -> None:
    for name, arguments in SEED_CONTEXTS.items():
        await call_ok(client, "register_context", {"name": name, **arguments})


@pytest.fixture
def generated(db_path: Path) -> Iterator[GeneratedRun]:
    server = create_server(Settings(database=str(db_path), tools="all"))
    with (
        start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(Client(server, mode="legacy")) as client,
    ):
        portal.call(_seed, client)
        tools = [t.model_dump(by_alias=True, mode="json") for t in portal.call(client.list_tools).tools]
        run = GeneratedRun(
            tools,
            call=lambda tool, arguments: portal.call(memory_call(client), tool, arguments),
            alive=lambda: portal.call(_alive, client),
            database=db_path,
        )
        yield run
    print(f"\n{run.summary('in memory')}")


@pytest.mark.broken_build("unclear_missing_context", match=r"an internal error instead of a refusal")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_generated_arguments(generated: GeneratedRun, data: st.DataObject) -> None:
    generated.example(data)
