"""The HTTP transports: streamable HTTP (``/mcp``) and the legacy HTTP+SSE pair (``/sse``,
``/messages/``), served by uvicorn.

What this module adds to the SDK's Starlette apps:

- Host and Origin checks on **every** bind address, before authentication (the SDK turns its
  own checks on only for loopback binds): a bad Host is answered 421, a bad Origin 403.
- Bearer tokens from the token file (:class:`TokenFileVerifier`, the SDK's ``TokenVerifier``
  protocol over :class:`~groundhog_mcp.security.tokens.TokenStore`): no or bad token → 401 with
  ``WWW-Authenticate``.
- The refusal to serve a non-loopback address without authentication.
- A graceful stop: long-lived GET event streams are told the client left, requests in flight
  get ``graceful_timeout`` seconds to finish, and writes already handed to the store commit
  regardless (the caller closes the state manager after :meth:`HttpServer.serve` returns).
- ``GET /healthz``: ``{"status": "ok"}``, without authentication or Host check.
- ``GET /metrics``: the Prometheus exposition for a bearer token with ``admin`` on its whole
  namespace (401 without a valid token, 403 without that grant), or for anyone with
  ``metrics_public`` (:func:`add_metrics_route`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import secrets
import socket
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import structlog
import uvicorn
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import AnyHttpUrl
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

from groundhog_mcp.errors import ContextError, InitializationError
from groundhog_mcp.models import Principal
from groundhog_mcp.security.hosts import (
    allowed_hosts,
    authority,
    bind_socket,
    host_origin_refusal,
    is_loopback,
    is_unspecified,
    origins_of,
)
from groundhog_mcp.security.tokens import TokenStore
from groundhog_mcp.server.event_store import BoundedEventStore, UnscopedEventStore, scope_events_by_session
from groundhog_mcp.server.principals import principal_claims, principal_of

__all__ = [
    "HEALTH_PATH",
    "METRICS_PATH",
    "UI_PATH",
    "HttpConfig",
    "HttpServer",
    "TokenFileVerifier",
    "add_metrics_route",
    "bind_socket",
    "is_loopback",
    "refuse_unauthenticated_bind",
    "token_auth",
    "verifier_access",
]

log = structlog.get_logger("groundhog_mcp.http")

HEALTH_PATH = "/healthz"
METRICS_PATH = "/metrics"
Transport = Literal["http", "sse"]


@dataclass(frozen=True)
class HttpConfig:
    """Where and how to serve. ``allowed_hosts``/``allowed_origins`` extend the defaults: the
    localhost forms and the bind address with the port, and ``http(s)://`` of every allowed host."""

    transport: Transport = "http"
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = 4 * 1024 * 1024
    graceful_timeout: float = 10.0
    # The SSE ``retry`` a streamable-HTTP client is told to wait before reconnecting.
    retry_interval_ms: int = 1000
    # A client that connects must finish a request's headers within ``header_timeout`` seconds and
    # its body within ``body_timeout``; at most ``max_connections`` connections are served at once
    # (beyond that, 503). Slow or idle clients cannot hold the server's connections.
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 512
    # How often an open event stream checks that its bearer token is still valid (a revoked
    # token's streams end within this many seconds).
    credential_recheck: float = 5.0

    @property
    def authority(self) -> str:
        return authority(self.host, self.port)

    @property
    def path(self) -> str:
        return "/mcp" if self.transport == "http" else "/sse"

    @property
    def url(self) -> str:
        """The endpoint a client on this machine connects to."""
        host = self.host if not is_unspecified(self.host) else "127.0.0.1"
        return f"http://{authority(host, self.port)}{self.path}"

    def hosts(self) -> list[str]:
        return allowed_hosts(self.host, self.port, self.allowed_hosts)

    def origins(self) -> list[str]:
        return _unique([*origins_of(self.hosts()), *self.allowed_origins])

    def transport_security(self) -> TransportSecuritySettings:
        return TransportSecuritySettings(
            enable_dns_rebinding_protection=True, allowed_hosts=self.hosts(), allowed_origins=self.origins()
        )


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def refuse_unauthenticated_bind(config: HttpConfig, *, authenticated: bool, insecure_no_auth: bool) -> None:
    """Refuse a non-loopback bind without authentication unless ``insecure_no_auth`` says so."""
    if authenticated or is_loopback(config.host):
        return
    if insecure_no_auth:
        log.warning(
            "serving WITHOUT AUTHENTICATION on a non-loopback address: anyone who can reach it can read "
            "and change every context in the namespace",
            address=config.authority,
            insecure_no_auth=True,
        )
        return
    raise InitializationError(
        f"refusing to serve {config.transport} on {config.authority} without authentication: anyone who can "
        "reach that address could read and change every context. Create a token "
        "(groundhog-mcp tokens create --principal NAME) so that requests need one, bind 127.0.0.1, or pass "
        "--insecure-no-auth if something in front of this server authenticates requests"
    )


