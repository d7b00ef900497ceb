"""Who a request runs as: the principal a bearer token names, or the server's own.

Over stdio, and over HTTP without authentication, every request runs as the principal from the
configuration. Over HTTP with bearer tokens, the token verifier puts the token's principal and
namespace into the SDK's ``AccessToken`` claims; the tools read them back from the request.
"""

from __future__ import annotations

import functools
from typing import Any

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from starlette.requests import HTTPConnection

from groundhog_mcp.errors import AccessDeniedError
from groundhog_mcp.models import Grant, Principal

__all__ = [
    "GRANTS_CLAIM",
    "NAMESPACE_CLAIM",
    "PRINCIPAL_CLAIM",
    "principal_claims",
    "principal_of",
    "request_principal",
]

PRINCIPAL_CLAIM = "groundhog_principal"
NAMESPACE_CLAIM = "groundhog_namespace"
GRANTS_CLAIM = "groundhog_grants"


def principal_claims(principal: Principal) -> dict[str, Any]:
    """The ``AccessToken.claims`` that carry ``principal`` (and its grants) to the tools."""
    return {
        PRINCIPAL_CLAIM: principal.name,
        NAMESPACE_CLAIM: principal.namespace,
        GRANTS_CLAIM: [str(g) for g in principal.grants],
    }


def principal_of(token: AccessToken) -> Principal:
    """The principal an authenticated token acts as. A token without our claims gets no
    namespace at all rather than the server's default one."""
    claims = token.claims or {}
    name, namespace = claims.get(PRINCIPAL_CLAIM), claims.get(NAMESPACE_CLAIM)
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise AccessDeniedError("authorization: the bearer token names no groundhog principal and namespace")
    # Our verifiers always set the grants; a token without them gets none (fail closed).
    listed = claims.get(GRANTS_CLAIM)
    texts = tuple(str(t) for t in listed) if isinstance(listed, list) else ()  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    return _principal(name, namespace, texts)


@functools.lru_cache(maxsize=1024)
def _principal(name: str, namespace: str, grants: tuple[str, ...]) -> Principal:
    """Grants are parsed once per token's claims, not once per request (keyed by everything the
    principal is made of, so two tokens share an entry only when they grant the same)."""
    parsed: list[Grant] = []
    for text in grants:
        try:
            parsed.append(Grant.parse(text))
        except ValueError:
            continue
    return Principal(name=name, namespace=namespace, grants=tuple(parsed))


def request_principal(request: object | None = None) -> Principal | None:
    """The authenticated principal of the current request, or None when it carries no token.

    ``request`` is the HTTP request the SDK attaches to a message (``ctx.request_context.request``);
    the SDK's auth context variable is consulted first.
    """
    token = get_access_token()
    if token is None and isinstance(request, HTTPConnection):
        user = request.scope.get("user")
        if isinstance(user, AuthenticatedUser):
            token = user.access_token
    return None if token is None else principal_of(token)
