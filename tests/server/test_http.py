"""The HTTP transports for real: ``groundhog-mcp serve --transport http|sse`` as a subprocess on a
loopback port, driven by the SDK's HTTP clients and by plain HTTP requests.

Every wait is bounded; nothing sleeps to wait for something (the server's readiness is its
``serving`` log line, read as it is written).

A server start costs a second or two, so the tests that need nothing of their own share one
server per transport and module (:func:`shared`); each of them works in namespaces of its own
(:func:`unique`), so none sees another's contexts, changes or notifications. A test that
configures the server, stops it or kills it starts its own (:func:`launcher`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import uuid
import warnings
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult

from groundhog_mcp import StateManager
from groundhog_mcp.app import load_settings
from groundhog_mcp.security.tokens import TokenStore
from groundhog_mcp.server.http import HttpConfig, is_loopback
from tests.cli_in_process import run_cli
from tests.e2e.harness import TOOL_NAMES, server_command, server_env

pytestmark = pytest.mark.e2e

# Bounds that turn a hang into a failure; they measure nothing.
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 20.0
ERAS = ["legacy", "2026-07-28"]
# What the SDK client raises when the server it talks to stops mid-call: the HTTP request fails,
# or the session's streams close under it.
STOPPED_SERVER = (httpx2.TransportError, MCPError)


# -- the server process -----------------------------------------------------------------------


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list[str])
    changed: threading.Condition = field(default_factory=threading.Condition)
    serving: dict[str, Any] | None = None

    def follow_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self.changed:
                self.lines.append(line)
                record = _json(line)
                if record is not None and record.get("event") == "serving":
                    self.serving = record
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: ready() or self.proc.poll() is not None, timeout=timeout) and ready()

    @property
    def port(self) -> int:
        assert self.serving is not None
        return int(self.serving["port"])

    @property
    def url(self) -> str:
        assert self.serving is not None
        return str(self.serving["url"])

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        with self.changed:
            return "".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        return [r for r in map(_json, self.stderr().splitlines()) if r is not None]

    def logged(self, matches: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> bool:
        """Whether a log record that ``matches`` arrives within ``timeout`` seconds. The server
        writes a record before it answers, but the thread reading its stderr may not have read
        it yet when the answer arrives: wait for it rather than look once."""
        with self.changed:
            return self.changed.wait_for(lambda: any(map(matches, self.records())), timeout=timeout)

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return await anyio.to_thread.run_sync(lambda: self.proc.wait(timeout=EXIT_TIMEOUT_S))


def _json(line: str) -> dict[str, Any] | None:
    with contextlib.suppress(ValueError):
        record = json.loads(line)
        if isinstance(record, dict):
            return record  # pyright: ignore[reportUnknownVariableType]
    return None


@dataclass
class Launcher:
    tmp_path: Path
    started: list[ServerProcess] = field(default_factory=list[ServerProcess])

    @property
    def database(self) -> Path:
        return self.tmp_path / "groundhog.sqlite"

    @property
    def token_file(self) -> Path:
        return self.tmp_path / "tokens.json"

    @property
    def tokens(self) -> TokenStore:
        return TokenStore(self.token_file)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {**server_env(self.tmp_path / "home", os.environ), **(extra or {})}

    def start(
        self, transport: str = "http", *args: str, env: dict[str, str] | None = None, ready: bool = True
    ) -> ServerProcess:
        command = [
            server_command(),
            "serve",
            "--transport",
            transport,
            "--port",
            "0",
            "--database",
            str(self.database),
            "--token-file",
            str(self.token_file),
            *args,
        ]
        streams = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE}
        proc = subprocess.Popen(command, text=True, env=self.env(env), **streams)
        server = ServerProcess(proc)
        self.started.append(server)
        threading.Thread(target=server.follow_stderr, daemon=True).start()
        if ready:
            assert server.wait_until(lambda: server.serving is not None, START_TIMEOUT_S), server.stderr()
        return server

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """A maintenance command on this launcher's token file (in-process: tests/cli_in_process.py)."""
        return run_cli(*args, "--token-file", str(self.token_file), home=self.tmp_path / "home", check=False)

    def close(self) -> None:
        for server in self.started:
            if server.proc.poll() is None:
                server.proc.kill()
                server.proc.wait(timeout=EXIT_TIMEOUT_S)


