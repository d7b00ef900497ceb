"""Live updates on SQLite and PostgreSQL: a change committed by another instance (its own state
manager and store on the same database) reaches an open stream; another namespace's never does."""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.types import ASGIApp, Message

from groundhog_mcp import StateManager
from groundhog_mcp.models import ContextState, Principal
from tests.conformance.conftest import Backend
from tests.dashboard.conftest import Site

ALICE = Principal(name="alice", namespace="team")
MALLORY = Principal(name="mallory", namespace="other")


class EventStream:
    """A server-sent event stream of an ASGI app, read as it is sent (the app driven directly: an
    HTTP client over ASGI would wait for the whole body). Use inside a task group."""

    def __init__(self, app: ASGIApp, path: str, cookie: str) -> None:
        self.app = app
        self.sent, self.received = anyio.create_memory_object_stream[Message](100)
        self.left = anyio.Event()
        self.buffer = ""
        query = path.partition("?")[2]
        self.scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path.partition("?")[0],
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": query.encode(),
            "headers": [(b"host", b"127.0.0.1"), (b"cookie", cookie.encode())],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }

    async def run(self) -> None:
        async def receive() -> Message:
            await self.left.wait()
            return {"type": "http.disconnect"}

        await self.app(self.scope, receive, self.sent.send)

    async def next(self) -> tuple[str, dict[str, Any]]:
        while "\n\n" not in self.buffer:
            message = await self.received.receive()
            if message["type"] == "http.response.start":
                assert message["status"] == 200, message
            self.buffer += message.get("body", b"").decode()
        block, self.buffer = self.buffer.split("\n\n", 1)
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        return fields.get("event", ""), json.loads(fields.get("data") or "{}")


async def test_a_change_by_another_instance_reaches_an_open_stream(site: Site, backend: Backend) -> None:
    site.tokens.update({"t-alice": ALICE})
    async with site.signed_in("t-alice") as browser:
        cookie = "; ".join(f"{k}={v}" for k, v in browser.cookies.items())
    other = StateManager(backend.store())  # another instance on the same database
    await other.start()
    try:
        assert site.app is not None
        stream = EventStream(site.app, "/live?after=0", cookie)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(stream.run)
            assert (await stream.next())[0] == "ready"
            await other.with_principal(MALLORY).register("foreign")  # another namespace: never sent
            await other.with_principal(ALICE).register("plan", state=ContextState(data={"step": 1}))
            with anyio.fail_after(10):
                kind, change = await stream.next()
                while kind != "change":
                    kind, change = await stream.next()
            assert (change["context"], change["revision"], change["op"], change["actor"]) == (
                "plan",
                1,
                "register",
                "alice",
            )
            stream.left.set()
    finally:
        await other.close()
