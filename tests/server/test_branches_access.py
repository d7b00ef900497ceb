"""Lineage never names a context the reader may not read: ``forked_from`` (get_context, the
context resource, fork_context), the ``parents`` of history entries (get_history, the history
resource) and the merge base a three-way merge finds from lineage.

A hostile tenant's view, over real HTTP: ``groundhog-mcp serve`` as a subprocess, the SDK client
with bearer tokens from the token file. Token A (admin on the namespace) forks and merges a
context ``src.secret`` into ``pub.`` contexts; token F's grants cover only ``pub.``. Nothing F
receives may contain the hidden name; what F may read is still shown.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from groundhog_mcp.models import Grant
from tests.server.test_http import Launcher, ServerProcess, connect, error, ok, unique

pytestmark = pytest.mark.e2e

HIDDEN = "secret"  # in the source's name, and nowhere in F's answers


@pytest.fixture
def served(tmp_path: Path) -> Generator[tuple[ServerProcess, str, str]]:
    launcher = Launcher(tmp_path)
    team = unique("team")
    _, admin = launcher.tokens.create("A", team)
    _, forker = launcher.tokens.create("F", team, (Grant.parse("write:pub."),))
    try:
        yield launcher.start("http", "--tools", "all"), admin, forker
    finally:
        launcher.close()


async def _read(client: Client, uri: str) -> tuple[str, dict[str, Any]]:
    result = await client.read_resource(uri)
    text = getattr(result.contents[0], "text", "")
    return text, json.loads(text)


async def test_lineage_hides_a_source_the_reader_may_not_read(served: tuple[ServerProcess, str, str]) -> None:
    server, admin, forker = served
    async with connect(server.url, admin) as a:
        await ok(a, "register_context", name="src.secret", state={"data": {"title": "t", "steps": 1}})
        await ok(a, "fork_context", name="src.secret", new_name="pub.fork")
        await ok(a, "fork_context", name="src.secret", new_name="pub.sibling")
        await ok(a, "register_context", name="pub.other", state={"data": {"extra": True}})
        await ok(a, "update_state", name="src.secret", merge_patch={"title": "T"})
        three_way = [{"context": "src.secret"}, {"context": "pub.fork"}]
        await ok(a, "merge_states", inputs=three_way, strategy="three_way", target="pub.fork")  # revision 2
        ordered = [{"context": "pub.fork"}, {"context": "pub.other"}, {"context": "src.secret"}]
        await ok(a, "merge_states", inputs=ordered, strategy="ordered", target="pub.fork")  # revision 3
        # A, who may read the source, sees the whole lineage.
        assert (await ok(a, "get_context", name="pub.fork"))["forked_from"] == {
            "kind": "fork",
            "name": "src.secret",
            "revision": 1,
        }
        latest = (await ok(a, "get_history", name="pub.fork", limit=1))["revisions"][0]
        assert [p["name"] for p in latest["parents"]] == ["pub.other", "src.secret"]

    answers: list[str] = []
    async with connect(server.url, forker) as f:
        info = await f.call_tool("get_context", {"name": "pub.fork"})
        assert not info.is_error and info.structured_content is not None
        answers.append(json.dumps(info.model_dump(mode="json")))
        assert info.structured_content["forked_from"] is None
        assert info.structured_content["revision"] == 3

        text, resource = await _read(f, "groundhog://contexts/pub.fork")
        answers.append(text)
        assert resource["forked_from"] is None and resource["name"] == "pub.fork"

        history = await f.call_tool("get_history", {"name": "pub.fork"})
        assert not history.is_error and history.structured_content is not None
        answers.append(json.dumps(history.model_dump(mode="json")))
        parents = [(r["revision"], r.get("parents")) for r in history.structured_content["revisions"]]
        # The merge that took in pub.other names it; the fork point and the other merge input do not show.
        assert parents == [(3, [{"kind": "merge", "name": "pub.other", "revision": 1}]), (2, None), (1, None)]

        text, resource = await _read(f, "groundhog://contexts/pub.fork/history")
        answers.append(text)
        assert [r.get("parents") for r in resource["revisions"]] == [
            [{"kind": "merge", "name": "pub.other", "revision": 1}],
            None,
            None,
        ]

        # F's own fork of what it may read names its source.
        forked = await f.call_tool("fork_context", {"name": "pub.fork", "new_name": "pub.fork2"})
        assert not forked.is_error and forked.structured_content is not None
        answers.append(json.dumps(forked.model_dump(mode="json")))
        assert forked.structured_content["forked_from"] == {"kind": "fork", "name": "pub.fork", "revision": 3}
        again = await ok(f, "get_context", name="pub.fork2")
        assert again["forked_from"] == {"kind": "fork", "name": "pub.fork", "revision": 3}

        # A three-way merge whose base (from lineage) is in the hidden context: refused, unnamed.
        siblings = [{"context": "pub.fork"}, {"context": "pub.sibling"}]
        refused = await error(f, "merge_states", inputs=siblings, strategy="three_way", dry_run=True)
        answers.append(refused)
        assert "base:" in refused and "pass base explicitly" in refused

        for answer in answers:
            assert HIDDEN not in answer, answer
