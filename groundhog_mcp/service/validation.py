"""Built-in limits and JSON Schema validation, run on every write and by ``validate_state``."""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState, JSONObject, check_name, dumps, is_semver, json_type_phrase
from groundhog_mcp.service.schema_engine import (
    BoundedValidator,
    WorkBudgetExceeded,
    budget_for,
    pattern_problems,
    shown_pattern,
    spending,
)

__all__ = [
    "Limits",
    "check_limit",
    "check_name",
    "check_retention_settings",
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
    max_lease_seconds: float = 3600.0


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
        issues.append(
            ValidationIssue(
                "", f"serialised size {size} bytes exceeds limit {limits.max_state_bytes} bytes", too_large=True
            )
        )
    if schema is not None:
        issues += [ValidationIssue("/data" + i.pointer, i.message) for i in schema_issues(schema, state.data)]
    return issues


def schema_issues(schema: JSONObject, data: JSONObject) -> Iterator[ValidationIssue]:
    """Where ``data`` breaks ``schema``: at most 50 issues, each naming the pointer and the rule but
    never quoting the data. Runs on the work budget of :mod:`~groundhog_mcp.service.schema_engine`."""
    validator = _validator(dumps(schema))
    try:
        with spending(budget_for(data)):
            errors = sorted(itertools.islice(validator.iter_errors(data), _MAX_ISSUES), key=_path_key)
    except Unresolvable as exc:
        # The reference is the schema's own text, never the data's.
        reference = str(exc)[:200]
        yield ValidationIssue(
            "", f"the context's JSON Schema has a $ref that cannot be resolved ({reference}); {_NO_REMOTE}"
        )
        return
    except WorkBudgetExceeded as exc:
        spent = f"{exc.cpu_seconds:g} s of CPU" if exc.cpu_seconds is not None else f"{exc.budget} steps"
        yield ValidationIssue(
            "",
            f"validating against the JSON Schema needs more than {spent} (the work budget: 16 steps per JSON "
            "value of the data, at least 200000, and 5 s of CPU); simplify the schema (nested anyOf/oneOf/$ref)",
        )
        return
    except RecursionError:
        yield ValidationIssue("", "the JSON Schema refers to itself too deeply to validate ($ref recursion)")
        return
    for error in errors:
        pointer = "".join(f"/{_escape(str(p))}" for p in error.absolute_path)
        yield ValidationIssue(pointer, f"{_rule_text(error)} (JSON Schema rule '{error.validator}')")


def _path_key(error: ValidationError) -> list[str]:
    return [str(p) for p in error.absolute_path]


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_RULE_TEXT = {
    "minimum": "must be at least {v}",
    "maximum": "must be at most {v}",
    "exclusiveMinimum": "must be greater than {v}",
    "exclusiveMaximum": "must be less than {v}",
    "multipleOf": "must be a multiple of {v}",
    "minLength": "must be at least {v} characters long",
    "maxLength": "must be at most {v} characters long",
    "minItems": "must have at least {v} items",
    "maxItems": "must have at most {v} items",
    "minProperties": "must have at least {v} properties",
    "maxProperties": "must have at most {v} properties",
    "minContains": "must contain at least {v} items valid under contains",
    "maxContains": "must contain at most {v} items valid under contains",
    "contains": "must contain an item valid under contains",
    "const": "must equal the schema's const",
    "anyOf": "must be valid under at least one schema of anyOf",
    "oneOf": "must be valid under exactly one schema of oneOf",
    "not": "must not be valid under the schema of not",
    "items": "has more items than the schema allows",
    "unevaluatedItems": "has items the schema does not allow (unevaluatedItems)",
    "format": "must be a valid {v}",
    "propertyNames": "has a property name the schema does not allow (propertyNames)",
}
# Rules whose message names only parts of the schema (or was written by the schema engine).
_SCHEMA_WORDED = {
    "required",
    "dependentRequired",
    "pattern",
    "patternProperties",
    "additionalProperties",
    "unevaluatedProperties",
    "uniqueItems",
    "enum",
    "false",
}


def _rule_text(error: ValidationError) -> str:
    """What the rule demands, in words that never quote the validated value (jsonschema's own
    messages begin with the value's repr, which for a large state is the whole state)."""
    rule = str(error.validator)
    if rule in _SCHEMA_WORDED:
        return error.message[:300]
    if rule == "type":
        return f"must be of type {_short(error.validator_value)} (got {json_type_phrase(error.instance)})"
    template = _RULE_TEXT.get(rule)
    if template is not None:
        return template.format(v=_short(error.validator_value))
    if rule in ("None", "false"):  # a `false` (sub)schema
        return "is not allowed here (the schema is false)"
    return f"fails the schema's {rule!r} rule"


_NO_REMOTE = "schemas may only $ref their own parts (#/$defs/...); remote references are never fetched"


def _refuse_remote(uri: str) -> Resource[Any]:
    # A schema from a client must not make the server fetch URLs (SSRF) or read files.
    raise NoSuchResource(ref=uri)


@functools.lru_cache(maxsize=256)
def _validator(schema_text: str) -> Any:
    return BoundedValidator(json.loads(schema_text), registry=Registry(retrieve=_refuse_remote))


def check_schema_definition(schema: JSONObject, field: str = "schema") -> None:
    """Reject a schema that is not valid JSON Schema draft 2020-12, or has a pattern RE2 cannot
    run (backreferences, lookaround): each issue names the pointer into the schema and the rule."""
    # The meta-schema without format checks: regexes are checked below, on RE2, not on Python's re.
    error = best_match(Draft202012Validator(Draft202012Validator.META_SCHEMA).iter_errors(schema))
    if error is not None:
        pointer = "".join(f"/{_escape(str(p))}" for p in error.absolute_path)
        raise StateValidationError(
            [ValidationIssue(pointer, f"not a valid JSON Schema (draft 2020-12): {_schema_error_text(error)}")],
            field=field,
        )
    problems = pattern_problems(schema)
    if problems:
        raise StateValidationError([ValidationIssue(p, m) for p, m in problems], field=field)


def _schema_error_text(exc: ValidationError) -> str:
    """The meta-schema's complaint, without quoting the (possibly huge) offending part."""
    rule = str(exc.validator)
    if rule == "type":
        return f"must be of type {_short(exc.validator_value)} (got {json_type_phrase(exc.instance)}) (rule 'type')"
    if rule == "format" and isinstance(exc.instance, str):
        return f"{shown_pattern(exc.instance)} is not a valid {exc.validator_value} (rule 'format')"
    template = _RULE_TEXT.get(rule)
    text = template.format(v=_short(exc.validator_value)) if template else f"fails the meta-schema's {rule!r} rule"
    if isinstance(exc.instance, str | int | float | bool):
        # The schema's own (short) text, not state data: quoted so the client sees what to fix.
        text = f"{_short(exc.instance, 60)} {text}"
    return f"{text} (rule {rule!r})"


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
