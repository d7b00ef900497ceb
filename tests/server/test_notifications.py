"""resources/subscribe, wait_for_change, prompts, completion and logging/setLevel in memory."""

from __future__ import annotations

import warnings
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError

from groundhog_mcp.server import AppContext
from tests.server.conftest import call, fail


async def test_subscribe_updates_and_unsubscribe_legacy(server: MCPServer[AppContext]) -> None:
    updated: list[str] = []
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))
            arrived.set()

    async with Client(server, mode="legacy", message_handler=on_message) as client:
        assert client.server_capabilities.resources is not None
        assert client.server_capabilities.resources.subscribe is True
        await call(client, "register_context", name="watched")
        await call(client, "register_context", name="other")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.subscribe_resource("groundhog://contexts/watched/state")
            # Any well-formed URI is acknowledged (the conformance suite subscribes to its own
            # test:// resource); only groundhog:// ones ever fire.
            await client.subscribe_resource("https://example.com/")
            await client.subscribe_resource("test://watched-resource")
        await call(client, "update_state", name="other", data={"x": 1})
        await call(client, "update_state", name="watched", data={"x": 1})
        with anyio.fail_after(5):
            await arrived.wait()
        assert updated == ["groundhog://contexts/watched/state"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await client.unsubscribe_resource("groundhog://contexts/watched/state")
        await call(client, "update_state", name="watched", data={"x": 2})
        # The write's own change feed entry is published before this wait returns.
        await call(client, "wait_for_change", contexts=["watched"], after_sequence=3, timeout=5)
        assert updated == ["groundhog://contexts/watched/state"]


async def test_wait_for_change_returns_changes_or_times_out(client: Client) -> None:
    await call(client, "register_context", name="a")
    await call(client, "register_context", name="b")
    empty = await call(client, "wait_for_change", timeout=0.05)
    assert empty["changes"] == [] and empty["timed_out"] is True and empty["cursor"] == 2
    history = await call(client, "wait_for_change", after_sequence=0, timeout=0)
    assert [c["context"] for c in history["changes"]] == ["a", "b"] and history["cursor"] == 2
    only_b = await call(client, "wait_for_change", contexts=["b"], after_sequence=0, timeout=0)
    assert [c["sequence"] for c in only_b["changes"]] == [2]

    results: list[dict[str, Any]] = []

    async def waiter() -> None:
        results.append(await call(client, "wait_for_change", contexts=["a"], after_sequence=2, timeout=10))

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await call(client, "update_state", name="b", data={"ignored": True})
        await call(client, "update_state", name="a", data={"k": 1})
    (result,) = results
    assert [(c["context"], c["revision"], c["op"], c["paths"]) for c in result["changes"]] == [
        ("a", 2, "update", ["/data/k"])
    ]
    assert result["cursor"] == 4
    text = await fail(client, "wait_for_change", timeout=61)
    assert "timeout: input should be less than or equal to 60" in text


async def test_prompts(client: Client) -> None:
    await call(client, "register_context", name="work", state={"data": {"todo": ["ship"]}})
    await call(client, "update_state", name="work", merge_patch={"done": ["plan"]})
    prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert prompts == {"resume_context", "summarize_changes"}
    resume = await client.get_prompt("resume_context", {"name": "work"})
    text = resume.messages[0].content.text  # type: ignore[union-attr]
    assert "revision 2" in text and '"ship"' in text and "expected_revision=2" in text
    summary = await client.get_prompt("summarize_changes", {"name": "work", "since_revision": "1"})
    text = summary.messages[0].content.text  # type: ignore[union-attr]
    assert '"/data/done"' in text and "revision 2: update by local" in text
    with pytest.raises(MCPError, match="no context named 'nope'"):
        await client.get_prompt("resume_context", {"name": "nope"})


async def test_completion_of_context_names(client: Client) -> None:
    for name in ("proj.alpha", "proj.beta", "other"):
        await call(client, "register_context", name=name)
    ref = types.ResourceTemplateReference(type="ref/resource", uri="groundhog://contexts/{name}/state")
    result = await client.complete(ref, {"name": "name", "value": "proj."})
    assert result.completion.values == ["proj.alpha", "proj.beta"]
    prompt = types.PromptReference(type="ref/prompt", name="resume_context")
    assert (await client.complete(prompt, {"name": "name", "value": "o"})).completion.values == ["other"]
    assert (await client.complete(prompt, {"name": "since_revision", "value": ""})).completion.values == []


async def test_logging_set_level_is_accepted(server: MCPServer[AppContext]) -> None:
    async with Client(server, mode="legacy") as client:
        assert client.server_capabilities.logging is not None
        await client.set_logging_level("debug")
