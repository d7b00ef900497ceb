"""OAuth 2.1 resource server for real: a small RFC 7662 introspection endpoint (Starlette on a
loopback port, run by the test) and ``groundhog-mcp serve`` as a subprocess that asks it.

The endpoint and a server that trusts it are shared by the module's tests (a start costs a
second or two); each test grants tokens of its own names, in a namespace of its own.
"""

from __future__ import annotations

import base64
import signal
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from groundhog_mcp.models import Grant
from groundhog_mcp.server.http import bind_socket
from groundhog_mcp.server.oauth import IntrospectionConfig, IntrospectionVerifier, grants_from_scopes
from tests.server.test_http import (
    CALL_TIMEOUT_S,
    Launcher,
    ServerProcess,
    connect,
    error,
    ok,
    post_initialize,
    unique,
)

pytestmark = pytest.mark.e2e

CLIENT_ID, CLIENT_SECRET = "groundhog-rs", "introspection-secret"


@dataclass
class AuthorizationServer:
    """An introspection endpoint that knows the tokens the test gives it and counts its calls."""

    tokens: dict[str, dict[str, Any]] = field(default_factory=dict[str, dict[str, Any]])
    calls: list[str] = field(default_factory=list[str])
    port: int = 0
    namespace: str = "team-x"  # of the tokens granted from now on

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def introspect(self, request: Request) -> Response:
        expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
        if request.headers.get("authorization") != expected:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = await request.form()
        token = str(form.get("token", ""))
        self.calls.append(token)
        return JSONResponse(self.tokens.get(token, {"active": False}))

    def grant(self, token: str, server: ServerProcess, **claims: Any) -> str:
        """Make a token named after ``token`` active for ``server`` (its /mcp URL as audience)
        with ``claims``; the token (unique to this call)."""
        token = unique(token)
        self.tokens[token] = {
            "active": True,
            "aud": server.url,
            "iss": self.issuer,
            "exp": int(time.time()) + 3600,
            "client_id": "agent-app",
            "groundhog_namespace": self.namespace,
            **claims,
        }
        return token


@pytest.fixture(scope="module")
def authorization_server() -> Generator[AuthorizationServer]:
    endpoint = AuthorizationServer()
    app = Starlette(routes=[Route("/introspect", endpoint.introspect, methods=["POST"])])
    sock = bind_socket("127.0.0.1", 0)
    endpoint.port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        yield endpoint
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def launcher(tmp_path: Path) -> Generator[Launcher]:
    launched = Launcher(tmp_path)
    try:
        yield launched
    finally:
        launched.close()


@pytest.fixture(scope="module")
def introspecting(
    tmp_path_factory: pytest.TempPathFactory, authorization_server: AuthorizationServer
) -> Generator[ServerProcess]:
    """One server that asks ``authorization_server``, for the module; it must stop cleanly."""
    launcher = Launcher(tmp_path_factory.mktemp("introspecting"))
    try:
        server = _start(launcher, authorization_server)
        yield server
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=30)
    finally:
        launcher.close()
    assert code == 0, server.stderr()[-3000:]


@pytest.fixture
def endpoint(authorization_server: AuthorizationServer) -> AuthorizationServer:
    """The shared endpoint, granting this test's tokens in a namespace of its own."""
    authorization_server.namespace = unique("team-x")
    return authorization_server


def _start(launcher: Launcher, endpoint: AuthorizationServer, transport: str = "http") -> ServerProcess:
    secret_file = launcher.tmp_path / "introspection-secret"
    secret_file.write_text(CLIENT_SECRET + "\n", encoding="utf-8")
    return launcher.start(
        transport,
        env={
            "GROUNDHOG_OAUTH_ISSUER_URL": endpoint.issuer,
            "GROUNDHOG_OAUTH_INTROSPECTION_URL": f"{endpoint.issuer}/introspect",
            "GROUNDHOG_OAUTH_CLIENT_ID": CLIENT_ID,
            "GROUNDHOG_OAUTH_CLIENT_SECRET_FILE": str(secret_file),
        },
    )


