"""The dashboard's Starlette app: read-only pages over a :class:`StateManager`, as the signed-in
principal (``with_principal``), so a context the token cannot read never appears.

Every response carries a Content-Security-Policy without inline script and without any other
origin; the one script is ``static/dashboard.js`` from this package.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import parse_qs

import structlog
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from groundhog_mcp.dashboard import pages
from groundhog_mcp.dashboard.access import SESSION_COOKIE, Authenticate, Sessions
from groundhog_mcp.dashboard.live import LiveStreams
from groundhog_mcp.dashboard.markup import Html
from groundhog_mcp.dashboard.views import Views
from groundhog_mcp.errors import (
    AccessDeniedError,
    CompactedError,
    ContextError,
    NotFoundError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import Principal
from groundhog_mcp.security.audit import Signer
from groundhog_mcp.security.hosts import host_origin_refusal
from groundhog_mcp.service import StateManager

__all__ = ["CONTENT_SECURITY_POLICY", "DashboardConfig", "dashboard_app"]

log = structlog.get_logger("groundhog_mcp.dashboard")

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),  # no-referrer would make a form post say Origin: null
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]
_MAX_FORM_BYTES = 8192
_STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


@dataclass
class DashboardConfig:
    """How the dashboard is served. ``hosts``/``origins``: checked here when set (the standalone
    command); on ``/ui`` the HTTP transport's guard has checked them already."""

    base: str = ""  # the path it is mounted at: "" or "/ui"
    secure_cookies: bool = False  # the Secure cookie flag: on for a non-loopback bind
    hosts: list[str] | None = None
    origins: list[str] = field(default_factory=list[str])
    audit_key: Signer | None = None
    max_streams: int = 32  # live update streams open at once
    max_streams_per_session: int = 4
    stream_seconds: float = 300.0  # a stream then ends; the browser reconnects
    keepalive_seconds: float = 15.0
    stopping: asyncio.Event = field(default_factory=asyncio.Event)


class _Viewer:
    """The principal of one request and the manager acting as it."""

    def __init__(self, manager: StateManager, principal: Principal, session: str | None, token: str | None) -> None:
        self.manager = manager.with_principal(principal)
        self.principal = principal
        self.session = session
        self.token = token


def _status(exc: ContextError) -> int:
    if isinstance(exc, CompactedError):
        return 410
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, AccessDeniedError):
        return 403
    return 400 if isinstance(exc, StateValidationError) else 503


