"""A server registers its resource templates and prompts without building their models: what it
lists must be what the SDK would build from the code, byte for byte, and the SDK's templates and
prompts are built at their first use."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from mcp import Client
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.prompts.base import Prompt
from mcp.server.mcpserver.resources.templates import ResourceSecurity, ResourceTemplate

from groundhog_mcp.server import build_server
from groundhog_mcp.server.deferred_builds import (
    PROMPTS_FILE,
    DeferredPrompt,
    DeferredResourceTemplate,
    computed_prompt_arguments,
)
from groundhog_mcp.server.tool_schemas import render


@asynccontextmanager
async def _no_lifespan(server: MCPServer[Any], subscriptions: Any) -> AsyncGenerator[Any]:
    yield None


def _server(*, published: bool) -> MCPServer[Any]:
    return build_server(_no_lifespan, version="0", published=published)


def _templates(server: MCPServer[Any]) -> list[ResourceTemplate]:
    return server._resource_manager.list_templates()  # pyright: ignore[reportPrivateUsage]


def _prompts(server: MCPServer[Any]) -> list[Prompt]:
    return server._prompt_manager.list_prompts()  # pyright: ignore[reportPrivateUsage]


def test_the_published_prompt_arguments_are_what_the_code_builds() -> None:
    assert PROMPTS_FILE.read_text(encoding="utf-8") == render(computed_prompt_arguments()), (
        "server/prompt_arguments.json is stale: run `python tools/gen_docs.py`"
    )


async def _listed(server: MCPServer[Any], mode: str) -> dict[str, list[str]]:
    async with Client(server, mode=mode) as client:  # pyright: ignore[reportArgumentType]
        templates = (await client.list_resource_templates()).resource_templates
        prompts = (await client.list_prompts()).prompts
    return {
        "templates": [t.model_dump_json(by_alias=True, exclude_none=True) for t in templates],
        "prompts": [p.model_dump_json(by_alias=True, exclude_none=True) for p in prompts],
    }


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_templates_and_prompts_list_byte_identical_to_the_sdks(mode: str) -> None:
    ours = await _listed(_server(published=True), mode)
    sdks = await _listed(_server(published=False), mode)
    assert [len(ours["templates"]), len(ours["prompts"])] == [6, 2]
    assert ours == sdks


def test_templates_and_prompts_are_built_at_their_first_use_only() -> None:
    server = _server(published=True)
    templates, prompts = _templates(server), _prompts(server)
    assert {type(t) for t in templates} == {DeferredResourceTemplate}
    assert {type(p) for p in prompts} == {DeferredPrompt}
    for deferred in [*templates, *prompts]:
        assert deferred._built is None  # pyright: ignore[reportAttributeAccessIssue, reportUnknownMemberType]
        for unbuilt in ("fn", "parameters") if isinstance(deferred, DeferredResourceTemplate) else ("fn",):
            with pytest.raises(AttributeError):
                getattr(deferred, unbuilt)  # not there until built


def _without_fn(model: ResourceTemplate | Prompt, *also: str) -> dict[str, Any]:
    # fn: the SDK's validate_call wrapper, a new object per build.
    return {name: getattr(model, name) for name in type(model).model_fields if name not in {"fn", *also}}


def test_a_deferred_template_is_the_sdks_template_but_for_when_it_is_built() -> None:
    ours, sdks = _templates(_server(published=True)), _templates(_server(published=False))
    assert [t.uri_template for t in ours] == [t.uri_template for t in sdks]
    for deferred, sdk in zip(ours, sdks, strict=True):
        assert isinstance(deferred, DeferredResourceTemplate)
        assert _without_fn(deferred, "parameters") == _without_fn(sdk, "parameters")
        built = deferred.built()
        assert type(built) is ResourceTemplate
        assert _without_fn(built) == _without_fn(sdk)
        assert deferred.built() is built


async def _described(param: str) -> str:
    """A template function with neither description nor MIME type given."""
    return param


def test_a_deferred_template_falls_back_as_the_sdks() -> None:
    """The fields computed from the function (name, description, MIME type) as the SDK computes them."""
    security = ResourceSecurity(exempt_params={"param"})
    deferred = DeferredResourceTemplate.of_function(
        _described,
        "test://{param}",
        name=None,
        title=None,
        description=None,
        mime_type=None,
        icons=None,
        annotations=None,
        meta=None,
        security=security,
    )
    sdk = ResourceTemplate.from_function(_described, "test://{param}", security=security)
    assert (deferred.name, deferred.description, deferred.mime_type) == (
        "_described",
        "A template function with neither description nor MIME type given.",
        "text/plain",
    )
    assert _without_fn(deferred, "parameters") == _without_fn(sdk, "parameters")
    assert _without_fn(deferred.built()) == _without_fn(sdk)


def test_a_deferred_prompt_is_the_sdks_prompt_but_for_when_it_is_built() -> None:
    ours, sdks = _prompts(_server(published=True)), _prompts(_server(published=False))
    assert [p.name for p in ours] == [p.name for p in sdks] == ["resume_context", "summarize_changes"]
    for deferred, sdk in zip(ours, sdks, strict=True):
        assert isinstance(deferred, DeferredPrompt)
        assert _without_fn(deferred) == _without_fn(sdk)
        built = deferred.built()
        assert type(built) is Prompt
        assert _without_fn(built) == _without_fn(sdk)
        assert deferred.built() is built