async def test_introspected_tokens_act_as_their_subject_with_their_scopes(
    introspecting: ServerProcess, endpoint: AuthorizationServer
) -> None:
    server = introspecting
    assert server.serving is not None and server.serving["authenticated"] is True
    admin = endpoint.grant("at-admin", server, sub="alice", scope="openid groundhog:admin")
    reader = endpoint.grant("at-reader", server, username="rita", scope="groundhog:read:pub.")
    other = endpoint.grant("at-other", server, sub="bob", scope="groundhog:admin", groundhog_namespace=unique("y"))

    async with connect(server.url, admin) as a:
        created = await ok(a, "register_context", name="pub.doc", state={"data": {"n": 0}})
        assert created["namespace"] == endpoint.namespace
        await ok(a, "register_context", name="secret")
        history = await ok(a, "get_history", name="pub.doc")
        assert [r["actor"] for r in history["revisions"]] == ["alice"]
    async with connect(server.url, reader) as r:
        assert (await ok(r, "get_state", name="pub.doc"))["state"]["data"] == {"n": 0}
        refused = await error(r, "update_state", name="pub.doc", data={"n": 1})
        assert refused.endswith("access: the write grant on 'pub.doc' is missing for principal 'rita'")
        hidden = await error(r, "get_state", name="secret")
        missing = await error(r, "get_state", name="absent")
        assert hidden.replace("secret", "X") == missing.replace("absent", "X")
        assert [c["name"] for c in (await ok(r, "list_contexts"))["contexts"]] == ["pub.doc"]
    async with connect(server.url, other) as b:
        assert (await ok(b, "list_contexts"))["contexts"] == []

    # Answers are cached: many requests, one introspection per token.
    assert endpoint.calls.count(admin) == 1
    assert endpoint.calls.count(reader) == 1

    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        metrics_admin = await http.get(f"{server.base}/metrics", headers={"Authorization": f"Bearer {admin}"})
        assert metrics_admin.status_code == 200 and 'context="secret"' in metrics_admin.text
        metrics_reader = await http.get(f"{server.base}/metrics", headers={"Authorization": f"Bearer {reader}"})
        assert metrics_reader.status_code == 403
        metadata = await http.get(f"{server.base}/.well-known/oauth-protected-resource/mcp")
        assert metadata.status_code == 200
        assert metadata.json()["authorization_servers"] == [endpoint.issuer + "/"]
        assert metadata.json()["resource"] == server.url
    assert admin not in server.stderr() and CLIENT_SECRET not in server.stderr()


async def test_inactive_expired_foreign_and_unscoped_tokens_get_401(
    introspecting: ServerProcess, endpoint: AuthorizationServer
) -> None:
    server = introspecting
    now = int(time.time())
    refused = {
        "inactive": endpoint.grant("at-inactive", server, sub="a", active=False),
        "expired": endpoint.grant("at-expired", server, sub="a", exp=now - 5),
        "other audience": endpoint.grant("at-aud", server, sub="a", aud="http://elsewhere.example/mcp"),
        "no audience": endpoint.grant("at-noaud", server, sub="a", aud=None),
        "other issuer": endpoint.grant("at-iss", server, sub="a", iss="http://evil.example"),
        "no subject": endpoint.grant("at-nosub", server),
        "no namespace": endpoint.grant("at-nons", server, sub="a", groundhog_namespace=None),
        "bad namespace": endpoint.grant("at-badns", server, sub="a", groundhog_namespace="a b"),
        "unknown": unique("at-never-issued"),
    }
    for reason, token in refused.items():
        response = await post_initialize(server, token)
        assert response.status_code == 401, reason
        challenge = response.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and "resource_metadata=" in challenge, reason
    audience_list = endpoint.grant("at-list", server, sub="a", aud=["other", server.url + "/"])
    assert (await post_initialize(server, audience_list)).status_code == 200
    assert (await post_initialize(server)).status_code == 401


async def test_wrong_client_credentials_refuse_every_token(
    launcher: Launcher, authorization_server: AuthorizationServer, tmp_path: Path
) -> None:
    secret_file = tmp_path / "wrong-secret"
    secret_file.write_text("not-the-secret", encoding="utf-8")
    server = launcher.start(
        "http",
        env={
            "GROUNDHOG_OAUTH_ISSUER_URL": authorization_server.issuer,
            "GROUNDHOG_OAUTH_INTROSPECTION_URL": f"{authorization_server.issuer}/introspect",
            "GROUNDHOG_OAUTH_CLIENT_ID": CLIENT_ID,
            "GROUNDHOG_OAUTH_CLIENT_SECRET_FILE": str(secret_file),
        },
    )
    token = authorization_server.grant("at-admin", server, sub="alice", scope="groundhog:admin")
    assert (await post_initialize(server, token)).status_code == 401
    assert server.logged(lambda r: r.get("status") == 401 and "introspection" in str(r.get("event")))
    assert await server.stop() == 0


def test_oauth_without_issuer_refuses_to_start(launcher: Launcher) -> None:
    server = launcher.start("http", env={"GROUNDHOG_OAUTH_INTROSPECTION_URL": "http://127.0.0.1:9/x"}, ready=False)
    assert server.proc.wait(timeout=30) != 0
    assert "oauth_issuer_url: required with oauth_introspection_url" in server.stderr()
    assert not launcher.database.exists()  # refused before the database was touched


def test_scopes_map_to_grants() -> None:
    assert grants_from_scopes(
        ["openid", "groundhog:read:notes.", "groundhog:write", "groundhog:admin:ops.", "groundhog:", "groundhog:x:y"]
    ) == (Grant("notes.", "read"), Grant("", "write"), Grant("ops.", "admin"))


async def test_an_unreachable_endpoint_refuses_and_is_asked_again() -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    verifier = IntrospectionVerifier(
        IntrospectionConfig(
            issuer_url="http://127.0.0.1",
            introspection_url=f"http://127.0.0.1:{port}/introspect",
            resource_url="http://127.0.0.1:1/mcp",
            timeout_seconds=2,
        )
    )
    assert await verifier.verify_token("at-1") is None
    assert verifier._cache == {}  # pyright: ignore[reportPrivateUsage]