def dashboard_app(manager: StateManager, authenticate: Authenticate, config: DashboardConfig) -> ASGIApp:
    """The dashboard over ``manager`` (started by the caller), signing requests in with ``authenticate``."""
    sessions = Sessions()
    streams = LiveStreams(config.max_streams, config.max_streams_per_session)
    views = Views(config.audit_key)
    base = config.base
    assets = {name: (resources.files("groundhog_mcp.dashboard") / "static" / name).read_bytes() for name in _STATIC}

    async def viewer(request: Request) -> _Viewer | None:
        session = request.cookies.get(SESSION_COOKIE)
        token = sessions.token(session)
        principal = await authenticate(token) if token is not None else None
        if principal is None:
            sessions.drop(session)
            session, token = None, None
            principal = await authenticate(None)
        return None if principal is None else _Viewer(manager, principal, session, token)

    def html(body: Html, status: int = 200) -> Response:
        return HTMLResponse(str(body), status_code=status)

    def page_route(
        render: Callable[[Request, _Viewer, pages.Chrome], Awaitable[Html]], watch: Callable[[Request], str]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def handle(request: Request) -> Response:
            who = await viewer(request)
            if who is None:
                return RedirectResponse(f"{base}/login", status_code=303)
            sequence = await views.sequence(who.manager)
            chrome = pages.Chrome(base, who.principal, sequence, watch(request), signed_in=who.session is not None)
            try:
                return html(await render(request, who, chrome))
            except ContextError as exc:
                return html(pages.error_page(chrome, str(exc)), _status(exc))

        return handle

    async def contexts(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.contexts(
            who.manager, chrome, request.query_params.get("prefix", ""), request.query_params.get("cursor")
        )

    async def context(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.context(
            who.manager,
            chrome,
            request.path_params["name"],
            _int(request, "revision"),
            request.query_params.get("path", ""),
        )

    async def timeline(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.timeline(who.manager, chrome, request.path_params["name"], _int(request, "before"))

    async def diff(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.diff(
            who.manager, chrome, request.path_params["name"], _int(request, "from"), _int(request, "to")
        )

    async def events(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.events(who.manager, chrome, request.query_params.get("context") or None)

    async def audit(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.audit(who.manager, chrome, request.query_params.get("cursor"))

    async def metrics(request: Request, who: _Viewer, chrome: pages.Chrome) -> Html:
        return await views.metrics(who.manager, chrome, request.query_params.get("context") or None)

    async def node(request: Request) -> Response:
        who = await viewer(request)
        if who is None:
            return PlainTextResponse("Unauthorized: sign in again", status_code=401)
        try:
            fragment = await views.node(
                who.manager,
                base,
                request.path_params["name"],
                _int(request, "revision"),
                request.query_params.get("path", ""),
                _int(request, "offset") or 0,
            )
        except ContextError as exc:
            return PlainTextResponse(str(exc), status_code=_status(exc))
        return html(fragment)

    async def login_form(request: Request) -> Response:
        return html(pages.login_page(base))

    async def login(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return PlainTextResponse(
                    f"Payload too large: a sign-in form is at most {_MAX_FORM_BYTES} bytes", status_code=413
                )
        token = (parse_qs(body.decode("utf-8", "replace")).get("token") or [""])[0].strip()
        principal = await authenticate(token) if token else None
        if principal is None:
            return html(pages.login_page(base, "That token is not valid (unknown, revoked or expired)."), 401)
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{base}/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE,
            sessions.create(token),
            path=f"{base}/",
            httponly=True,
            samesite="strict",
            secure=config.secure_cookies,
        )
        log.info("dashboard sign-in", principal=principal.name, namespace=principal.namespace)
        return response

    async def logout(request: Request) -> Response:
        sessions.drop(request.cookies.get(SESSION_COOKIE))
        response = RedirectResponse(f"{base}/login", status_code=303)
        response.delete_cookie(
            SESSION_COOKIE, path=f"{base}/", httponly=True, samesite="strict", secure=config.secure_cookies
        )
        return response

    async def live(request: Request) -> Response:
        who = await viewer(request)
        if who is None:
            return PlainTextResponse("Unauthorized: sign in again", status_code=401)
        try:
            after = _int(request, "after")
        except ContextError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        last_id = request.headers.get("last-event-id", "")
        if last_id.isdigit() and len(last_id) < 20:
            after = int(last_id)
        name = request.query_params.get("context") or None

        async def still_signed_in() -> bool:
            return (await authenticate(who.token)) is not None

        # A signed-in browser is its session; without sign-in (an open loopback server), its address.
        owner = who.session or f"address:{request.client.host if request.client else ''}"
        return await streams.respond(
            who.manager,
            owner,
            after,
            name,
            still_signed_in,
            lifetime=config.stream_seconds,
            keepalive=config.keepalive_seconds,
            stopping=config.stopping,
        )

    async def static(request: Request) -> Response:
        name = request.path_params["file"]
        if name not in assets:
            return PlainTextResponse("Not found", status_code=404)
        return Response(assets[name], media_type=_STATIC[name], headers={"cache-control": "no-cache"})

    def everything(request: Request) -> str:
        return "*"

    def one(request: Request) -> str:
        return str(request.path_params["name"])

    def nothing(request: Request) -> str:
        return ""

    routes = [
        Route("/", page_route(contexts, everything)),
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/live", live),
        Route("/static/{file}", static),
        Route("/events", page_route(events, everything)),
        Route("/audit", page_route(audit, nothing)),
        Route("/metrics", page_route(metrics, everything)),
        Route("/c/{name}", page_route(context, one)),
        Route("/c/{name}/node", node),
        Route("/c/{name}/timeline", page_route(timeline, one)),
        Route("/c/{name}/diff", page_route(diff, nothing)),
    ]
    app: ASGIApp = Starlette(routes=routes)
    return _Guarded(app, config)


def _int(request: Request, key: str) -> int | None:
    text = request.query_params.get(key)
    if text is None or text == "":
        return None
    if not text.isdigit() or len(text) > 18:
        raise StateValidationError(
            [ValidationIssue("", f"must be a whole number >= 0; got {len(text)} characters that are not")], field=key
        )
    return int(text)


class _Guarded:
    """Security headers on every response; the Host/Origin check when configured; GET and HEAD
    only, but for signing in and out."""

    def __init__(self, app: ASGIApp, config: DashboardConfig) -> None:
        self._app = app
        self._config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        if self._config.hosts is not None:
            headers = Headers(scope=scope)
            refusal = host_origin_refusal(
                headers.get("host"), headers.get("origin"), self._config.hosts, self._config.origins
            )
            if refusal is not None:
                await PlainTextResponse(refusal[1], status_code=refusal[0])(scope, receive, send_with_headers)
                return
        root = scope.get("root_path", "")
        path = scope["path"][len(root) :] if root and scope["path"].startswith(root) else scope["path"]
        if scope["method"] not in ("GET", "HEAD") and not (scope["method"] == "POST" and path in ("/login", "/logout")):
            await PlainTextResponse("Method not allowed: the dashboard is read-only", status_code=405)(
                scope, receive, send_with_headers
            )
            return
        await self._app(scope, receive, send_with_headers)
