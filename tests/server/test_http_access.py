"""Tenant isolation and grants over real HTTP: ``groundhog-mcp serve`` as a subprocess on a
loopback port, raw JSON-RPC requests and the SDK's clients.

Tokens: A (namespace ``team-x``, admin), B (namespace ``team-y``, admin) and R (``team-x``, read
on ``pub.`` only). A context B or R may not read must answer exactly like a missing one: the
raw JSON-RPC replies are compared byte for byte with the requested name substituted.

Most tests share one server per transport (``shared``, tests/server/test_http.py); each takes
namespaces of its own, so ``team-x`` and ``team-y`` are fresh names per test.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest

from groundhog_mcp.models import Grant
from groundhog_mcp.security.tokens import TokenStore
from tests.server.test_http import (
    _MCP_HEADERS,
    CALL_TIMEOUT_S,
    Launcher,
    ServerProcess,
    SharedServers,
    connect,
    error,
    ok,
    shared,
    unique,
)

pytestmark = pytest.mark.e2e

_PROTOCOL = "2025-11-25"


__all__ = ["shared"]  # the module-scoped fixture, imported to get one per module


@pytest.fixture
def launcher(tmp_path: Path) -> Generator[Launcher]:
    launched = Launcher(tmp_path)
    try:
        yield launched
    finally:
        launched.close()


class RawSession:
    """A streamable-HTTP MCP session spoken in raw JSON-RPC, so replies can be compared as bytes."""

    def __init__(self, http: httpx2.AsyncClient, server: ServerProcess, token: str) -> None:
        self._http = http
        self._url = f"{server.base}/mcp"
        self._headers = {**_MCP_HEADERS, "Authorization": f"Bearer {token}"}

    async def open(self) -> None:
        initialize = {
            "jsonrpc": "2.0",
            "id": 0,
            "method": "initialize",
            "params": {"protocolVersion": _PROTOCOL, "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
        }
        response = await self._http.post(self._url, json=initialize, headers=self._headers)
        assert response.status_code == 200, response.text
        self._headers["mcp-session-id"] = response.headers["mcp-session-id"]
        self._headers["mcp-protocol-version"] = _PROTOCOL
        initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        assert (await self._http.post(self._url, json=initialized, headers=self._headers)).status_code == 202

    async def request(self, method: str, params: dict[str, Any]) -> str:
        """The raw JSON-RPC reply (the text of the event that answers request id 1)."""
        body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
        response = await self._http.post(self._url, json=body, headers=self._headers)
        assert response.status_code == 200, response.text
        if response.headers["content-type"].startswith("application/json"):
            return response.text
        for line in response.text.splitlines():
            if line.startswith("data:") and '"id":1' in line.replace(" ", ""):
                return line[len("data:") :].strip()
        raise AssertionError(f"no reply to request 1 in {response.text[:500]!r}")


def _calls(name: str) -> list[tuple[str, dict[str, Any]]]:
    """Every request naming context ``name``: each tool, resource and prompt."""
    tool = "tools/call"
    uri = f"groundhog://contexts/{name}"
    return [
        (tool, {"name": "get_state", "arguments": {"name": name}}),
        (tool, {"name": "get_state", "arguments": {"name": name, "revision": 1, "path": "/n"}}),
        (tool, {"name": "get_context", "arguments": {"name": name}}),
        (tool, {"name": "get_history", "arguments": {"name": name}}),
        (tool, {"name": "diff_states", "arguments": {"name": name, "from_revision": 1}}),
        (tool, {"name": "validate_state", "arguments": {"name": name, "data": {}}}),
        (tool, {"name": "update_state", "arguments": {"name": name, "merge_patch": {"n": 9}}}),
        (tool, {"name": "update_state", "arguments": {"name": name, "expected_revision": 2, "data": {}}}),
        (tool, {"name": "rollback_state", "arguments": {"name": name, "revision": 1}}),
        (tool, {"name": "emit_event", "arguments": {"name": name, "type": "inc"}}),
        (tool, {"name": "unregister_context", "arguments": {"name": name}}),
        (tool, {"name": "migrate_context", "arguments": {"name": name, "dry_run": True}}),
        (tool, {"name": "migrate_context", "arguments": {"prefix": name}}),
        (tool, {"name": "get_metrics", "arguments": {"names": [name]}}),
        (tool, {"name": "list_contexts", "arguments": {"prefix": name}}),
        (tool, {"name": "list_dead_letters", "arguments": {"name": name}}),
        (tool, {"name": "wait_for_change", "arguments": {"contexts": [name], "after_sequence": 0, "timeout": 0}}),
        (tool, {"name": "merge_states", "arguments": {"inputs": [{"context": name}, {"context": "pub.doc"}]}}),
        (tool, {"name": "merge_states", "arguments": {"inputs": [{"context": "pub.doc"}, {"context": name}]}}),
        ("resources/read", {"uri": uri}),
        ("resources/read", {"uri": f"{uri}/state"}),
        ("resources/read", {"uri": f"{uri}/history"}),
        ("resources/read", {"uri": f"{uri}/revisions/1"}),
        ("prompts/get", {"name": "resume_context", "arguments": {"name": name}}),
        ("prompts/get", {"name": "summarize_changes", "arguments": {"name": name, "since_revision": "1"}}),
        (
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "resume_context"}, "argument": {"name": "name", "value": name}},
        ),
    ]


async def _seed(a: Any) -> None:
    handlers = {"inc": {"action": "increment", "path": "/n"}}
    for name in ("secret", "pub.doc"):
        await ok(a, "register_context", name=name, state={"data": {"n": 0}}, event_handlers=handlers)
        await ok(a, "update_state", name=name, merge_patch={"n": 1})


async def _dead_letter(a: Any) -> int:
    """A dead letter of a context only A may read (its handler cannot increment a string)."""
    handlers = {"inc": {"action": "increment", "path": "/n", "max_attempts": 1}}
    await ok(a, "register_context", name="letters", state={"data": {"n": "x"}}, event_handlers=handlers)
    assert "dead letter #" in await error(a, "emit_event", name="letters", type="inc")
    [letter] = (await ok(a, "list_dead_letters"))["dead_letters"]
    return int(letter["id"])


def _renamed(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params).replace("secret", "never-made"))


def _tokens(tokens: TokenStore) -> dict[str, str]:
    """A and R in a fresh ``team-x``, B in a fresh ``team-y``."""
    team_x, team_y = unique("team-x"), unique("team-y")
    return {
        "A": tokens.create("A", team_x)[1],
        "B": tokens.create("B", team_y)[1],
        "R": tokens.create("R", team_x, (Grant.parse("read:pub."),))[1],
        "team-x": team_x,
    }


async def test_foreign_and_unreadable_contexts_answer_exactly_like_missing_ones(shared: SharedServers) -> None:
    tokens = _tokens(shared.tokens)
    server = shared.server("http")
    async with connect(server.url, tokens["A"]) as a:
        await _seed(a)
        letter = await _dead_letter(a)
    register = "tools/call", {"name": "register_context", "arguments": {"name": "secret"}}
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        for who in ("B", "R"):
            session = RawSession(http, server, tokens[who])
            await session.open()
            # Dead letters are named by id: another tenant's id answers like one never issued.
            replays = [
                await session.request("tools/call", {"name": "replay_dead_letter", "arguments": {"id": n}})
                for n in (letter, 999)
            ]
            assert replays[0].replace(f"#{letter}", "#N") == replays[1].replace("#999", "#N")
            assert "no dead letter #999" in replays[1]
            listed_letters = await session.request("tools/call", {"name": "list_dead_letters", "arguments": {}})
            assert '"dead_letters":[]' in listed_letters.replace(" ", "")
            # R may not write there: creating a name it may not read is refused whether it exists or not.
            names = _calls("secret") + ([register] if who == "R" else [])
            absent = _calls("never-made") + ([(register[0], _renamed(register[1]))] if who == "R" else [])
            for (method, foreign), (_, missing) in zip(names, absent, strict=True):
                hidden = await session.request(method, foreign)
                absent = await session.request(method, missing)
                assert hidden.replace("secret", "NAME") == absent.replace("never-made", "NAME"), (who, method, foreign)
                tool = foreign.get("name")
                if tool in ("get_state", "get_history", "diff_states") or (tool == "update_state" and who == "B"):
                    assert '"isError":true' in hidden.replace(" ", "") and "no context named 'secret'" in hidden
                if tool in ("update_state", "register_context") and who == "R":
                    assert "access: the write grant on 'secret' is missing for principal 'R'" in hidden
                if method == "resources/read":
                    assert '"error"' in hidden and "secret" in hidden
            # The lists name nothing of A's that B/R may not read.
            listed = await session.request("tools/call", {"name": "list_contexts", "arguments": {}})
            resources = await session.request("resources/list", {})
            assert "secret" not in listed and "secret" not in resources
            assert ("pub.doc" in listed) == (who == "R") and ("pub.doc" in resources) == (who == "R")
    # A still sees everything, unchanged: none of the refused writes landed.
    async with connect(server.url, tokens["A"]) as a:
        state = await ok(a, "get_state", name="secret")
        assert state["revision"] == 2 and state["state"]["data"] == {"n": 1}


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_read_only_token_reads_and_writes_are_refused_naming_the_grant(
    shared: SharedServers, transport: str
) -> None:
    tokens = _tokens(shared.tokens)
    server = shared.server(transport)
    async with connect(server.url, tokens["A"]) as a, connect(server.url, tokens["R"]) as r:
        await _seed(a)
        assert (await ok(r, "get_state", name="pub.doc"))["state"]["data"] == {"n": 1}
        refusal = "access: the write grant on 'pub.doc' is missing for principal 'R'"
        for tool, arguments in [
            ("update_state", {"merge_patch": {"n": 2}}),
            ("rollback_state", {"revision": 1}),
            ("emit_event", {"type": "inc"}),
            ("register_context", {}),
        ]:
            text = await error(r, tool, name="pub.doc", **arguments)
            assert text == f"Error executing tool {tool}: {refusal}"
        merged = await error(r, "merge_states", inputs=[{"context": "pub.doc"}] * 2, target="pub.doc")
        assert merged.endswith(refusal)
        unregister = await error(r, "unregister_context", name="pub.doc")
        assert unregister.endswith("access: the admin grant on 'pub.doc' is missing for principal 'R'")
        assert (await ok(a, "get_state", name="pub.doc"))["revision"] == 2  # nothing written

        changes = await ok(r, "wait_for_change", after_sequence=0, timeout=0)
        assert {c["context"] for c in changes["changes"]} == {"pub.doc"}
        metrics = await ok(r, "get_metrics")
        assert [c["name"] for c in metrics["contexts"]] == ["pub.doc"]
        assert metrics["server"]["contexts"] == 1
        assert metrics["server"]["last_sequence"] == max(c["sequence"] for c in changes["changes"])
    async with connect(server.url, tokens["B"]) as b:
        metrics = await ok(b, "get_metrics")
        assert metrics["contexts"] == [] and metrics["server"]["contexts"] == 0
        assert metrics["server"]["last_sequence"] == 0 and metrics["server"]["errors"] == {}


async def test_notifications_only_for_readable_contexts(shared: SharedServers) -> None:
    tokens = _tokens(shared.tokens)
    server = shared.server("http")
    secret, public = "groundhog://contexts/secret/state", "groundhog://contexts/pub.doc/state"
    legacy_heard: list[str] = []
    legacy_changed = anyio.Event()

    async def inbox(message: Any) -> None:
        nonlocal legacy_changed
        if isinstance(message, types.ResourceUpdatedNotification):
            legacy_heard.append(str(message.params.uri))
        elif isinstance(message, types.ResourceListChangedNotification):
            legacy_heard.append("list changed")
        legacy_changed.set()
        legacy_changed = anyio.Event()

    async with (
        connect(server.url, tokens["A"]) as a,
        connect(server.url, tokens["R"], message_handler=inbox) as legacy,
        connect(server.url, tokens["R"], mode="2026-07-28") as modern,
        modern.listen(resources_list_changed=True, resource_subscriptions=[secret, public]) as subscription,
    ):
        for uri in (secret, public):
            await legacy.subscribe_resource(uri)
        await ok(a, "register_context", name="secret")
        await ok(a, "update_state", name="secret", merge_patch={"n": 1})
        await ok(a, "register_context", name="pub.doc")
        # One notifier delivers in change order: hearing of pub.doc means secret's came before.
        heard: list[str] = []
        with anyio.fail_after(CALL_TIMEOUT_S):
            async for event in subscription:
                heard.append(f"{type(event).__name__} {getattr(event, 'uri', '')}".strip())
                if f"ResourceUpdated {public}" in heard:
                    break
            while public not in legacy_heard:
                await legacy_changed.wait()
        assert heard == ["ResourcesListChanged", f"ResourceUpdated {public}"]
        assert legacy_heard == ["list changed", public]


def _has_sample(text: str, context: str) -> bool:
    return f'groundhog_context_revision{{context="{context}"}}' in text


@pytest.mark.parametrize("transport", ["http", "sse"])
async def test_prometheus_metrics_need_an_admin_token(shared: SharedServers, transport: str) -> None:
    tokens = _tokens(shared.tokens)
    server = shared.server(transport)
    async with connect(server.url, tokens["A"]) as a:
        await _seed(a)
        changes = (await ok(a, "wait_for_change", after_sequence=0, timeout=0))["changes"]
    # Sequences are store-wide (other tests wrote before); team-x's last is that of its 4th change.
    assert len(changes) == 4
    last_sequence = max(c["sequence"] for c in changes)
    url = f"{server.base}/metrics"
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        anonymous = await http.get(url)
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith("Bearer ")
        wrong = await http.get(url, headers={"Authorization": "Bearer ghm_wrong"})
        assert wrong.status_code == 401 and "not valid" in wrong.text
        reader = await http.get(url, headers={"Authorization": f"Bearer {tokens['R']}"})
        assert reader.status_code == 403
        assert reader.text == (
            f"Forbidden: /metrics needs the admin grant on every context of namespace '{tokens['team-x']}'; "
            "principal 'R' lacks it"
        )
        admin = await http.get(url, headers={"Authorization": f"Bearer {tokens['A']}"})
        assert admin.status_code == 200 and admin.headers["content-type"].startswith("text/plain")
        assert _has_sample(admin.text, "secret") and _has_sample(admin.text, "pub.doc")
        assert f"groundhog_last_sequence {last_sequence}.0" in admin.text
        other = await http.get(url, headers={"Authorization": f"Bearer {tokens['B']}"})
        assert other.status_code == 200
        assert "secret" not in other.text and "pub.doc" not in other.text  # another namespace's figures
        assert "groundhog_last_sequence 0.0" in other.text


async def test_metrics_public_needs_no_token(launcher: Launcher) -> None:
    tokens = _tokens(launcher.tokens)
    server = launcher.start("http", "--metrics-public")
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        response = await http.get(f"{server.base}/metrics")
        assert response.status_code == 200 and "groundhog_uptime_seconds" in response.text
        # The MCP endpoint itself still needs a token.
        assert (await http.post(f"{server.base}/mcp", json={}, headers=_MCP_HEADERS)).status_code == 401
    assert tokens  # the token file exists: authentication is on
    assert await server.stop() == 0


async def test_metrics_without_authentication_needs_metrics_public(launcher: Launcher) -> None:
    server = launcher.start("http")  # loopback, no token file
    async with httpx2.AsyncClient(timeout=CALL_TIMEOUT_S) as http:
        response = await http.get(f"{server.base}/metrics")
        assert response.status_code == 401 and "--metrics-public" in response.text
    assert await server.stop() == 0


def test_tokens_cli_grants(launcher: Launcher) -> None:
    created = launcher.cli(
        "tokens", "create", "--principal", "R", "--namespace", "team-x", "--grant", "read:pub.", "--grant", "write:"
    )
    assert created.returncode == 0, created.stderr
    assert "with grants read:pub. write:" in created.stderr
    [record] = launcher.tokens.list()
    assert record.grants == (Grant.parse("read:pub."), Grant.parse("write:"))
    listed = launcher.cli("tokens", "list").stdout.split("\t")
    assert listed[3] == "read:pub. write:"
    bad = launcher.cli("tokens", "create", "--principal", "x", "--grant", "read:notes/")
    assert bad.returncode == 1 and "names cannot contain '/'" in bad.stderr
    assert len(launcher.tokens.list()) == 1
    assert json.loads(launcher.token_file.read_text())["tokens"][0]["grants"] == ["read:pub.", "write:"]
