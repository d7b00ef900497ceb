"""OAuth 2.1 resource server: bearer tokens checked by RFC 7662 token introspection.

The authorization server issues the tokens; this server only asks it, for each token it has
not seen lately, whether the token is active and what it allows. An introspection answer is
accepted when:

- ``active`` is ``true``, and ``exp`` (when given) is in the future;
- ``aud`` names this server (``resource_url``; a string or a list, compared without a trailing
  ``/``), and ``iss`` (when given) is the configured issuer;
- ``sub`` (or else ``username``) names the principal, and the namespace claim (default
  ``groundhog_namespace``) names its namespace.

Scopes map to grants: ``groundhog:read:notes.`` is read on every context whose name starts with
``notes.``, ``groundhog:write:`` (or ``groundhog:write``) write on every context of the
namespace, ``groundhog:admin`` admin on all of them. Other scopes are ignored; a token without
any ``groundhog:`` scope is valid but may not read or write anything.

Answers are cached for ``cache_seconds`` (never past the token's ``exp``), refusals too, keyed
by the token's SHA-256: a revoked token stops working within that time.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import httpx2
import structlog
from mcp.server.auth.provider import AccessToken, TokenVerifier

from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.server.principals import principal_claims

__all__ = ["SCOPE_PREFIX", "IntrospectionConfig", "IntrospectionVerifier", "grants_from_scopes"]

log = structlog.get_logger("groundhog_mcp.oauth")

SCOPE_PREFIX = "groundhog"
_NAMESPACE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
_MAX_TOKEN_CHARS = 8192
_MAX_CACHED = 10_000


@dataclass(frozen=True)
class IntrospectionConfig:
    """Where and how to introspect. ``client_id``/``client_secret`` authenticate this server to
    the introspection endpoint (HTTP Basic); never take them from the command line."""

    issuer_url: str
    introspection_url: str
    resource_url: str
    client_id: str | None = None
    client_secret: str | None = None
    namespace_claim: str = "groundhog_namespace"
    cache_seconds: float = 30.0
    timeout_seconds: float = 5.0


def grants_from_scopes(scopes: list[str]) -> tuple[Grant, ...]:
    """The grants ``groundhog:RIGHT[:PREFIX]`` scopes give; other scopes give none."""
    grants: list[Grant] = []
    for scope in scopes:
        head, _, rest = scope.partition(":")
        if head != SCOPE_PREFIX or not rest:
            continue
        try:
            grants.append(Grant.parse(rest))
        except ValueError:
            log.info("ignored a malformed groundhog scope", scope=scope[:200])
    return tuple(grants)


def _same_url(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")


class IntrospectionVerifier(TokenVerifier):
    """The SDK's ``TokenVerifier`` over an RFC 7662 introspection endpoint."""

    def __init__(self, config: IntrospectionConfig, *, client: httpx2.AsyncClient | None = None) -> None:
        self._config = config
        self._client = client
        self._cache: OrderedDict[str, tuple[float, AccessToken | None]] = OrderedDict()

    async def verify_token(self, token: str) -> AccessToken | None:
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        now = time.time()
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        answer = await self._introspect(token)
        access = self._accept(token, answer, now) if answer is not None else None
        until = now + self._config.cache_seconds
        if access is not None and access.expires_at is not None:
            until = min(until, float(access.expires_at))
        if answer is not None:  # an unreachable endpoint is asked again next time
            self._cache[key] = (until, access)
            self._cache.move_to_end(key)
            while len(self._cache) > _MAX_CACHED:
                self._cache.popitem(last=False)
        return access

    async def _introspect(self, token: str) -> dict[str, Any] | None:
        config = self._config
        auth = (config.client_id, config.client_secret or "") if config.client_id else None
        try:
            if self._client is not None:
                response = await self._post(self._client, token, auth)
            else:
                async with httpx2.AsyncClient(timeout=config.timeout_seconds) as client:
                    response = await self._post(client, token, auth)
        except httpx2.HTTPError as exc:
            log.warning("token introspection failed: the token is refused", error=type(exc).__name__)
            return None
        if response.status_code != 200:
            log.warning("token introspection answered an error: the token is refused", status=response.status_code)
            return None
        try:
            body = response.json()
        except ValueError:
            log.warning("token introspection answered something other than JSON: the token is refused")
            return None
        if not isinstance(body, dict):
            log.warning("token introspection answered a non-object: the token is refused")
            return None
        return body  # pyright: ignore[reportUnknownVariableType]

    async def _post(self, client: httpx2.AsyncClient, token: str, auth: tuple[str, str] | None) -> httpx2.Response:
        url, timeout = self._config.introspection_url, self._config.timeout_seconds
        data, headers = {"token": token, "token_type_hint": "access_token"}, {"Accept": "application/json"}
        if auth is None:
            return await client.post(url, data=data, headers=headers, timeout=timeout)
        return await client.post(url, data=data, headers=headers, auth=auth, timeout=timeout)

    def _accept(self, token: str, body: dict[str, Any], now: float) -> AccessToken | None:
        """The AccessToken an introspection answer stands for, or None (logged, without the token)."""
        config = self._config

        def refuse(reason: str) -> None:
            log.info("bearer token refused", reason=reason)

        if body.get("active") is not True:
            return refuse("inactive")
        exp = body.get("exp")
        if exp is not None and (isinstance(exp, bool) or not isinstance(exp, int | float) or exp <= now):
            return refuse("expired")
        audience = body.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        if not any(isinstance(a, str) and _same_url(a, config.resource_url) for a in audiences):  # pyright: ignore[reportUnknownVariableType]
            return refuse("audience is not this server")
        issuer = body.get("iss")
        if issuer is not None and not (isinstance(issuer, str) and _same_url(issuer, config.issuer_url)):
            return refuse("issuer is not the configured one")
        subject = body.get("sub") or body.get("username")
        if not isinstance(subject, str) or not 1 <= len(subject) <= 128 or not subject.isprintable():
            return refuse("no sub or username")
        namespace = body.get(config.namespace_claim)
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            return refuse(f"no valid {config.namespace_claim} claim")
        scope = body.get("scope")
        scopes = scope.split() if isinstance(scope, str) else []
        principal = Principal(name=subject, namespace=namespace, grants=grants_from_scopes(scopes))
        client_id = body.get("client_id")
        return AccessToken(
            token=token,
            client_id=client_id if isinstance(client_id, str) and client_id else subject,
            scopes=scopes,
            expires_at=int(exp) if exp is not None else None,
            resource=config.resource_url,
            subject=subject,
            claims={**principal_claims(principal), **({"iss": issuer} if isinstance(issuer, str) else {})},
        )
