"""Who a request runs as: the principal a bearer token names, or the server's own.

Over stdio, and over HTTP without authentication, every request runs as the principal from the
configuration. Over HTTP with bearer tokens, the token verifier puts the token's principal and
namespace into the SDK's ``AccessToken`` claims; the tools read them back from the request.
"""

from __future__ import annotations

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
    grants: list[Grant] = []
    for text in listed if isinstance(listed, list) else []:  # pyright: ignore[reportUnknownVariableType]
        try:
            grants.append(Grant.parse(str(text)))  # pyright: ignore[reportUnknownArgumentType]
        except ValueError:
            continue
    return Principal(name=name, namespace=namespace, grants=tuple(grants))


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
