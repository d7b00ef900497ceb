"""Built-in limits and JSON Schema validation, run on every write and by ``validate_state``."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeAlias

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, check_name, dumps, is_semver, pointer_token

__all__ = [
    "Limits",
    "check_json_inputs",
    "check_limit",
    "check_name",
    "check_retention_settings",
    "check_schema_definition",
    "check_semver",
    "inspect_json",
    "inspect_state",
    "inspect_state_text",
    "schema_issues",
    "small_json",
]

MAX_ISSUES = 50
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


@dataclass(frozen=True)
class Limits:
    """Configurable bounds; every rejection names the limit it hit."""

    max_state_bytes: int = 1024 * 1024
    max_depth: int = 64
    max_page: int = 100
    max_history_page: int = 100
    max_event_payload_bytes: int = 256 * 1024
    max_read_bytes: int = 256 * 1024
    max_lease_seconds: float = 3600.0
    max_lease_waiters: int = 32
    max_lease_waiters_per_namespace: int = 256


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def inspect_json(value: Any, limits: Limits, *, depth_offset: int = 0) -> list[ValidationIssue]:
    """Structural checks every stored JSON value must pass: depth, finite numbers, UTF-8."""
    return _walk(value, limits, depth_offset, _UNBOUNDED)[0]


def check_json_inputs(inputs: Iterable[tuple[str, Any]], limits: Limits, *, budget: int | None = None) -> bool:
    """:func:`inspect_json` on each ``(field, value)`` (``None`` values skipped): raises
    :class:`~groundhog_mcp.errors.StateValidationError` naming the first field with issues.

    With a ``budget`` the same walk also counts the values' cost as :func:`small_json` does and
    stops once they are over it, returning ``False``: nothing is concluded, check them again
    without a budget (off the event loop). ``True``: within budget, and every value checked."""
    left = _UNBOUNDED if budget is None else budget
    for field, value in inputs:
        if value is not None:
            issues, left = _walk(value, limits, 0, left)
            if left < 0:
                return False
            raise_if_invalid(issues, field)
    return True


_UNBOUNDED = sys.maxsize


# Where a node is: None for the walked value itself, else (its parent's place, its key or index).
_Place: TypeAlias = "tuple[_Place, str | int] | None"


def _walk(value: Any, limits: Limits, depth_offset: int, budget: int) -> tuple[list[ValidationIssue], int]:
    """:func:`inspect_json`'s walk, charging ``budget`` as :func:`small_json` does; a negative
    budget left means the walk stopped there (the issues are then incomplete).

    A node's place is kept as ``(parent's place, key or index)`` and spelled as a JSON Pointer
    only for an issue: most values have none, and the pointers cost more than the checks."""
    issues: list[ValidationIssue] = []
    max_depth = limits.max_depth
    stack: list[tuple[Any, _Place, int]] = [(value, None, 1 + depth_offset)]
    while stack and len(issues) < MAX_ISSUES:
        node, place, depth = stack.pop()
        budget -= 1
        if isinstance(node, dict):
            if depth > max_depth:
                issues.append(ValidationIssue(_pointer(place), f"nesting depth {depth} exceeds limit {max_depth}"))
                continue
            if len(node) > budget:  # pyright: ignore[reportUnknownArgumentType]
                return issues, -1  # over budget by its length alone: not walked
            for key, child in reversed(list(node.items())):  # type: ignore[union-attr]
                if not isinstance(key, str):
                    budget -= 1
                    issues.append(ValidationIssue(_pointer(place), f"object key {key!r} is not a string"))
                    continue
                budget -= 1 + (len(key) >> 6)
                if not key.isascii() and _lone_surrogate(key):
                    problem = "object key contains a lone surrogate (not valid UTF-8)"
                    issues.append(ValidationIssue(_pointer((place, key)), problem))
                    continue
                stack.append((child, (place, key), depth + 1))
        elif isinstance(node, list):
            if depth > max_depth:
                issues.append(ValidationIssue(_pointer(place), f"nesting depth {depth} exceeds limit {max_depth}"))
                continue
            if len(node) > budget:  # pyright: ignore[reportUnknownArgumentType]
                return issues, -1
            for index in range(len(node) - 1, -1, -1):  # type: ignore[arg-type]
                stack.append((node[index], (place, index), depth + 1))
        elif node is None or isinstance(node, bool):
            pass
        elif isinstance(node, str):
            budget -= len(node) >> 6
            if not node.isascii() and _lone_surrogate(node):
                issues.append(ValidationIssue(_pointer(place), "string contains a lone surrogate (not valid UTF-8)"))
        elif isinstance(node, int):
            if not _INT_MIN <= node <= _INT_MAX:
                issues.append(
                    ValidationIssue(
                        _pointer(place), "integer out of range: JSON integers must fit in 64 bits (-2^63 … 2^64-1)"
                    )
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                issues.append(
                    ValidationIssue(_pointer(place), f"{node!r} is not a JSON number (NaN and Infinity are rejected)")
                )
        else:
            issues.append(ValidationIssue(_pointer(place), f"a {type(node).__name__} is not a JSON value"))
        if budget < 0:
            return issues, budget
    return issues, budget


def _pointer(place: _Place) -> str:
    """The JSON Pointer of a :data:`_Place` (``""`` for the value itself)."""
    tokens: list[str] = []
    while place is not None:
        place, token = place
        tokens.append(pointer_token(token) if isinstance(token, str) else str(token))
    return "".join(f"/{token}" for token in reversed(tokens))


def inspect_state(
    state: ContextState, limits: Limits, schema: JSONObject | None, *, structure_known_valid: bool = False
) -> list[ValidationIssue]:
    """Every problem with a state: structure of data and metadata, total size, then the schema.

    Pointers are relative to the state document (``/data/...``, ``/metadata/...``).
    ``structure_known_valid`` skips the structural walk when the caller has already checked
    every value the state is made of (a replace or merge of checked input into a stored state).
    """
    return inspect_state_text(state, limits, schema, structure_known_valid=structure_known_valid)[0]


def inspect_state_text(
    state: ContextState, limits: Limits, schema: JSONObject | None, *, structure_known_valid: bool = False
) -> tuple[list[ValidationIssue], str | None]:
    """:func:`inspect_state`, and the state serialised for its size (``dumps(state.to_json())``):
    a write stores that text instead of serialising the state a second time. ``None`` when the
    structural walk found problems (such a state is not serialised: it may not be serialisable)."""
    issues: list[ValidationIssue] = []
    if not structure_known_valid:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in inspect_json(state.data, limits)]
        issues += [ValidationIssue("/metadata" + i.pointer, i.message) for i in inspect_json(state.metadata, limits)]
        if issues:
            return issues, None
    text = dumps(state.to_json())
    size = len(text.encode("utf-8"))
    if size > limits.max_state_bytes:
        issues.append(
            ValidationIssue(
                "", f"serialised size {size} bytes exceeds limit {limits.max_state_bytes} bytes", too_large=True
            )
        )
    if schema is not None:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(schema, state.data)]
    return issues, text


def schema_issues(schema: JSONObject, data: JSONObject) -> Iterator[ValidationIssue]:
    """Where ``data`` breaks ``schema``: at most 50 issues, each naming the pointer and the rule but
    never quoting the data (:func:`groundhog_mcp.service.json_schema.schema_issues`)."""
    from groundhog_mcp.service import json_schema  # jsonschema loads with the first schema, not at start-up

    return json_schema.schema_issues(schema, data)


def check_schema_definition(schema: JSONObject, field: str = "schema") -> None:
    """Reject a schema that is not valid JSON Schema draft 2020-12 or has a pattern RE2 cannot run
    (:func:`groundhog_mcp.service.json_schema.check_schema_definition`)."""
    from groundhog_mcp.service import json_schema  # as above

    json_schema.check_schema_definition(schema, field)


def check_semver(version: str, field: str = "version") -> None:
    if not is_semver(version):
        raise StateValidationError(
            [ValidationIssue("", f"must be a semantic version like 1.0.0; got {version[:40]!r}")], field=field
        )


def raise_if_invalid(issues: list[ValidationIssue], field: str) -> None:
    if issues:
        raise StateValidationError(issues, field=field)


def check_retention_settings(settings: JSONObject) -> None:
    keep_revisions = settings.get("keep_revisions")
    if keep_revisions is not None and (
        isinstance(keep_revisions, bool) or not isinstance(keep_revisions, int) or keep_revisions < 0
    ):
        raise StateValidationError(
            [ValidationIssue("", "must be an integer >= 0 (0 keeps every revision)")], field="settings.keep_revisions"
        )
    keep_days = settings.get("keep_days")
    if keep_days is not None and (
        isinstance(keep_days, bool) or not isinstance(keep_days, int | float) or keep_days <= 0
    ):
        raise StateValidationError([ValidationIssue("", "must be a number of days > 0")], field="settings.keep_days")


def check_limit(limit: int, maximum: int) -> None:
    """A page size (argument ``limit``) must be between 1 and ``maximum``."""
    if not 1 <= limit <= maximum:
        raise StateValidationError(
            [ValidationIssue("", f"must be between 1 and {maximum}; got {limit}")], field="limit"
        )


SMALL_INPUT_COST = 512
"""Up to this many JSON values (a string counts one per 64 characters) an argument is checked on
the event loop and its write may be applied inside the write transaction: a thread hop would
cost more than the work."""


def small_json(*values: Any, budget: int = SMALL_INPUT_COST) -> bool:
    """Whether ``values`` together are within ``budget`` (see :data:`SMALL_INPUT_COST`); stops as
    soon as they are not, so a large value costs no more than the budget to look at."""
    stack: list[Any] = [v for v in values if v is not None]
    while stack:
        node = stack.pop()
        budget -= 1
        if isinstance(node, dict | list) and len(node) > budget:  # pyright: ignore[reportUnknownArgumentType]
            return False
        if isinstance(node, dict):
            for key, child in node.items():  # pyright: ignore[reportUnknownVariableType, reportUnknownMemberType]
                budget -= 1 + (len(key) // 64 if isinstance(key, str) else 0)
                stack.append(child)
        elif isinstance(node, list):
            stack.extend(node)  # pyright: ignore[reportUnknownArgumentType]
        elif isinstance(node, str):
            budget -= len(node) // 64
        if budget < 0:
            return False
    return True
