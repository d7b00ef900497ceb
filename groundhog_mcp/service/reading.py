"""Bounded reads: a value too large to return is described by its parts instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from groundhog_mcp.models import dumps, json_type, pointer_token

__all__ = ["TooLarge", "bounded"]

_MAX_PARTS = 50


def _kind(value: Any) -> str:
    """The JSON type, integers and fractions alike ``number`` (what an outline shows)."""
    kind = json_type(value)
    return "number" if kind == "integer" else kind


@dataclass(frozen=True)
class TooLarge:
    """What a client gets instead of a value larger than ``limit``: sizes of its parts."""

    bytes: int
    limit: int
    parts: list[dict[str, Any]]
    more_parts: int

    def hint(self, tool_hint: str) -> str:
        return (
            f"the value is {self.bytes} bytes, more than the read limit of {self.limit} bytes; "
            f"read its parts one at a time: {tool_hint}"
        )


def bounded(value: Any, base_pointer: str, limit: int) -> TooLarge | None:
    """None when ``value`` fits in ``limit`` bytes; otherwise an outline of its children."""
    size = len(dumps(value).encode("utf-8"))
    if size <= limit:
        return None
    children: list[tuple[str, Any]]
    if isinstance(value, dict):
        children = [(f"{base_pointer}/{pointer_token(k)}", v) for k, v in value.items()]  # pyright: ignore[reportUnknownVariableType]
    elif isinstance(value, list):
        children = [(f"{base_pointer}/{i}", v) for i, v in enumerate(value)]  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    else:
        children = []
    parts = [
        {"path": pointer, "type": _kind(child), "bytes": len(dumps(child).encode("utf-8"))}
        for pointer, child in children[:_MAX_PARTS]
    ]
    return TooLarge(bytes=size, limit=limit, parts=parts, more_parts=max(0, len(children) - _MAX_PARTS))