# -- bearer tokens --------------------------------------------------------------------------


class TokenFileVerifier(TokenVerifier):
    """The SDK's ``TokenVerifier`` over the token file: an active token becomes an
    ``AccessToken`` whose claims carry its principal and namespace.

    ``anonymous``: the principal of requests without a token while there is no token file (a
    loopback server started before its first token). The first token file seen turns
    authentication on for good — for new requests, open sessions and open streams alike — without
    a restart; deleting the file later does not turn it off again.
    """

    def __init__(self, store: TokenStore, anonymous: Principal | None = None) -> None:
        self._store = store
        self._anonymous = anonymous
        # Stands for "no token" on a server still open to anonymous requests: made here, known to
        # this process only, and accepted only while the server is open.
        self.anonymous_token = f"anonymous-{secrets.token_urlsafe(32)}"

    @property
    def may_be_open(self) -> bool:
        """Whether the server may still take anonymous requests (no token file seen yet); the
        file itself is checked when the anonymous token is verified (:meth:`is_open`)."""
        return self._anonymous is not None

    async def is_open(self) -> bool:
        """Whether a request without a token runs as the anonymous principal."""
        if self._anonymous is None:
            return False
        if await asyncio.to_thread(self._store.exists):
            log.warning(
                "a token file appeared: every request now needs a bearer token", token_file=str(self._store.path)
            )
            self._anonymous = None
            return False
        return True

    async def verify_token(self, token: str) -> AccessToken | None:
        # Bytes: compare_digest refuses str with non-ASCII characters, which a header may carry.
        presented = token.encode("utf-8", "surrogateescape")
        if self._anonymous is not None and hmac.compare_digest(presented, self.anonymous_token.encode()):
            anonymous = self._anonymous
            if not await self.is_open():
                return None
            return AccessToken(token=token, client_id="anonymous", scopes=[], claims=principal_claims(anonymous))
        record = await self._store.verify_in_thread(token)
        if record is None:
            log.debug("bearer token refused")
            return None
        return AccessToken(
            token=token,
            # One token, one session owner: another token of the same principal cannot take over
            # a session this one opened.
            client_id=record.id,
            subject=record.principal,
            scopes=[],
            claims=principal_claims(
                Principal(name=record.principal, namespace=record.namespace, grants=record.effective_grants)
            ),
        )


def token_auth(
    store: TokenStore, config: HttpConfig, anonymous: Principal | None = None
) -> tuple[TokenFileVerifier, AuthSettings]:
    """The ``MCPServer(token_verifier=..., auth=...)`` pair for tokens from ``store`` (and
    ``anonymous`` requests until the first token file appears: :class:`TokenFileVerifier`).

    A resource server of static tokens: no authorization server and no protected-resource
    metadata to advertise (``resource_server_url`` unset), so a 401 says ``Bearer`` and why,
    and does not send OAuth clients looking for an authorization server that does not exist.
    """
    issuer = AnyHttpUrl(f"http://{config.authority}")
    return TokenFileVerifier(store, anonymous), AuthSettings(issuer_url=issuer, resource_server_url=None)