@pytest.fixture
def launcher(tmp_path: Path) -> Generator[Launcher]:
    launched = Launcher(tmp_path)
    try:
        yield launched
    finally:
        launched.close()


# Extra names the shared servers accept: test_bad_host_421_and_bad_origin_403 checks them; the
# other tests never send a Host or an Origin of their own.
SHARED_ARGS = ("--allowed-host", "mcp.example.com", "--allowed-origin", "https://app.example")


def unique(namespace: str) -> str:
    """A namespace no other test uses, named after ``namespace``."""
    return f"{namespace}-{uuid.uuid4().hex[:10]}"


@dataclass
class SharedServers:
    """One authenticated server per transport (``http``, ``sse``) with one token file, started
    on first use and shared by a module's tests; see the module docstring."""

    launcher: Launcher
    servers: dict[str, ServerProcess] = field(default_factory=dict[str, ServerProcess])

    @property
    def tokens(self) -> TokenStore:
        return self.launcher.tokens

    def server(self, transport: str = "http") -> ServerProcess:
        if transport not in self.servers:
            # The token file exists before the start: authentication is on from the first request.
            if not self.launcher.token_file.exists():
                self.tokens.create("shared-servers", unique("nobody"))
            self.servers[transport] = self.launcher.start(transport, *SHARED_ARGS)
        server = self.servers[transport]
        assert server.proc.poll() is None, f"the shared {transport} server exited:\n{server.stderr()}"
        return server

    def stop(self) -> dict[str, int]:
        """SIGTERM each server; their exit codes."""
        for server in self.servers.values():
            if server.proc.poll() is None:
                server.proc.send_signal(signal.SIGTERM)
        return {transport: server.proc.wait(timeout=EXIT_TIMEOUT_S) for transport, server in self.servers.items()}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Generator[SharedServers]:
    """The module's shared servers; each must still stop cleanly (exit 0) at the end."""
    servers = SharedServers(Launcher(tmp_path_factory.mktemp("shared-servers")))
    try:
        yield servers
        codes = servers.stop()
    finally:
        servers.launcher.close()
    assert codes == dict.fromkeys(servers.servers, 0), {t: s.stderr()[-3000:] for t, s in servers.servers.items()}


# -- clients ----------------------------------------------------------------------------------


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@contextlib.asynccontextmanager
async def connect(
    url: str, token: str | None = None, *, mode: str = "legacy", message_handler: Any = None
) -> AsyncGenerator[Client]:
    """The SDK client over the transport the URL names (``/sse`` or ``/mcp``)."""
    if url.endswith("/sse"):
        async with Client(
            sse_client(url, headers=_headers(token)),
            mode=mode,
            read_timeout_seconds=CALL_TIMEOUT_S,
            message_handler=message_handler,
        ) as client:
            yield client
        return
    async with (
        httpx2.AsyncClient(headers=_headers(token), timeout=httpx2.Timeout(CALL_TIMEOUT_S)) as http,
        # A write's answer carries its diff, twice (structured and text): with a state near 1 MiB it
        # is larger than the SDK client's default 1 MiB event limit.
        Client(
            streamable_http_client(url, http_client=http, max_sse_event_size=None),
            mode=mode,
            read_timeout_seconds=CALL_TIMEOUT_S,
            message_handler=message_handler,
        ) as client,
    ):
        yield client


def text_of(result: CallToolResult) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


