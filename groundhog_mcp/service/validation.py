"""Built-in limits and JSON Schema validation, run on every write and by ``validate_state``."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, check_name, dumps, is_semver

__all__ = [
    "Limits",
    "check_name",
    "check_schema_definition",
    "check_semver",
    "inspect_json",
    "inspect_state",
    "schema_issues",
]

_MAX_ISSUES = 50
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


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def inspect_json(value: Any, limits: Limits, *, depth_offset: int = 0) -> list[ValidationIssue]:
    """Structural checks every stored JSON value must pass: depth, finite numbers, UTF-8."""
    issues: list[ValidationIssue] = []
    stack: list[tuple[Any, str, int]] = [(value, "", 1 + depth_offset)]
    while stack and len(issues) < _MAX_ISSUES:
        node, pointer, depth = stack.pop()
        if isinstance(node, dict | list) and depth > limits.max_depth:
            issues.append(ValidationIssue(pointer, f"nesting depth {depth} exceeds limit {limits.max_depth}"))
            continue
        if isinstance(node, dict):
            for key, child in reversed(list(node.items())):  # type: ignore[union-attr]
                if not isinstance(key, str):
                    issues.append(ValidationIssue(pointer, f"object key {key!r} is not a string"))
                    continue
                child_pointer = f"{pointer}/{_escape(key)}"
                if _lone_surrogate(key):
                    issues.append(
                        ValidationIssue(child_pointer, "object key contains a lone surrogate (not valid UTF-8)")
                    )
                    continue
                stack.append((child, child_pointer, depth + 1))
        elif isinstance(node, list):
            for index in range(len(node) - 1, -1, -1):  # type: ignore[arg-type]
                stack.append((node[index], f"{pointer}/{index}", depth + 1))
        elif node is None or isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if not _INT_MIN <= node <= _INT_MAX:
                issues.append(
                    ValidationIssue(pointer, "integer out of range: JSON integers must fit in 64 bits (-2^63 … 2^64-1)")
                )
        elif isinstance(node, float):
            if not math.isfinite(node):
                issues.append(
                    ValidationIssue(pointer, f"{node!r} is not a JSON number (NaN and Infinity are rejected)")
                )
        elif isinstance(node, str):
            if _lone_surrogate(node):
                issues.append(ValidationIssue(pointer, "string contains a lone surrogate (not valid UTF-8)"))
        else:
            issues.append(ValidationIssue(pointer, f"a {type(node).__name__} is not a JSON value"))
    return issues


def inspect_state(
    state: ContextState, limits: Limits, schema: JSONObject | None, *, structure_known_valid: bool = False
) -> list[ValidationIssue]:
    """Every problem with a state: structure of data and metadata, total size, then the schema.

    Pointers are relative to the state document (``/data/...``, ``/metadata/...``).
    ``structure_known_valid`` skips the structural walk when the caller has already checked
    every value the state is made of (a replace or merge of checked input into a stored state).
    """
    issues: list[ValidationIssue] = []
    if not structure_known_valid:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in inspect_json(state.data, limits)]
        issues += [ValidationIssue("/metadata" + i.pointer, i.message) for i in inspect_json(state.metadata, limits)]
        if issues:
            return issues
    size = len(dumps(state.to_json()).encode("utf-8"))
    if size > limits.max_state_bytes:
        issues.append(ValidationIssue("", f"serialised size {size} bytes exceeds limit {limits.max_state_bytes} bytes"))
    if schema is not None:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(schema, state.data)]
    return issues


def schema_issues(schema: JSONObject, data: JSONObject) -> Iterator[ValidationIssue]:
    validator = _validator(dumps(schema))
    try:
        errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    except Unresolvable as exc:
        yield ValidationIssue("", f"the context's JSON Schema has a $ref that cannot be resolved ({exc}); {_NO_REMOTE}")
        return
    for count, error in enumerate(errors):
        if count >= _MAX_ISSUES:
            break
        pointer = "".join(f"/{_escape(str(p))}" for p in error.absolute_path)
        yield ValidationIssue(pointer, f"{error.message} (JSON Schema rule '{error.validator}')")


_NO_REMOTE = "schemas may only $ref their own parts (#/$defs/...); remote references are never fetched"


def _refuse_remote(uri: str) -> Resource[Any]:
    # A schema from a client must not make the server fetch URLs (SSRF) or read files.
    raise NoSuchResource(ref=uri)


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Draft202012Validator:
    import json

    return Draft202012Validator(json.loads(schema_text), registry=Registry(retrieve=_refuse_remote))


def check_schema_definition(schema: JSONObject) -> None:
    """Reject a schema that is not valid JSON Schema draft 2020-12."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        pointer = "".join(f"/{_escape(str(p))}" for p in exc.absolute_path)
        raise StateValidationError(
            [ValidationIssue(pointer, f"not a valid JSON Schema (draft 2020-12): {exc.message}")],
            field="schema",
        ) from None


def check_semver(version: str, field: str = "version") -> None:
    if not is_semver(version):
        raise StateValidationError(
            [ValidationIssue("", f"must be a semantic version like 1.0.0; got {version[:40]!r}")], field=field
        )


def raise_if_invalid(issues: list[ValidationIssue], field: str) -> None:
    if issues:
        raise StateValidationError(issues, field=field)
