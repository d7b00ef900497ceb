"""A bearer token's principal (groundhog_mcp/server/principals.py): its grants are parsed once per
token's claims, never shared between tokens that differ in anything."""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken

from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.server.principals import principal_claims, principal_of


def _token(principal: Principal, token: str = "t") -> AccessToken:
    return AccessToken(token=token, client_id="c", scopes=[], claims=principal_claims(principal))


def test_the_same_claims_give_the_same_parsed_principal() -> None:
    alice = Principal("alice", "team-a", (Grant.parse("read:notes."), Grant.parse("write:notes.todo")))
    first = principal_of(_token(alice, "one"))
    again = principal_of(_token(alice, "two"))  # a new AccessToken per request, as the verifier makes
    assert first == alice
    assert again is first  # parsed once, not once per request


def test_tokens_differing_in_anything_get_their_own_principal() -> None:
    base = Principal("alice", "team-a", (Grant.parse("read:notes."),))
    variants = [
        Principal("alice", "team-b", base.grants),  # another tenant, same name and grants
        Principal("bob", "team-a", base.grants),
        Principal("alice", "team-a", (Grant.parse("write:notes."),)),
        Principal("alice", "team-a", ()),
    ]
    seen = principal_of(_token(base))
    for variant in variants:
        got = principal_of(_token(variant))
        assert got == variant and got != seen
