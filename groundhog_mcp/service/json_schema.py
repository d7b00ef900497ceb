"""JSON Schema validation of states and of schema definitions, on the work budget of
:mod:`~groundhog_mcp.service.schema_engine`.

Imported on first use through :mod:`~groundhog_mcp.service.validation` (jsonschema and its
referencing stack are a large part of an import that a server without schemas never needs).
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterator
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.exceptions import NoSuchResource, Unresolvable

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import JSONObject, dumps, json_type_phrase, pointer_token
from groundhog_mcp.service.schema_engine import (
    BoundedValidator,
    WorkBudgetExceeded,
    budget_for,
    pattern_problems,
    shown_pattern,
    spending,
)
from groundhog_mcp.service.validation import MAX_ISSUES

__all__ = ["check_schema_definition", "schema_issues"]


def schema_issues(schema: JSONObject, data: JSONObject) -> Iterator[ValidationIssue]:
    """Where ``data`` breaks ``schema``: at most 50 issues, each naming the pointer and the rule but
    never quoting the data. Runs on the work budget of :mod:`~groundhog_mcp.service.schema_engine`."""
    validator = _validator(dumps(schema))
    try:
        with spending(budget_for(data)):
            errors = sorted(itertools.islice(validator.iter_errors(data), MAX_ISSUES), key=_path_key)
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
        pointer = "".join(f"/{pointer_token(str(p))}" for p in error.absolute_path)
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
        pointer = "".join(f"/{pointer_token(str(p))}" for p in error.absolute_path)
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
