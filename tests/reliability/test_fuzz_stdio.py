"""Hostile input over the real stdio transport: hand-written JSON-RPC lines to the console script.

- ``test_hostile_seeds``: the table of tests/reliability/hostile.py as ``tools/call`` lines,
  with what no SDK client sends (``NaN``/``Infinity``/``1e400`` literals, lone surrogates,
  integers of 5000 digits, nesting 250 deep, a 16 MiB line).
- ``test_generated_arguments``: the schema-generated calls of test_fuzz_memory.py, over the pipe.
- ``test_protocol_garbage``: lines that are not valid JSON-RPC requests — malformed JSON,
  wrong ``id`` types, duplicate ids, missing fields, a 20 MiB unterminated line, invalid UTF-8.
  Requests with a usable id must be answered; nothing may kill the server or reach stdout
  as a non-protocol line.

After every line the server answers a ``ping`` within 2 s and the stored state is unchanged.
Lines the MCP SDK's strict parser refuses (lone surrogates, deep nesting, huge integers,
malformed JSON) used to be dropped without a reply; groundhog's hardened stdio
(groundhog_mcp/server/stdio.py) answers them, and ``test_dropped_line_is_answered`` checks it.
Requests the SDK would misread as notifications (an object, boolean or fraction as ``id``) or
drop (no ``jsonrpc`` member, ``params`` an array) get ``-32600`` (``test_invalid_request_is_answered``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.harness import RawServer, raw_result_text
from tests.reliability.battery import REPLY_WITHIN_S, assert_clear_error, scaled, start_raw
from tests.reliability.broken_plugin import Build
from tests.reliability.fuzzing import FuzzTally, GeneratedRun, Reply, StoreSnapshot, judge, read_back_with
from tests.reliability.hostile import SEED_CONTEXTS, hostile_cases, nested

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

EXAMPLES = scaled(300, 5000)
# A case may legitimately take a while (validating 16 MiB); the 2 s rule is for the next call.
CASE_TIMEOUT_S = 20.0
_ids = itertools.count(10_000)


class Stdio:
    """One server process spoken to in raw lines, with the bounded waits of this module."""

    def __init__(self, server: RawServer, database: Path) -> None:
        self.server = server
        self.database = database

    async def send_line(self, line: str | bytes) -> None:
        assert self.server.process.stdin is not None
        data = line if isinstance(line, bytes) else line.encode("utf-8")
        try:
            self.server.process.stdin.write(data + b"\n")
            await self.server.process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise AssertionError(f"the server exited; stderr:\n{self.server.stderr_text()[-2000:]}") from None

    async def reply_to(self, request_id: Any, within_s: float) -> dict[str, Any] | None:
        """The response to ``request_id`` within ``within_s`` seconds, or None; other responses are skipped."""
        try:
            async with asyncio.timeout(within_s):
                while True:
                    message = await self.server.receive()
                    assert message is not None, f"the server exited; stderr:\n{self.server.stderr_text()[-2000:]}"
                    if "method" in message:
                        continue  # a notification
                    if message.get("id") == request_id:
                        return message
        except TimeoutError:
            return None

    async def replies_to(self, request_ids: list[Any], grace: float = 0.5) -> dict[Any, dict[str, Any]]:
        """Replies to ``request_ids`` sent before: a ping is sent after them and answered first;
        then each missing reply gets ``grace`` seconds more (a line the server dropped gets none)."""
        wanted = set(map(_key, request_ids))
        found: dict[Any, dict[str, Any]] = {}
        ping = next(_ids)
        await self.send_line(json.dumps({"jsonrpc": "2.0", "id": ping, "method": "ping"}))
        deadline = asyncio.get_running_loop().time() + REPLY_WITHIN_S
        pinged = False
        try:
            while wanted - found.keys():
                async with asyncio.timeout_at(deadline):
                    message = await self.server.receive()
                assert message is not None, "the server exited"
                if "method" in message:
                    continue
                if message.get("id") == ping and not pinged:
                    pinged = True
                    deadline = min(deadline, asyncio.get_running_loop().time() + grace)
                elif _key(message.get("id")) in wanted:
                    found[_key(message.get("id"))] = message
        except TimeoutError:
            pass
        return found

    async def alive(self) -> None:
        request_id = next(_ids)
        await self.send_line(json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"}))
        reply = await self.reply_to(request_id, REPLY_WITHIN_S)
        assert reply is not None, f"no answer to ping within {REPLY_WITHIN_S} s"
        assert reply.get("result") == {}, f"ping answered with {reply}"

    async def call(self, tool: str, arguments: dict[str, Any], *, raw: dict[str, str] | None = None) -> Reply:
        request_id = next(_ids)
        await self.send_line(tool_call_line(request_id, tool, arguments, raw))
        reply = await self.reply_to(request_id, CASE_TIMEOUT_S)
        assert reply is not None, f"{tool}: no reply within {CASE_TIMEOUT_S} s"
        return as_reply(reply)


def _key(request_id: Any) -> str:
    return json.dumps(request_id)


def tool_call_line(request_id: int, tool: str, arguments: dict[str, Any], raw: dict[str, str] | None = None) -> str:
    """A ``tools/call`` line; ``raw`` placeholders become literals (``NaN``, ``1e400``)."""
    limit = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # the 5000-digit integer case
    try:
        message = {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }
        line = json.dumps(message, ensure_ascii=True)
    finally:
        sys.set_int_max_str_digits(limit)
    for placeholder, literal in (raw or {}).items():
        line = line.replace(json.dumps(placeholder), literal)
    return line


def as_reply(message: dict[str, Any]) -> Reply:
    if "error" in message:
        error = message["error"]
        text = str(error.get("message", ""))
        if error.get("data"):
            text += f" {json.dumps(error['data'])}"
        return Reply(True, text, rpc_error=error)
    result = message["result"]
    return Reply(bool(result.get("isError")), raw_result_text(result), result.get("structuredContent"))


async def _start_seeded(database: Path, env: dict[str, str], stderr_path: Path) -> Stdio:
    server = await start_raw(database, env=env, stderr_path=stderr_path)
    try:
        await server.initialize()
        connection = Stdio(server, database)
        for name, arguments in SEED_CONTEXTS.items():
            reply = await connection.call("register_context", {"name": name, **arguments})
            assert not reply.is_error, reply.text
    except BaseException:
        await server.ensure_dead()
        raise
    return connection


async def _stop(connection: Stdio, build: Build) -> None:
    try:
        if build.broken:
            return  # a broken build's verdict is the test's failure; its exit is no news
        assert await connection.server.close() == 0, "the server did not exit cleanly after the fuzzing"
        stderr = connection.server.stderr_text()
        assert "Traceback" not in stderr, f"a traceback on stderr:\n{stderr[-3000:]}"
    finally:
        await connection.server.ensure_dead()


@pytest.fixture
async def stdio(database: Path, raw_env: dict[str, str], tmp_path: Path, build: Build) -> AsyncGenerator[Stdio]:
    connection = await _start_seeded(database, raw_env, tmp_path / "server.stderr")
    try:
        yield connection
    finally:
        await _stop(connection, build)


@pytest.fixture
def generated(database: Path, raw_env: dict[str, str], tmp_path: Path, build: Build) -> Iterator[GeneratedRun]:
    """A seeded server driven from a portal thread (Hypothesis drives a plain function)."""
    with start_blocking_portal("asyncio") as portal:
        connection = portal.call(_start_seeded, database, raw_env, tmp_path / "generated.stderr")
        try:
            tools = portal.call(connection.server.request, "tools/list")["tools"]
            run = GeneratedRun(
                tools,
                call=lambda tool, arguments: portal.call(connection.call, tool, arguments),
                alive=lambda: portal.call(connection.alive),
                database=database,
            )
            yield run
        finally:
            portal.call(_stop, connection, build)
    print(f"\n{run.summary('over stdio')}")


@pytest.mark.broken_build("crash_on_missing_context", match=r"the server exited")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_generated_arguments(generated: GeneratedRun, data: st.DataObject) -> None:
    generated.example(data)


@pytest.mark.broken_build("crash_on_missing_context", match=r"the server exited")
async def test_hostile_seeds(stdio: Stdio) -> None:
    tally = FuzzTally()
    dropped = 0

    async def call(tool: str, arguments: dict[str, Any]) -> Reply:
        return await stdio.call(tool, arguments)

    for case in hostile_cases():
        before = StoreSnapshot.read(stdio.database)
        if case.stdio_dropped:
            # The SDK's parser refuses these lines (test_dropped_line_is_answered checks the reply);
            # here: the server lives on and nothing was stored.
            await stdio.send_line(tool_call_line(next(_ids), case.tool, case.arguments, case.raw))
            dropped += 1
        else:
            reply = await stdio.call(case.tool, case.arguments, raw=case.raw)
            await judge(
                case, reply, database=stdio.database, before=before, read_back=read_back_with(call), tally=tally
            )
        try:
            await stdio.alive()
        except AssertionError:
            tally.deaths += 1
            raise
        if case.stdio_dropped:
            assert StoreSnapshot.read(stdio.database) == before, f"{case.id}: a dropped line changed the store"
    print(f"\nhostile seeds, {tally.summary('over stdio')}; {dropped} lines refused by the SDK's parser")
    tally.assert_clean()


_DROPPED = sorted({case.stdio_dropped for case in hostile_cases() if case.stdio_dropped})


@pytest.mark.parametrize("category", _DROPPED)
@pytest.mark.broken_build("sdk_stdio", match=r"no reply within")
async def test_dropped_line_is_answered(stdio: Stdio, category: str) -> None:
    cases = {next(_ids): case for case in hostile_cases() if case.stdio_dropped == category}
    before = StoreSnapshot.read(stdio.database)
    for request_id, case in cases.items():
        await stdio.send_line(tool_call_line(request_id, case.tool, case.arguments, case.raw))
    replies = await stdio.replies_to(list(cases))
    missing = [case.id for request_id, case in cases.items() if _key(request_id) not in replies]
    assert not missing, f"no reply within {REPLY_WITHIN_S} s ({category}): {missing}"
    for request_id, case in cases.items():
        answer = as_reply(replies[_key(request_id)])
        assert answer.is_error, f"{case.id}: accepted"
        assert_clear_error(answer.text, case.tool, *case.mentions)
    assert StoreSnapshot.read(stdio.database) == before


def _request(request_id: Any, method: str = "ping", **extra: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, **extra})


# (label, line, id whose response must arrive or None)
GARBAGE: list[tuple[str, str | bytes, Any]] = [
    ("empty line", "", None),
    ("whitespace", "   \t ", None),
    ("not json", "{not json", None),
    ("truncated", '{"jsonrpc":"2.0","id":1,"method":"pi', None),
    ("bare string", '"ping"', None),
    ("bare number", "42", None),
    ("null", "null", None),
    ("empty object", "{}", None),
    ("empty array", "[]", None),
    ("batch", "[" + _request(1) + "]", None),
    ("invalid utf-8", b'{"jsonrpc":"2.0","id":"utf8","method":"ping","params":{"x":"\xff\xfe"}}', None),
    ("nul byte", '{"jsonrpc":"2.0","method":"ping","id":"nul"}\x00', None),
    ("id object", _request({"a": 1}), None),
    ("id array", _request([1]), None),
    ("id bool", _request(True), None),
    ("id float", _request(1.5), None),
    ("id null", _request(None), None),
    ("no jsonrpc", json.dumps({"id": "no-jsonrpc", "method": "ping"}), None),
    ("jsonrpc 1.0", json.dumps({"jsonrpc": "1.0", "id": "v1", "method": "ping"}), None),
    ("method number", json.dumps({"jsonrpc": "2.0", "id": "m", "method": 7}), None),
    ("params array", _request("params-array", "tools/call", params=[1, 2]), None),
    ("params string", _request("params-string", "tools/list", params="all"), None),
    ("client response, unknown id", json.dumps({"jsonrpc": "2.0", "id": 987654, "result": {}}), None),
    (
        "client error, unknown id",
        json.dumps({"jsonrpc": "2.0", "id": 987655, "error": {"code": 1, "message": "x"}}),
        None,
    ),
    ("unknown notification", json.dumps({"jsonrpc": "2.0", "method": "notifications/bogus"}), None),
    (
        "cancel unknown request",
        json.dumps({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 424242}}),
        None,
    ),
    (
        "oversize unterminated line",
        '{"jsonrpc":"2.0","id":"big","method":"ping","params":{"x":"' + "z" * (20 * 1024 * 1024),
        None,
    ),
    # Valid requests in odd shapes: each must be answered, with its own id.
    ("string id", _request("abc"), "abc"),
    ("empty string id", _request(""), ""),
    ("negative id", _request(-5), -5),
    ("huge id", _request(2**70), 2**70),
    ("unknown method", _request("unknown-method", "bogus/method"), "unknown-method"),
    ("tools/call without name", _request("no-name", "tools/call", params={"arguments": {}}), "no-name"),
    (
        "tools/call arguments list",
        _request("args-list", "tools/call", params={"name": "get_state", "arguments": [1]}),
        "args-list",
    ),
    (
        "tools/call arguments null",
        _request("args-null", "tools/call", params={"name": "get_state", "arguments": None}),
        "args-null",
    ),
    ("resources/read bad uri", _request("bad-uri", "resources/read", params={"uri": "file:///etc/passwd"}), "bad-uri"),
    (
        "resources/read traversal",
        _request("traversal", "resources/read", params={"uri": "groundhog://contexts/../../x/state"}),
        "traversal",
    ),
    (
        "prompts/get missing context",
        _request("prompt", "prompts/get", params={"name": "resume_context", "arguments": {"name": "nobody"}}),
        "prompt",
    ),
    ("extra members", _request("extra", "ping", extra={"x": 1}), "extra"),
]


@pytest.mark.broken_build("crash_on_unusable_id", match=r"the server exited")
async def test_protocol_garbage(stdio: Stdio) -> None:
    answered_wrongly: list[str] = []
    for label, line, expected_id in GARBAGE:
        before = StoreSnapshot.read(stdio.database)
        await stdio.send_line(line)
        if expected_id is not None:
            reply = await stdio.reply_to(expected_id, REPLY_WITHIN_S)
            if reply is None:
                answered_wrongly.append(f"{label}: no reply to id {expected_id!r} within {REPLY_WITHIN_S} s")
            elif "error" in reply:
                message = str(reply["error"].get("message", ""))
                if not message.strip() or "Traceback" in message:
                    answered_wrongly.append(f"{label}: unclear error {reply['error']}")
        await stdio.alive()
        assert StoreSnapshot.read(stdio.database) == before, f"{label}: the store changed"
    # Two requests with one id in flight at once: both are answered (or the second refused), nothing hangs.
    await stdio.send_line(tool_call_line(777, "wait_for_change", {"timeout": 0.2}))
    await stdio.send_line(tool_call_line(777, "get_state", {"name": "alpha"}))
    first = await stdio.reply_to(777, REPLY_WITHIN_S + 0.2)
    assert first is not None, "duplicate id: no reply at all"
    await stdio.alive()
    assert not answered_wrongly, "\n".join(answered_wrongly)


@pytest.mark.broken_build("sdk_stdio", match=r"no parse error \(-32700\) reply, got None")
async def test_parse_error_is_answered(stdio: Stdio) -> None:
    await stdio.send_line('{"jsonrpc":"2.0","id":1,"method":"pi')
    reply = (await stdio.replies_to([None])).get(_key(None))
    assert reply is not None and reply["error"]["code"] == -32700, f"no parse error (-32700) reply, got {reply}"


@pytest.mark.broken_build("sdk_stdio", match=r"params-array: no invalid-request reply")
@pytest.mark.broken_build("crash_on_unusable_id", match=r"the server exited")
async def test_invalid_request_is_answered(stdio: Stdio) -> None:
    lines = {
        "params-array": _request("params-array", "tools/call", params=[1, 2]),
        "no-jsonrpc": json.dumps({"id": "no-jsonrpc", "method": "ping"}),
    }
    for line in lines.values():
        await stdio.send_line(line)
    replies = await stdio.replies_to(["params-array", "no-jsonrpc"])
    assert replies.get(_key("params-array"), {}).get("error", {}).get("code") == -32600, (
        f"params-array: no invalid-request reply: {replies}"
    )
    assert replies[_key("params-array")]["error"]["message"] == "Invalid request: params: Input should be an object"
    assert replies.get(_key("no-jsonrpc"), {}).get("error", {}).get("code") == -32600, replies
    assert "jsonrpc" in replies[_key("no-jsonrpc")]["error"]["message"], replies
    # The SDK would read these as notifications and never answer: each gets -32600 with id null.
    for bad_id, kind in (({"a": 1}, "an object"), (True, "a boolean"), (1.5, "a fraction"), ([1], "an array")):
        await stdio.send_line(_request(bad_id))
        reply = (await stdio.replies_to([None])).get(_key(None))
        assert reply is not None and reply["error"]["code"] == -32600, f"id {bad_id!r}: {reply}"
        assert f"id must be a string or an integer, not {kind}" in reply["error"]["message"], reply
    # An "id" inside params is not the request's id: that request is served as usual.
    await stdio.send_line(tool_call_line(4242, "update_state", {"name": "alpha", "data": {"id": {"nested": True}}}))
    served = await stdio.reply_to(4242, REPLY_WITHIN_S)
    assert served is not None and "result" in served, served


@pytest.mark.broken_build("sdk_prompt_errors", match=r"unknown-prompt: \{'code': 0")
async def test_prompt_errors_use_json_rpc_codes(stdio: Stdio) -> None:
    for request_id, params in (
        ("unknown-prompt", {"name": "no_such_prompt"}),
        ("missing-argument", {"name": "resume_context", "arguments": {}}),
    ):
        await stdio.send_line(_request(request_id, "prompts/get", params=params))
        reply = await stdio.reply_to(request_id, REPLY_WITHIN_S)
        assert reply is not None and "error" in reply, f"{request_id}: {reply}"
        assert reply["error"]["code"] == -32602, f"{request_id}: {reply['error']}"
        if request_id == "missing-argument":
            assert "name" in reply["error"]["message"] and "{" not in reply["error"]["message"], reply["error"]


@pytest.mark.broken_build("no_depth_limit", match=r"data nested 150 deep was accepted")
async def test_depth_150_over_stdio_is_refused_clearly(stdio: Stdio) -> None:
    """Below the SDK's parser limit the server's own rule speaks (a guard for the xfail above)."""
    reply = await stdio.call("update_state", {"name": "alpha", "data": nested(150)})
    assert reply.is_error, f"data nested 150 deep was accepted: {reply.text[:200]}"
    assert_clear_error(reply.text, "update_state", "data", "depth")
