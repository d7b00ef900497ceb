"""Bounded reads: a value too large to return is described by its parts instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import dumps, json_type, pointer_token, pointer_tokens
from groundhog_mcp.service.patching import resolve_pointer

__all__ = ["MAX_FIELDS", "ArrayPage", "Part", "TooLarge", "bounded", "page_array", "project", "read_part"]

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


DEFAULT_PAGE = 100
"""Array items a page holds when ``limit`` is not given."""
MAX_POINTER_CHARS = 1000
MAX_FIELDS = 32
"""At most this many JSON Pointers in a ``fields`` projection."""


def _steps(pointer: str, field: str) -> list[str]:
    if len(pointer) > MAX_POINTER_CHARS:
        raise StateValidationError(
            [ValidationIssue("", f"at most {MAX_POINTER_CHARS} characters; got {len(pointer)}")], field=field
        )
    if not pointer.startswith("/"):
        raise StateValidationError(
            [ValidationIssue("", f"must be a JSON Pointer starting with '/' (RFC 6901); got {pointer[:80]!r}")],
            field=field,
        )
    return pointer_tokens(pointer)


def project(document: Any, pointers: Sequence[str], field: str = "fields") -> tuple[dict[str, Any], list[str]]:
    """A sparse copy of ``document`` holding only the values at ``pointers``, and the pointers
    that resolve to nothing. Every pointer found resolves in the copy to the same value; an array
    on the way becomes an object keyed by the element's index (``{"tasks": {"3": {...}}}``)."""
    if len(pointers) > MAX_FIELDS:
        raise StateValidationError(
            [ValidationIssue("", f"at most {MAX_FIELDS} JSON Pointers; got {len(pointers)}")], field=field
        )
    found: list[tuple[list[str], Any]] = []
    missing: list[str] = []
    for n, pointer in enumerate(pointers):
        if pointer == "":
            raise StateValidationError(
                [ValidationIssue("", "must name a part, not the whole document")], field=f"{field}[{n}]"
            )
        steps = _steps(pointer, f"{field}[{n}]")
        at: Any = document
        for step in steps:
            if isinstance(at, dict) and step in at:
                at = at[step]
            elif isinstance(at, list) and step.isdigit() and str(int(step)) == step and int(step) < len(at):
                at = at[int(step)]
            else:
                missing.append(pointer)
                break
        else:
            found.append((steps, at))
    copy: dict[str, Any] = {}
    taken: list[list[str]] = []
    for steps, value in sorted(found, key=lambda f: len(f[0])):
        if any(steps[: len(t)] == t for t in taken):
            continue  # inside a value already copied whole
        taken.append(steps)
        target = copy
        for step in steps[:-1]:
            target = target.setdefault(step, {})  # always a dict of the copy's own
        target[steps[-1]] = value
    return copy, missing


@dataclass(frozen=True)
class ArrayPage:
    items: list[Any]
    length: int


def page_array(value: Any, offset: int, limit: int, field: str = "path") -> ArrayPage:
    """``limit`` items of an array from ``offset`` (past the end: none), with its length."""
    if offset < 0 or limit < 1:
        bad, rule = ("offset", "must be 0 or more") if offset < 0 else ("limit", "must be 1 or more")
        raise StateValidationError([ValidationIssue("", f"{rule}; got {offset if offset < 0 else limit}")], field=bad)
    if not isinstance(value, list):
        raise StateValidationError(
            [ValidationIssue("", f"offset/limit need an array; the value at path is {_kind(value)}")], field=field
        )
    items: list[Any] = value[offset : offset + limit]  # pyright: ignore[reportUnknownVariableType]
    return ArrayPage(items=items, length=len(value))  # pyright: ignore[reportUnknownArgumentType]


@dataclass(frozen=True)
class Part:
    """What a read of part of the data returns: the value (an array page, a sparse copy), and
    with paging the array's length and the page's offset, with fields those not found."""

    value: Any
    length: int | None = None
    offset: int | None = None
    missing: list[str] | None = None


def read_part(
    data: Any,
    *,
    path: str | None = None,
    fields: Sequence[str] | None = None,
    offset: int | None = None,
    limit: int | None = None,
) -> Part:
    """The part of ``data`` a ``get_state`` asks for: the value at ``path`` (a page of it with
    ``offset``/``limit``), or a sparse copy holding ``fields``."""
    if fields is not None and (path is not None or offset is not None or limit is not None):
        raise StateValidationError(
            [ValidationIssue("", "give fields or path (with offset/limit), not both")], field="fields"
        )
    if path is None and (offset is not None or limit is not None):
        raise StateValidationError([ValidationIssue("", "offset/limit page an array: give its path")], field="path")
    if fields is not None:
        copy, missing = project(data, fields)
        return Part(copy, missing=missing or None)
    value = resolve_pointer(data, path or "")
    if offset is None and limit is None:
        return Part(value)
    page = page_array(value, offset or 0, limit or DEFAULT_PAGE)
    return Part(page.items, length=page.length, offset=offset or 0)
