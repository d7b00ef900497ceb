"""Who a dashboard request acts as: browser sessions over the HTTP transports' bearer tokens.

A browser signs in once by posting a token; the server keeps it under a random session id (the
cookie: ``HttpOnly``, ``SameSite=Strict``, ``Secure`` off loopback) and re-verifies it on every
request, so a revoked token's session ends at its next request. The token never reaches a page.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from groundhog_mcp.models import Principal
from groundhog_mcp.security.tokens import TokenStore

__all__ = ["SESSION_COOKIE", "Authenticate", "Sessions", "TokenFileAccess"]

log = structlog.get_logger("groundhog_mcp.dashboard")

SESSION_COOKIE = "groundhog_session"

Authenticate = Callable[[str | None], Awaitable[Principal | None]]
"""``token`` → the principal it acts as, or None (a bad token). ``None`` asks for the principal of
a request without a token: the server's own while it is open (no token file yet), else None."""


class TokenFileAccess:
    """:data:`Authenticate` over the token file, as ``groundhog-mcp serve --transport http`` checks
    tokens: without a token file (loopback only) requests act as ``anonymous``; the first token
    file seen turns sign-in on for good."""

    def __init__(self, store: TokenStore, anonymous: Principal | None) -> None:
        self._store = store
        self._anonymous = anonymous

    async def __call__(self, token: str | None) -> Principal | None:
        if token is None:
            if self._anonymous is None:
                return None
            if await asyncio.to_thread(self._store.exists):
                log.warning("a token file appeared: the dashboard now needs a token", token_file=str(self._store.path))
                self._anonymous = None
                return None
            return self._anonymous
        record = await self._store.verify_in_thread(token)
        if record is None:
            return None
        return Principal(name=record.principal, namespace=record.namespace, grants=record.effective_grants)


@dataclass
class _Session:
    token: str
    last_seen: float


class Sessions:
    """Signed-in browsers: at most ``limit`` sessions (the least recently used goes first), each
    forgotten after ``idle_seconds`` without a request."""

    def __init__(self, *, limit: int = 1024, idle_seconds: float = 8 * 3600) -> None:
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._limit = limit
        self._idle = idle_seconds

    def create(self, token: str) -> str:
        session_id = secrets.token_urlsafe(32)
        self._sessions[session_id] = _Session(token, time.monotonic())
        while len(self._sessions) > self._limit:
            self._sessions.popitem(last=False)
        return session_id

    def token(self, session_id: str | None) -> str | None:
        """The token a live session signed in with (and the session is used now), or None."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.last_seen > self._idle:
            del self._sessions[session_id]
            return None
        session.last_seen = now
        self._sessions.move_to_end(session_id)
        return session.token

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(session_id, None)
