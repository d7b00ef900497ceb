"""Resource templates and prompts registered without their models: built at first use.

The SDK builds, for each resource template and prompt, an argument model from the function, its
JSON Schema and a ``validate_call`` wrapper (~1 ms each here: the six templates and two prompts
were a third of building the server). ``resources/templates/list`` shows none of it, and
``prompts/list`` only the arguments, which are a function of the code alone. So:

- a template is a :class:`DeferredResourceTemplate` (what :class:`DeferredResourceManager` adds
  when the SDK's ``server.resource(...)`` decorator registers one, after the decorator's own
  checks): the fields the SDK lists, computed as ``ResourceTemplate.from_function`` computes them;
  the SDK's template is built at the first read that matches it, and reads it;
- a prompt is a :class:`DeferredPrompt` with its arguments and context parameter read from
  ``prompt_arguments.json`` (written by ``python tools/gen_docs.py``, which ``--check`` names
  when stale, like ``tool_schemas.json``); the SDK's prompt is built at its first rendering.

tests/server/test_deferred_builds.py compares both lists, in both protocol eras, with a server
built the SDK's way, byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver.prompts.base import Message, Prompt, PromptArgument
from mcp.server.mcpserver.resources.resource_manager import ResourceManager
from mcp.server.mcpserver.resources.templates import DEFAULT_RESOURCE_SECURITY, ResourceSecurity, ResourceTemplate
from mcp.server.mcpserver.utilities.context_injection import find_context_parameter
from mcp.shared.uri_template import UriTemplate
from mcp_types import Annotations, Icon, InputRequiredResult
from pydantic import ConfigDict, PrivateAttr

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.context import Context
    from mcp.server.mcpserver.resources.base import Resource

__all__ = [
    "PROMPTS_FILE",
    "DeferredPrompt",
    "DeferredResourceManager",
    "DeferredResourceTemplate",
    "computed_prompt_arguments",
    "defer_resource_templates",
    "published_prompt_arguments",
]

PROMPTS_FILE = Path(__file__).with_name("prompt_arguments.json")

PromptArguments = dict[str, dict[str, Any]]


class DeferredResourceTemplate(ResourceTemplate):
    """A template as ``ResourceTemplate.from_function`` makes it, without ``fn`` and
    ``parameters`` (reading either fails loudly) until :meth:`built`."""

    # Subclassing a pydantic model builds its schema at import, unless deferred: never validated.
    model_config = ConfigDict(defer_build=True)

    _source: Callable[..., Any] | None = PrivateAttr(default=None)
    _built: ResourceTemplate | None = PrivateAttr(default=None)

    @classmethod
    def of_function(
        cls,
        fn: Callable[..., Any],
        uri_template: str,
        *,
        name: str | None,
        title: str | None,
        description: str | None,
        mime_type: str | None,
        icons: list[Icon] | None,
        annotations: Annotations | None,
        meta: dict[str, Any] | None,
        security: ResourceSecurity,
    ) -> DeferredResourceTemplate:
        template = cls.model_construct(
            uri_template=uri_template,
            name=name or fn.__name__,
            title=title,
            description=description or fn.__doc__ or "",
            mime_type=mime_type or "text/plain",
            icons=icons,
            annotations=annotations,
            meta=meta,
            context_kwarg=find_context_parameter(fn),
            parsed_template=UriTemplate.parse(uri_template),
            security=security,
        )
        template._source = fn
        return template

    def built(self) -> ResourceTemplate:
        """The SDK's template for the function (built once)."""
        if self._built is None:
            assert self._source is not None
            self._built = ResourceTemplate.from_function(
                self._source,
                self.uri_template,
                name=self.name,
                title=self.title,
                description=self.description,
                mime_type=self.mime_type,
                icons=self.icons,
                annotations=self.annotations,
                meta=self.meta,
                security=self.security,
            )
        return self._built

    async def create_resource(
        self, uri: str, params: dict[str, Any], context: Context[Any, Any]
    ) -> Resource | InputRequiredResult:
        return await self.built().create_resource(uri, params, context)


class DeferredResourceManager(ResourceManager):
    """The SDK's resource manager, adding :class:`DeferredResourceTemplate` templates."""

    @classmethod
    def replacing(cls, sdk: ResourceManager) -> DeferredResourceManager:
        """A manager with ``sdk``'s resources and templates so far (an extension's, e.g.)."""
        manager = cls(sdk.warn_on_duplicate_resources)
        manager._resources = sdk._resources
        manager._templates = sdk._templates
        return manager

    def add_template(
        self,
        fn: Callable[..., Any],
        uri_template: str,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        mime_type: str | None = None,
        icons: list[Icon] | None = None,
        annotations: Annotations | None = None,
        meta: dict[str, Any] | None = None,
        security: ResourceSecurity = DEFAULT_RESOURCE_SECURITY,
    ) -> ResourceTemplate:
        template = DeferredResourceTemplate.of_function(
            fn,
            uri_template,
            name=name,
            title=title,
            description=description,
            mime_type=mime_type,
            icons=icons,
            annotations=annotations,
            meta=meta,
            security=security,
        )
        self._templates[template.uri_template] = template
        return template


def defer_resource_templates(server: MCPServer[Any]) -> None:
    """Register the server's resource templates from now on deferred."""
    sdk = server._resource_manager  # pyright: ignore[reportPrivateUsage]
    server._resource_manager = DeferredResourceManager.replacing(sdk)  # pyright: ignore[reportPrivateUsage]


class DeferredPrompt(Prompt):
    """A prompt as ``Prompt.from_function`` makes it, with published arguments and context
    parameter, and without ``fn`` (reading it fails loudly) until :meth:`built`."""

    model_config = ConfigDict(defer_build=True)

    _source: Callable[..., Any] | None = PrivateAttr(default=None)
    _built: Prompt | None = PrivateAttr(default=None)

    @classmethod
    def of_function(
        cls, fn: Callable[..., Any], published: dict[str, Any], *, name: str, title: str | None
    ) -> DeferredPrompt:
        prompt = cls.model_construct(
            name=name,
            title=title,
            description=fn.__doc__ or "",
            arguments=[PromptArgument(**argument) for argument in published["arguments"]],
            icons=None,
            context_kwarg=published["contextParameter"],
        )
        prompt._source = fn
        return prompt

    def built(self) -> Prompt:
        """The SDK's prompt for the function (built once)."""
        if self._built is None:
            assert self._source is not None
            self._built = Prompt.from_function(self._source, name=self.name, title=self.title)
        return self._built

    async def render(
        self, arguments: dict[str, Any] | None, context: Context[Any, Any]
    ) -> list[Message] | InputRequiredResult:
        return await self.built().render(arguments, context)


def published_prompt_arguments() -> PromptArguments:
    """Prompt name -> ``{"arguments": [...], "contextParameter": ...}`` as the SDK derives them."""
    loaded: PromptArguments = json.loads(PROMPTS_FILE.read_text(encoding="utf-8"))
    return loaded


def computed_prompt_arguments() -> PromptArguments:
    """Every prompt's arguments, built the SDK's way (what the file saves at start-up)."""
    from groundhog_mcp.server.tool_schemas import sdk_built_server

    prompts = sdk_built_server()._prompt_manager.list_prompts()  # pyright: ignore[reportPrivateUsage]
    return {
        prompt.name: {
            "arguments": [argument.model_dump() for argument in prompt.arguments or []],
            "contextParameter": prompt.context_kwarg,
        }
        for prompt in prompts
    }
