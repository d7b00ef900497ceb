"""The tool surface a model sees: the profile's tools only, with compact input schemas.

A model is sent name + description + inputSchema of every listed tool before its first call
(the Anthropic and OpenAI tool formats carry no output schema). Pydantic's schemas spend much of
that on what carries nothing for a caller: a ``title`` per property that repeats its key,
``anyOf`` wrappers around ``{"type": "null"}``, ``additionalProperties: true`` (the default) and
``default: null``. :func:`compact_schema` rewrites them to the equivalent short forms; the
arguments are still validated by the tools' pydantic models, so what is accepted is unchanged.
Two long constraints are shown shorter: the length bounds a context name's pattern already
states, and the 190-character semantic-version pattern (as its three-number core; the server
checks the full one and names it in its error).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from mcp.server.mcpserver import MCPServer

from groundhog_mcp.models import NAME_PATTERN, SEMVER_PATTERN

__all__ = ["compact_schema", "model_view_size", "select_tools"]

# Keywords whose value is a map of names to schemas, or a list of schemas.
_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_VALUES = ("items", "additionalProperties", "not", "contains")
# Patterns that already bound a string's length: minLength/maxLength beside them repeat it.
_BOUNDED_PATTERNS = frozenset({NAME_PATTERN})
# Patterns shown in a shorter, looser form (the tool's own validation keeps the exact one).
_SHOWN_PATTERNS = {SEMVER_PATTERN: r"^\d+\.\d+\.\d+"}


def compact_schema(schema: Any) -> Any:
    """``schema`` without annotation titles, ``additionalProperties: true``, ``default: null``,
    model docstrings in ``$defs`` and length bounds its pattern implies, and
    ``anyOf: [{type: T, ...}, {type: null}]`` as ``{type: [T, null], ...}``. The same instances
    are valid, except that a semantic version is checked by its core only."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    bounded = schema.get("pattern") in _BOUNDED_PATTERNS
    for key, value in schema.items():
        if key == "title" or (key == "additionalProperties" and value is True) or (key == "default" and value is None):
            continue
        if bounded and key in ("minLength", "maxLength"):
            continue
        if key == "description" and isinstance(value, str):
            out[key] = " ".join(value.split())  # docstring line breaks cost two bytes each in JSON
            continue
        if key == "pattern" and value in _SHOWN_PATTERNS:
            out[key] = _SHOWN_PATTERNS[value]
            continue
        if key == "$defs" and isinstance(value, dict):
            # A model's docstring is for Python readers; the fields using it describe it to the model.
            out[key] = {name: compact_schema(_without_description(sub)) for name, sub in value.items()}
        elif key in _SCHEMA_MAPS and isinstance(value, dict):
            out[key] = {name: compact_schema(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS and isinstance(value, list):
            out[key] = [compact_schema(sub) for sub in value]
        elif key in _SCHEMA_VALUES:
            out[key] = compact_schema(value)
        else:
            out[key] = value
    return _nullable(out)


def _without_description(schema: Any) -> Any:
    if isinstance(schema, dict):
        return {key: value for key, value in schema.items() if key != "description"}
    return schema


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    options = schema.get("anyOf")
    if not isinstance(options, list) or len(options) != 2 or {"type": "null"} not in options:
        return schema
    other = next(o for o in options if o != {"type": "null"})
    if not isinstance(other, dict) or not isinstance(other.get("type"), str):
        return schema  # a $ref or a union of several types
    if set(other) & set(schema) - {"anyOf", "description"}:
        return schema  # keywords that would collide
    # The field's own description wins over the one of the type it uses.
    merged = {**other, **{key: value for key, value in schema.items() if key != "anyOf"}}
    merged["type"] = [other["type"], "null"]
    return merged


def select_tools(server: MCPServer[Any], names: Iterable[str] | None) -> None:
    """Keep only the tools ``names`` lists (None: all), each with a compact input schema."""
    manager = server._tool_manager  # pyright: ignore[reportPrivateUsage]
    keep = None if names is None else set(names)
    for tool in manager.list_tools():
        if keep is not None and tool.name not in keep:
            manager.remove_tool(tool.name)
        else:
            tool.parameters = compact_schema(tool.parameters)
            if tool.description:
                tool.description = " ".join(tool.description.split())


def model_view_size(tools: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Bytes per tool of what a model is sent: compact JSON of name, description and inputSchema."""
    return {
        str(tool["name"]): len(
            json.dumps(
                {"name": tool["name"], "description": tool.get("description"), "inputSchema": tool["inputSchema"]},
                separators=(",", ":"),
                ensure_ascii=False,
            ).encode()
        )
        for tool in tools
    }