async def ok(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def error(client: Client, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return text_of(result)


_INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
_MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def post_initialize(server: ServerProcess, token: str | None = None, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        return await http.post(
            f"{server.base}/mcp", json=_INITIALIZE, headers={**_MCP_HEADERS, **_headers(token), **headers}
        )


# -- tests ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ERAS)
async def test_tools_and_resources_over_streamable_http(shared: SharedServers, mode: str) -> None:
    namespace = unique("team-a")
    _, token = shared.tokens.create("alice", namespace)
    server = shared.server("http")
    assert server.url.endswith("/mcp")
    async with connect(server.url, token, mode=mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= TOOL_NAMES
        created = await ok(client, "register_context", name="notes", state={"data": {"n": 0}})
        assert created["namespace"] == namespace and created["revision"] == 1
        # A state near the 1 MiB default limit fits in the default body limit.
        big = "x" * (900 * 1024)
        written = await ok(client, "update_state", name="notes", expected_revision=1, data={"n": 1, "big": big})
        assert written["revision"] == 2
        read = await ok(client, "get_state", name="notes", path="/n")
        assert read["value"] == 1 and read["revision"] == 2
        history = await ok(client, "get_history", name="notes")
        assert [r["actor"] for r in history["revisions"]] == ["alice", "alice"]
        resource = await client.read_resource("groundhog://contexts/notes")
        assert json.loads(getattr(resource.contents[0], "text", ""))["revision"] == 2


async def test_tools_and_resources_over_sse(shared: SharedServers) -> None:
    namespace = unique("team-a")
    _, token = shared.tokens.create("alice", namespace)
    server = shared.server("sse")
    assert server.url.endswith("/sse")
    async with connect(server.url, token) as client:
        assert {t.name for t in (await client.list_tools()).tools} >= TOOL_NAMES
        created = await ok(client, "register_context", name="notes", state={"data": {"n": 0}})
        assert created["namespace"] == namespace
        await ok(client, "update_state", name="notes", expected_revision=1, merge_patch={"n": 1})
        assert (await ok(client, "get_state", name="notes"))["state"]["data"] == {"n": 1}
        listed = await client.list_resources()
        assert "groundhog://contexts/notes/state" in {str(r.uri) for r in listed.resources}
    anonymous = await _get(server.url)
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer ")


async def test_missing_wrong_and_revoked_tokens_get_401(shared: SharedServers) -> None:
    namespace = unique("team-a")
    server = shared.server("http")
    created = shared.launcher.cli("tokens", "create", "--principal", "alice", "--namespace", namespace)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("ghm_") and "\n" not in token

    accepted = await post_initialize(server, token)
    assert accepted.status_code == 200, accepted.text
    for presented in (None, "ghm_not-a-token", token + "x"):
        refused = await post_initialize(server, presented)
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer ")
        assert refused.json()["error"] == "invalid_token"

    [token_id] = [t.id for t in shared.tokens.list() if t.namespace == namespace]
    revoked = shared.launcher.cli("tokens", "revoke", token_id)
    assert revoked.returncode == 0, revoked.stderr
    after = await post_initialize(server, token)  # the running server notices the rewritten file
    assert after.status_code == 401
    assert "www-authenticate" in after.headers
    health = await _get(f"{server.base}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert token not in server.stderr()


async def test_a_session_belongs_to_the_token_that_opened_it(shared: SharedServers) -> None:
    namespace = unique("team-a")
    _, token_a = shared.tokens.create("alice", namespace)
    _, other_a = shared.tokens.create("alice", namespace)
    server = shared.server("http")
    opened = await post_initialize(server, token_a)
    session = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        for token, status in ((other_a, 404), (token_a, 200)):
            headers = {**_MCP_HEADERS, **_headers(token), "mcp-session-id": session}
            headers["mcp-protocol-version"] = "2025-11-25"
            response = await http.post(f"{server.base}/mcp", json=listing, headers=headers)
            assert response.status_code == status, response.text


async def _get(url: str, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        return await http.get(url, headers=headers)


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_bad_host_421_and_bad_origin_403(shared: SharedServers, transport: str) -> None:
    _, token = shared.tokens.create("alice", unique("default"))
    server = shared.server(transport)  # started with SHARED_ARGS: mcp.example.com, https://app.example
    endpoint = server.url
    auth = _headers(token)
    bad_host = await _get(endpoint, Host="evil.example:80", **auth)
    assert bad_host.status_code == 421 and "evil.example" in bad_host.text
    no_token_bad_host = await _get(endpoint, Host="evil.example")  # checked before authentication
    assert no_token_bad_host.status_code == 421
    bad_origin = await _get(endpoint, Origin="http://evil.example", **auth)
    assert bad_origin.status_code == 403 and "evil.example" in bad_origin.text
    other_port = await _get(endpoint, Origin="http://localhost:1", **auth)
    assert other_port.status_code == 403  # another local web page is another origin

    if transport == "http":
        for allowed in (
            {"Origin": f"http://localhost:{server.port}"},
            {"Host": "mcp.example.com"},
            {"Host": "mcp.example.com", "Origin": "https://mcp.example.com"},
            {"Origin": "https://app.example"},
        ):
            response = await post_initialize(server, token, **allowed)
            assert response.status_code == 200, (allowed, response.text)


async def test_body_limit_is_413(launcher: Launcher) -> None:
    _, token = launcher.tokens.create("alice")
    server = launcher.start("http", env={"GROUNDHOG_MAX_BODY_BYTES": "65536"})
    padded = {**_INITIALIZE, "params": {**_INITIALIZE["params"], "padding": "x" * 70_000}}
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        response = await http.post(f"{server.base}/mcp", json=padded, headers={**_MCP_HEADERS, **_headers(token)})
        assert response.status_code == 413
        small = await http.post(f"{server.base}/mcp", json=_INITIALIZE, headers={**_MCP_HEADERS, **_headers(token)})
        assert small.status_code == 200
    assert await server.stop() == 0


@pytest.mark.parametrize("mode", ERAS)
async def test_a_namespace_cannot_see_or_touch_another(shared: SharedServers, mode: str) -> None:
    team_b = unique("team-b")
    _, token_a = shared.tokens.create("alice", unique("team-a"))
    _, token_b = shared.tokens.create("bob", team_b)
    server = shared.server("http")
    async with connect(server.url, token_a, mode=mode) as a, connect(server.url, token_b, mode=mode) as b:
        await ok(a, "register_context", name="secret", state={"data": {"pin": 1234}})
        await ok(a, "update_state", name="secret", merge_patch={"pin": 4321})

        def same(foreign: str, missing: str) -> None:
            assert foreign.replace("secret", "NAME") == missing.replace("never-made", "NAME")

        for tool, arguments in [
            ("get_state", {}),
            ("get_context", {}),
            ("get_history", {}),
            ("diff_states", {"from_revision": 1}),
            ("update_state", {"merge_patch": {"pin": 0}}),
            ("update_state", {"expected_revision": 2, "data": {}}),
            ("rollback_state", {"revision": 1}),
            ("unregister_context", {}),
            ("validate_state", {}),
            ("emit_event", {"type": "ping"}),
        ]:
            foreign = await error(b, tool, name="secret", **arguments)
            missing = await error(b, tool, name="never-made", **arguments)
            same(foreign, missing)
        assert (await ok(b, "list_contexts"))["contexts"] == []
        assert (await ok(b, "list_contexts", prefix="sec"))["contexts"] == []
        assert (await ok(b, "get_metrics"))["contexts"] == []
        assert (await ok(b, "wait_for_change", after_sequence=0, timeout=0))["changes"] == []
        assert len((await ok(a, "wait_for_change", after_sequence=0, timeout=0))["changes"]) == 2
        resources = {str(r.uri) for r in (await b.list_resources()).resources}
        assert not any("secret" in uri for uri in resources)
        for uri in ("groundhog://contexts/{}/state", "groundhog://contexts/{}"):
            errors: list[str] = []
            for name in ("secret", "never-made"):
                try:
                    await b.read_resource(uri.format(name))
                except Exception as exc:
                    errors.append(str(exc))
            assert len(errors) == 2
            same(*errors)

        # B may use the same name: its own context, A's is untouched.
        mine = await ok(b, "register_context", name="secret", state={"data": {"pin": 0}})
        assert mine["namespace"] == team_b and mine["revision"] == 1
        theirs = await ok(a, "get_state", name="secret")
        assert theirs["state"]["data"] == {"pin": 4321} and theirs["revision"] == 2
        assert [c["name"] for c in (await ok(a, "list_contexts"))["contexts"]] == ["secret"]


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_notifications_stay_in_their_namespace_legacy(shared: SharedServers, transport: str) -> None:
    _, token_a = shared.tokens.create("alice", unique("team-a"))
    _, token_b = shared.tokens.create("bob", unique("team-b"))
    server = shared.server(transport)
    heard: list[str] = []
    changed = anyio.Event()

    async def inbox(message: Any) -> None:
        nonlocal changed
        if isinstance(message, types.ResourceUpdatedNotification):
            heard.append(f"updated {message.params.uri}")
        elif isinstance(message, types.ResourceListChangedNotification):
            heard.append("list changed")
        changed.set()
        changed = anyio.Event()

    async with connect(server.url, token_a) as a, connect(server.url, token_b, message_handler=inbox) as b:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await b.subscribe_resource("groundhog://contexts/shared/state")
        await ok(a, "register_context", name="shared")
        await ok(a, "update_state", name="shared", merge_patch={"n": 1})
        await ok(b, "register_context", name="shared")
        await ok(b, "update_state", name="shared", merge_patch={"n": 2})
        # One notifier delivers changes in sequence order: once B heard of its own last write,
        # it would have heard of A's earlier ones too.
        with anyio.fail_after(CALL_TIMEOUT_S):
            while heard.count("updated groundhog://contexts/shared/state") < 2:
                await changed.wait()
        assert sorted(heard) == ["list changed"] + ["updated groundhog://contexts/shared/state"] * 2


async def test_listen_streams_stay_in_their_namespace(shared: SharedServers) -> None:
    _, token_a = shared.tokens.create("alice", unique("team-a"))
    _, token_b = shared.tokens.create("bob", unique("team-b"))
    server = shared.server("http")
    shared, marker = "groundhog://contexts/shared/state", "groundhog://contexts/marker/state"
    async with (
        connect(server.url, token_a, mode="2026-07-28") as a,
        connect(server.url, token_b, mode="2026-07-28") as b,
        b.listen(resources_list_changed=True, resource_subscriptions=[shared, marker]) as subscription,
    ):
        await ok(a, "register_context", name="shared")
        await ok(a, "update_state", name="shared", merge_patch={"n": 1})
        await ok(b, "register_context", name="marker")
        # Events arrive in change order (the client merges repeats of one event): once B hears
        # of its own marker, it would have heard of A's changes before it.
        heard: list[str] = []
        with anyio.fail_after(CALL_TIMEOUT_S):
            async for event in subscription:
                heard.append(f"{type(event).__name__} {getattr(event, 'uri', '')}".strip())
                if f"ResourceUpdated {marker}" in heard:
                    break
        assert heard == ["ResourcesListChanged", f"ResourceUpdated {marker}"]


async def test_non_loopback_without_auth_refuses_to_start(launcher: Launcher) -> None:
    server = launcher.start("http", "--host", "0.0.0.0", ready=False)
    code = await anyio.to_thread.run_sync(lambda: server.proc.wait(timeout=EXIT_TIMEOUT_S))
    assert code != 0
    stderr = server.stderr()
    assert "refusing to serve http on 0.0.0.0" in stderr
    assert "tokens create" in stderr and "--insecure-no-auth" in stderr
    assert not launcher.database.exists()  # refused before the database was touched


async def test_insecure_no_auth_starts_and_says_so(launcher: Launcher) -> None:
    launcher.tokens.create("alice")  # ignored, and the log says so
    server = launcher.start("http", "--host", "0.0.0.0", "--insecure-no-auth")
    warnings = [r for r in server.records() if r.get("level") == "warning"]
    assert any("WITHOUT AUTHENTICATION" in r["event"] for r in warnings), warnings
    assert any("authentication is OFF" in r["event"] and r.get("token_file_ignored") for r in warnings)
    assert server.serving is not None and server.serving["authenticated"] is False
    async with connect(server.url) as client:
        await ok(client, "register_context", name="open")
    # The Host check holds on every bind address, not only on loopback.
    bad_host = await post_initialize(server, Host=f"evil.example:{server.port}")
    assert bad_host.status_code == 421
    assert await server.stop(signal.SIGINT) == 0


async def test_sigterm_during_writes_loses_no_acknowledged_write(launcher: Launcher) -> None:
    server = launcher.start("http")  # loopback, no token file: unauthenticated
    writers = 4
    acknowledged: dict[str, int] = {}
    enough = anyio.Event()
    signalled = False
    cut_off: list[str] = []  # how each writer that the stop interrupted learned of it

    async def write(name: str) -> None:
        nonlocal cut_off
        try:
            async with connect(server.url, mode="2026-07-28") as client:
                revision = (await ok(client, "register_context", name=name, state={"data": {"n": 0}}))["revision"]
                acknowledged[name] = revision
                for n in range(1, 80):
                    result = await client.call_tool(
                        "update_state", {"name": name, "expected_revision": revision, "merge_patch": {"n": n}}
                    )
                    if result.is_error:
                        # Only the stopping server may refuse a write (its own context, its own CAS).
                        assert signalled, text_of(result)
                        cut_off.append(f"tool error: {text_of(result)[:200]}")
                        return
                    assert result.structured_content is not None
                    assert result.structured_content["revision"] == revision + 1
                    revision = result.structured_content["revision"]
                    acknowledged[name] = revision
                    if sum(acknowledged.values()) >= writers * 10:
                        enough.set()
        except* STOPPED_SERVER as stopped:
            # The server went away mid-call (the client reports it, also when it closes): that
            # write was never acknowledged. Before the signal, no transport failure is allowed;
            # an assertion or any other exception is not caught here at all.
            if not signalled:
                raise
            cut_off.append(" / ".join(sorted({type(e).__name__ for e in _leaves(stopped)})))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as group:
            for index in range(writers):
                group.start_soon(write, f"counter-{index}")
            await enough.wait()
            signalled = True
            server.proc.send_signal(signal.SIGTERM)
        code = await server.stop()
    assert code == 0, server.stderr()
    assert server.logged(lambda r: r.get("event") == "stopped" and bool(r.get("signal")))
    # The signal landed while writes were still going (79 per writer; it was sent after 40 in all).
    assert cut_off, f"no writer was interrupted: {acknowledged}"

    with sqlite3.connect(launcher.database) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    async with StateManager.open(launcher.database) as manager:
        for name, acked in acknowledged.items():
            context = await manager.get(name)
            assert context.revision >= acked, (name, context.revision, acked)
            # Each write set n to its own index: the state is that of the last committed revision.
            assert context.state.data == {"n": context.revision - 1}
            revisions = [h.revision for h in await manager.history(name, limit=100)]
            assert revisions == list(range(context.revision, 0, -1))


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [leaf for e in group.exceptions for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])]


def test_tokens_cli_shows_a_token_once_and_never_its_hash(launcher: Launcher) -> None:
    created = launcher.cli("tokens", "create", "--principal", "ci bot", "--namespace", "builds")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert "shown only this once" in created.stderr and token not in created.stderr
    listed = launcher.cli("tokens", "list")
    assert listed.returncode == 0
    [line] = listed.stdout.splitlines()
    token_id, principal, namespace, grants, _, status = line.split("\t")
    assert (principal, namespace, grants, status) == ("ci bot", "builds", "admin:", "active")
    assert token not in listed.stdout and launcher.tokens.list()[0].sha256 not in listed.stdout
    assert launcher.cli("tokens", "revoke", token_id).returncode == 0
    assert launcher.cli("tokens", "list").stdout.split("\t")[-1].startswith("revoked ")
    unknown = launcher.cli("tokens", "revoke", "tok-nope")
    assert unknown.returncode == 1 and "no token 'tok-nope'" in unknown.stderr
    bad = launcher.cli("tokens", "create", "--principal", "x", "--namespace", "no spaces")
    assert bad.returncode == 1 and "namespace:" in bad.stderr


def test_allowed_hosts_and_origins_derive_from_the_bind_address() -> None:
    config = HttpConfig(host="192.168.1.5", port=9000, allowed_hosts=("mcp.example.com",))
    assert config.hosts() == [
        "127.0.0.1:9000",
        "localhost:9000",
        "[::1]:9000",
        "192.168.1.5:9000",
        "mcp.example.com",
    ]
    assert "https://mcp.example.com" in config.origins() and "http://localhost:9000" in config.origins()
    assert HttpConfig(host="0.0.0.0", port=1).hosts() == ["127.0.0.1:1", "localhost:1", "[::1]:1"]
    assert HttpConfig(host="::", port=1).url == "http://127.0.0.1:1/mcp"
    assert HttpConfig(host="::1", port=2, transport="sse").url == "http://[::1]:2/sse"
    assert [is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "0.0.0.0", "::", "example.com")] == [
        True,
        True,
        True,
        True,
        False,
        False,
        False,
    ]


def test_http_settings_from_the_environment(tmp_path: Path) -> None:
    settings = load_settings(
        env={
            "GROUNDHOG_TRANSPORT": "sse",
            "GROUNDHOG_PORT": "9001",
            "GROUNDHOG_ALLOWED_HOSTS": "a.example, b.example:*",
            "GROUNDHOG_ALLOWED_ORIGINS": "https://a.example",
            "GROUNDHOG_INSECURE_NO_AUTH": "true",
            "GROUNDHOG_TOKEN_FILE": str(tmp_path / "t.json"),
        },
        config_file=_write(tmp_path / "c.toml", 'host = "0.0.0.0"\nmax_body_bytes = 2097152\n'),
    )
    assert (settings.transport, settings.host, settings.port) == ("sse", "0.0.0.0", 9001)
    assert settings.allowed_hosts == ["a.example", "b.example:*"]
    assert settings.allowed_origins == ["https://a.example"]
    assert settings.insecure_no_auth is True and settings.max_body_bytes == 2 * 1024 * 1024
    assert settings.token_file == str(tmp_path / "t.json")


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
