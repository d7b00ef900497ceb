"""Argument errors in the house style: ``field: rule (limit)``, without pydantic's noise."""

from __future__ import annotations

import functools
from typing import Any

from pydantic import BaseModel, ValidationError

from groundhog_mcp.models import NAME_PATTERN, SEMVER_PATTERN

__all__ = ["describe_validation_error"]

_MAX_ERRORS = 10
_PATTERN_RULES = {
    SEMVER_PATTERN: "must be a semantic version like 1.0.0",
    NAME_PATTERN: f"must match {NAME_PATTERN} (1-128 of A-Z a-z 0-9 . _ -)",
}
# Union members, model names and validator wrappers that pydantic puts in ``loc`` but a caller never wrote.
_NOISE = frozenset({"int", "str", "float", "bool", "dict[str,any]", "list[any]", "none"})
_NOISE_PREFIXES = ("function-after[", "function-before[", "json-or-python[", "list[", "dict[")


@functools.cache
def _model_names() -> frozenset[str]:
    """Our input models' class names: pydantic puts them in ``loc`` for union members."""
    names: set[str] = set()
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for subclass in pending.pop().__subclasses__():
            pending.append(subclass)
            if subclass.__module__.startswith("groundhog_mcp."):
                names.add(subclass.__name__)
    return frozenset(names)


def _location(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        text = str(part)
        lowered = text.replace(" ", "").lower()
        noise = lowered in _NOISE or lowered.startswith(_NOISE_PREFIXES)
        if text in _model_names() or (isinstance(part, str) and noise):
            continue
        parts.append(text)
    return ".".join(parts) or "arguments"


def _describe_input(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return repr(shown)
    if isinstance(value, int | float):
        return repr(value) if len(repr(value)) <= 40 else "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def describe_validation_error(error: ValidationError) -> str:
    """One ``field: rule (got …)`` clause per problem, at most ten."""
    clauses: list[str] = []
    seen: set[str] = set()
    for item in error.errors(include_url=False):
        where = _location(item["loc"])
        kind = item["type"]
        context = item.get("ctx") or {}
        if kind == "missing":
            rule = "is required"
        elif kind == "extra_forbidden":
            rule = "is not an accepted field"
        elif kind == "string_pattern_mismatch":
            rule = _PATTERN_RULES.get(str(context.get("pattern")), item["msg"])
        else:
            rule = item["msg"][:1].lower() + item["msg"][1:]
        clause = f"{where}: {rule}"
        if kind not in ("missing", "extra_forbidden"):
            clause += f" (got {_describe_input(item.get('input'))})"
        if clause not in seen:
            seen.add(clause)
            clauses.append(clause)
    shown = clauses[:_MAX_ERRORS]
    more = f"; and {len(clauses) - _MAX_ERRORS} more" if len(clauses) > _MAX_ERRORS else ""
    return "invalid arguments: " + "; ".join(shown) + more
