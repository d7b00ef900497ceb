"""The tools' published schemas, computed from the code once and shipped beside it.

Registering a tool the SDK's way builds its pydantic argument and output models and both JSON
Schemas: most of a server's start-up (~70 ms for the ten tools of the default profile). What
``tools/list`` shows is a function of the code alone, so ``tool_schemas.json`` holds every tool's
input schema (compacted, ``server/surface.py``) and output schema (admitting error results,
``server/error_results.py``) and the parameter taking the request context, and a served tool
is registered from it (:func:`deferred_tool`); its models are built at its first call, exactly
as the SDK builds them.

``python tools/gen_docs.py`` rewrites the file (``--check`` names it when stale);
tests/server/test_tool_schemas.py compares it, and ``tools/list`` in both protocol eras, with a
server built the SDK's way, byte for byte.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver.tools import Tool
from mcp.server.mcpserver.utilities.func_metadata import func_metadata
from mcp_types import CallToolResult, Icon, InputRequiredResult, ToolAnnotations
from pydantic import PrivateAttr

from groundhog_mcp.server.arguments import StrictFuncMetadata

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from mcp.server.mcpserver import MCPServer

__all__ = [
    "SCHEMAS_FILE",
    "DeferredFuncMetadata",
    "computed_schemas",
    "deferred_tool",
    "published_schemas",
    "render",
    "sdk_built_server",
]

SCHEMAS_FILE = Path(__file__).with_name("tool_schemas.json")

Schemas = dict[str, dict[str, Any]]


def published_schemas() -> Schemas:
    """Tool name -> ``{"inputSchema": ..., "outputSchema": ...}`` as ``tools/list`` shows them,
    and the name of the parameter the SDK passes the request context in (``contextParameter``)."""
    loaded: Schemas = json.loads(SCHEMAS_FILE.read_text(encoding="utf-8"))
    return loaded


class DeferredFuncMetadata(StrictFuncMetadata):
    """A tool's metadata with its published output schema only: the argument and output models
    (:class:`StrictFuncMetadata`, as the SDK derives them from the function) are built at the
    tool's first call."""

    _fn: Callable[..., Any] | None = PrivateAttr(default=None)
    _skip_names: tuple[str, ...] = PrivateAttr(default=())
    _built: StrictFuncMetadata | None = PrivateAttr(default=None)

    @classmethod
    def of_function(
        cls, fn: Callable[..., Any], *, skip_names: tuple[str, ...], output_schema: dict[str, Any] | None
    ) -> DeferredFuncMetadata:
        # No arg_model yet: model_construct skips the check that it is set (a read fails loudly).
        metadata = cls.model_construct(output_schema=output_schema)
        metadata._fn = fn
        metadata._skip_names = skip_names
        return metadata

    def built(self) -> StrictFuncMetadata:
        """The models the SDK builds for the function (once), with this published output schema."""
        if self._built is None:
            assert self._fn is not None
            sdk = StrictFuncMetadata.of(func_metadata(self._fn, skip_names=self._skip_names, structured_output=True))
            sdk.output_schema = self.output_schema
            self._built = sdk
        return self._built

    def validate_arguments(self, arguments_to_validate: dict[str, Any]) -> dict[str, Any]:
        return self.built().validate_arguments(arguments_to_validate)

    def convert_result(self, result: Any) -> CallToolResult | InputRequiredResult:
        return self.built().convert_result(result)

    def pre_parse_json(self, data: dict[str, Any]) -> dict[str, Any]:
        return self.built().pre_parse_json(data)


def deferred_tool(
    fn: Callable[..., Any],
    published: Mapping[str, Any],
    *,
    name: str,
    title: str | None,
    description: str | None,
    annotations: ToolAnnotations | None,
    icons: list[Icon] | None,
    meta: dict[str, Any] | None,
) -> Tool:
    """What ``Tool.from_function(fn, ..., structured_output=True)`` makes, with the published
    schemas and context parameter instead of deriving them (our tools are coroutines without
    resolved parameters)."""
    context_kwarg: str | None = published["contextParameter"]
    return Tool(
        fn=fn,
        name=name,
        title=title,
        description=description or fn.__doc__ or "",
        parameters=published["inputSchema"],
        fn_metadata=DeferredFuncMetadata.of_function(
            fn,
            skip_names=() if context_kwarg is None else (context_kwarg,),
            output_schema=published["outputSchema"],
        ),
        is_async=inspect.iscoroutinefunction(fn),
        context_kwarg=context_kwarg,
        annotations=annotations,
        icons=icons,
        meta=meta,
    )


@asynccontextmanager
async def _no_lifespan(server: MCPServer[Any], subscriptions: Any) -> AsyncGenerator[Any]:
    yield None  # pragma: no cover (a server built only to read its surface)


def sdk_built_server() -> MCPServer[Any]:
    """A server with every tool, resource template and prompt built the SDK's way (not served)."""
    from groundhog_mcp.server.build import build_server

    return build_server(_no_lifespan, version="", tools=None, published=False)


def computed_schemas() -> Schemas:
    """Every tool's schemas, built the SDK's way (what the file saves at start-up)."""
    tools = sdk_built_server()._tool_manager.list_tools()  # pyright: ignore[reportPrivateUsage]
    return {
        tool.name: {
            "inputSchema": tool.parameters,
            "outputSchema": tool.output_schema,
            # Found by evaluating every annotation of the function: a third of the time left.
            "contextParameter": tool.context_kwarg,
        }
        for tool in tools
    }


def render(schemas: Schemas) -> str:
    """The file's text: one key order (the code's), stable across runs."""
    return json.dumps(schemas, indent=1, ensure_ascii=False) + "\n"