# -- Prometheus /metrics ------------------------------------------------------------------


def add_metrics_route(
    server: MCPServer[Any],
    render: Callable[[Principal | None], Awaitable[str]],
    *,
    verifier: TokenVerifier | None,
    public: bool,
) -> None:
    """``GET /metrics`` on ``server``'s HTTP app: ``render(principal)`` as Prometheus text.

    ``public``: anyone may scrape, and the figures are those of the configured principal
    (``render(None)``). Otherwise a bearer token whose principal has ``admin`` on every context
    of its namespace is needed; the figures are that namespace's. No or a bad token → 401 with
    ``WWW-Authenticate``; a token without that grant → 403.
    """

    def unauthorized(reason: str) -> Response:
        return PlainTextResponse(
            f"Unauthorized: {reason}",
            status_code=401,
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
        )

    @server.custom_route(METRICS_PATH, methods=["GET"], include_in_schema=False)
    async def metrics(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        principal: Principal | None = None
        if not public:
            no_tokens = verifier is None or (isinstance(verifier, TokenFileVerifier) and await verifier.is_open())
            if no_tokens:
                return unauthorized("this server has no bearer tokens; serve /metrics with --metrics-public")
            assert verifier is not None
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not token:
                return unauthorized("/metrics needs a bearer token with the admin grant")
            access = await verifier.verify_token(token.strip())
            if access is None:
                return unauthorized("the bearer token is not valid")
            try:
                principal = principal_of(access)
            except ContextError:
                return unauthorized("the bearer token names no groundhog principal")
            if not principal.allows("admin", ""):
                return PlainTextResponse(
                    f"Forbidden: /metrics needs the admin grant on every context of namespace "
                    f"{principal.namespace!r}; principal {principal.name!r} lacks it",
                    status_code=403,
                )
        try:
            text = await render(principal)
        except ContextError as exc:
            return PlainTextResponse(f"Service unavailable: {exc}", status_code=503)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")


# -- the ASGI app ---------------------------------------------------------------------------


def http_app(
    server: MCPServer[Any],
    config: HttpConfig,
    stopping: asyncio.Event,
    verifier: TokenVerifier | None = None,
    ui: ASGIApp | None = None,
) -> ASGIApp:
    """The SDK's Starlette app for ``config.transport`` (and ``ui`` at ``/ui``) behind the
    Host/Origin guard."""

    @server.custom_route(HEALTH_PATH, methods=["GET"], include_in_schema=False)
    async def healthz(request: Request) -> Response:  # pyright: ignore[reportUnusedFunction]
        return JSONResponse({"status": "ok"})

    security = config.transport_security()
    if config.transport == "http":
        app = server.streamable_http_app(
            max_request_body_size=config.max_body_bytes,
            transport_security=security,
            host=config.host,
            event_store=UnscopedEventStore(),
            retry_interval=config.retry_interval_ms,
        )
        scope_events_by_session(server.session_manager, BoundedEventStore())
    else:
        app = server.sse_app(max_request_body_size=config.max_body_bytes, transport_security=security, host=config.host)
    return _Guard(app if ui is None else _WithUi(app, ui), config, stopping, verifier)


UI_PATH = "/ui"


class _WithUi:
    """``/ui/…`` to the dashboard (mounted: ``root_path`` ``/ui``), everything else to the SDK app."""

    def __init__(self, app: ASGIApp, ui: ASGIApp) -> None:
        self._app = app
        self._ui = ui

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and path == UI_PATH:
            await RedirectResponse(UI_PATH + "/", status_code=307)(scope, receive, send)
        elif scope["type"] == "http" and path.startswith(UI_PATH + "/"):
            await self._ui({**scope, "root_path": scope.get("root_path", "") + UI_PATH}, receive, send)
        else:
            await self._app(scope, receive, send)


def verifier_access(
    verifier: TokenVerifier | None, local: Principal
) -> Callable[[str | None], Awaitable[Principal | None]]:
    """The dashboard's sign-in over this server's token verifier: a browser's token acts as it
    would on ``/mcp``; without a token, the anonymous principal while the server is open; with
    no verifier at all (``insecure_no_auth``), everyone is ``local``."""

    async def authenticate(token: str | None) -> Principal | None:
        if verifier is None:
            return local
        if token is None:
            if not (isinstance(verifier, TokenFileVerifier) and verifier.may_be_open):
                return None
            token = verifier.anonymous_token
        access = await verifier.verify_token(token)
        if access is None:
            return None
        try:
            return principal_of(access)
        except ContextError:
            return None

    return authenticate


class _Guard:
    """Host/Origin checks ahead of authentication, a deadline for request bodies, anonymous
    requests while a loopback server has no token file, and the end of event streams on stop or
    when their token stops being valid."""

    def __init__(
        self, app: ASGIApp, config: HttpConfig, stopping: asyncio.Event, verifier: TokenVerifier | None
    ) -> None:
        self._app = app
        self._config = config
        self._stopping = stopping
        self._verifier = verifier
        self._hosts = config.hosts()
        self._origins = config.origins()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        if scope["path"] == HEALTH_PATH:
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        token = _bearer(headers)
        verifier = self._verifier
        if (
            token is None
            and isinstance(verifier, TokenFileVerifier)
            and scope["path"] != METRICS_PATH
            and verifier.may_be_open  # verify_token checks the file once: a token file refuses it
        ):
            token = verifier.anonymous_token
            scope = {**scope, "headers": [*scope["headers"], (b"authorization", f"Bearer {token}".encode())]}
        if scope["method"] != "GET":
            body = await self._read_body(scope, receive, send)
            if body is not None:
                await self._app(scope, body.receive, send)
            return
        # An event stream ends when its client leaves: on stop, or once its token is no longer
        # valid, tell its handler the client left, then end the response properly ourselves.
        ended = asyncio.Event()
        watch = asyncio.create_task(self._watch(token, ended))
        stream = _StreamUntilStop(receive, send, ended)
        try:
            await self._app(scope, stream.receive, stream.send)
            await stream.finish(scope)
        finally:
            watch.cancel()

    async def _watch(self, token: str | None, ended: asyncio.Event) -> None:
        """Set ``ended`` when the server stops or ``token`` stops verifying."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._config.credential_recheck)
                ended.set()
                return
            if token is not None and self._verifier is not None and await self._verifier.verify_token(token) is None:
                log.info("closing an event stream: its bearer token is no longer valid")
                ended.set()
                return

    async def _read_body(self, scope: Scope, receive: Receive, send: Send) -> _BufferedBody | None:
        """The whole request body, read within ``body_timeout`` seconds; None once answered 408
        or 413, or when the client left."""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self._config.body_timeout):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return None
                    chunk: bytes = message.get("body", b"")
                    size += len(chunk)
                    if size > self._config.max_body_bytes:
                        response = PlainTextResponse(
                            f"Payload too large: the request body exceeds {self._config.max_body_bytes} bytes",
                            status_code=413,
                        )
                        await response(scope, receive, send)
                        return None
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return _BufferedBody(b"".join(chunks), receive)
        except TimeoutError:
            log.warning("refused a request whose body did not arrive in time", body_timeout=self._config.body_timeout)
            response = PlainTextResponse(
                f"Request timeout: the request body did not arrive within {self._config.body_timeout:g} seconds",
                status_code=408,
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return None

    def _refusal(self, headers: Headers) -> Response | None:
        refusal = host_origin_refusal(headers.get("host"), headers.get("origin"), self._hosts, self._origins)
        return None if refusal is None else PlainTextResponse(refusal[1], status_code=refusal[0])


def _bearer(headers: Headers) -> str | None:
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


class _BufferedBody:
    """A request body read ahead: handed to the app as one message, then the client's own
    ``receive`` (which tells when it leaves)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def receive(self) -> Message:
        if self._body is not None:
            body, self._body = self._body, None
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()


class _StreamUntilStop:
    """One GET request whose handler is told, once ``stopping`` is set (the server stops, or the
    request's token was revoked), that its client has gone.

    From then on, like a server whose client really left, it drops what the handler still
    sends; :meth:`finish` then completes the response for the client that is in fact there.
    """

    def __init__(self, receive: Receive, send: Send, stopping: asyncio.Event) -> None:
        self._receive = receive
        self._send = send
        self._stopping = stopping
        self._detached = False
        self._started = False
        self._complete = False

    async def receive(self) -> Message:
        if not self._stopping.is_set():
            message = asyncio.ensure_future(self._receive())
            stop = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({message, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop.cancel()
            if message.done():
                return message.result()
            message.cancel()
        self._detached = True
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if self._detached:
            return
        if message["type"] == "http.response.start":
            self._started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self._complete = True
        await self._send(message)

    async def finish(self, scope: Scope) -> None:
        if not self._detached or self._complete:
            return
        if self._started:
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            response = PlainTextResponse("Service unavailable: the server is stopping", status_code=503)
            await response(scope, self._receive, self._send)


# -- uvicorn --------------------------------------------------------------------------------


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        # HttpServer.stop is the one way to stop: uvicorn must neither install its own signal
        # handlers nor re-raise the signal after shutting down.
        yield


class _HeaderDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers do not arrive
    within ``header_timeout`` seconds of it opening or of the previous response (uvicorn's own
    keep-alive timer is reset by every byte, so a client dribbling a header could hold a
    connection for ever)."""

    header_timeout: float = 10.0
    _deadline: asyncio.TimerHandle | None = None
    _seen: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._note_request()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._note_request() and not self.transport.is_closing():
            self._arm()

    def _note_request(self) -> bool:
        """Whether a request's headers arrived since the deadline was armed (disarms it then)."""
        cycle = cast("RequestResponseCycle | None", self.cycle)  # None until the first request
        if cycle is not None and cycle is not self._seen:
            self._seen = cycle
            self._disarm()
            return True
        return False

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        cycle = cast("RequestResponseCycle | None", self.cycle)
        if (cycle is None or cycle.response_complete) and not self.transport.is_closing():
            log.warning("closed a connection whose request headers did not arrive in time", client=str(self.client))
            self.transport.close()


@dataclass
class HttpServer:
    """Serves an MCP server over HTTP until :meth:`stop`."""

    server: MCPServer[Any]
    config: HttpConfig
    verifier: TokenVerifier | None = None
    ui: ASGIApp | None = None  # the dashboard, served at /ui
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _uvicorn: _Uvicorn | None = field(default=None, init=False)

    async def serve(self, sock: socket.socket) -> None:
        """Serve on a socket from :func:`bind_socket` (whose port ``config.port`` must be) until
        :meth:`stop`; returns once uvicorn has shut down."""
        protocol = type(
            "HeaderDeadlineProtocol", (_HeaderDeadlineProtocol,), {"header_timeout": self.config.header_timeout}
        )
        uvicorn_config = uvicorn.Config(
            http_app(self.server, self.config, self.stopping, self.verifier, self.ui),
            http=protocol,
            # uvicorn counts the connection asking too: one more serves exactly max_connections.
            limit_concurrency=self.config.max_connections + 1,
            lifespan="on",
            log_config=None,  # our logging (JSON lines on stderr) is configured already
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=int(self.config.graceful_timeout) or 1,
        )
        self._uvicorn = _Uvicorn(uvicorn_config)
        if self.stopping.is_set():
            return
        await self._uvicorn.serve(sockets=[sock])

    def stop(self) -> None:
        """Stop gracefully; a second call stops at once (in-flight requests are cancelled, writes
        already handed to the store still commit)."""
        if self._uvicorn is not None and self._uvicorn.should_exit:
            self._uvicorn.force_exit = True
        self.stopping.set()
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
