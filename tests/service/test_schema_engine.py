"""The work budget of schema validation (groundhog_mcp/service/schema_engine.py, validation.py).

Regexes from clients run on RE2 or are refused at registration; a schema that needs exponential
work stops at its step budget; issues and errors never quote the validated data. A validation
that would hang on Python's ``re`` runs in a child process killed after a bound, so a regression
fails instead of hanging (the bound measures nothing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import MAX_MESSAGE_CHARS, StateValidationError, ValidationIssue
from groundhog_mcp.models import ContextState
from groundhog_mcp.service.validation import check_schema_definition, schema_issues

HANG_BOUND_S = 60.0
EVIL = "^(a+)+$"
EVIL_TEXT = "a" * 40 + "!"  # 2^40 steps on a backtracking engine

_VALIDATE = (
    "import json, sys\n"
    "from groundhog_mcp.service.validation import schema_issues\n"
    "schema, data = json.load(sys.stdin)\n"
    "print(json.dumps([[i.pointer, i.message] for i in schema_issues(schema, data)]))\n"
)


def _issues(schema: Any, data: Any) -> list[ValidationIssue]:
    """``schema_issues`` in a child process killed after HANG_BOUND_S: a backtracking regex holds
    the GIL, so only a process boundary turns the hang into a failure (the bound measures nothing)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _VALIDATE],
            input=json.dumps([schema, data]),
            capture_output=True,
            text=True,
            timeout=HANG_BOUND_S,
            check=True,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("validation did not finish: it backtracks or has no budget")
    return [ValidationIssue(pointer, message) for pointer, message in json.loads(done.stdout)]


@pytest.mark.parametrize(
    ("schema", "data", "pointer", "rule"),
    [
        ({"properties": {"s": {"pattern": EVIL}}}, {"s": EVIL_TEXT}, "/s", "pattern"),
        ({"patternProperties": {EVIL: False}}, {EVIL_TEXT: 1, "a": 1}, "/a", "false"),
        ({"patternProperties": {EVIL: {}}, "additionalProperties": False}, {EVIL_TEXT: 1}, "/" + EVIL_TEXT, None),
        ({"patternProperties": {EVIL: {}}, "unevaluatedProperties": False}, {EVIL_TEXT: 1}, "/" + EVIL_TEXT, None),
        ({"propertyNames": {"pattern": EVIL}}, {EVIL_TEXT: 1}, "", "pattern"),
    ],
)
def test_client_patterns_run_in_linear_time(schema: dict[str, Any], data: Any, pointer: str, rule: str | None) -> None:
    issues = _issues(schema, data)
    assert issues, "the pattern never matches the data here"
    assert issues[0].pointer.startswith(pointer)
    if rule is not None:
        assert f"(JSON Schema rule '{rule}')" in issues[0].message


def test_matching_keys_still_match_on_re2() -> None:
    schema = {"patternProperties": {"^x-[0-9]+$": {"type": "integer"}}, "additionalProperties": False}
    assert list(schema_issues(schema, {"x-1": 1, "x-22": 2})) == []
    [issue] = schema_issues(schema, {"x-1": "one"})
    assert issue == ValidationIssue("/x-1", "must be of type 'integer' (got a string) (JSON Schema rule 'type')")


@pytest.mark.parametrize(
    ("schema", "pointer", "shown"),
    [
        ({"properties": {"x": {"type": "string", "pattern": r"(a)\1"}}}, "/properties/x/pattern", r'"(a)\\1"'),
        ({"patternProperties": {"^(?=x)": {}}}, "/patternProperties/^(?=x)", '"^(?=x)"'),
        ({"$defs": {"d": {"items": {"pattern": "(?<!a)b"}}}}, "/$defs/d/items/pattern", '"(?<!a)b"'),
    ],
)
def test_patterns_re2_cannot_run_are_refused_naming_the_pointer(
    schema: dict[str, Any], pointer: str, shown: str
) -> None:
    with pytest.raises(StateValidationError) as refused:
        check_schema_definition(schema)
    [issue] = refused.value.issues
    assert issue.pointer == pointer
    assert f"the pattern {shown} is not supported" in issue.message
    assert "no backreferences, no lookahead or lookbehind" in issue.message


def test_a_refused_pattern_is_quoted_only_in_part() -> None:
    pattern = "(a)\\1" + "b" * 5000
    with pytest.raises(StateValidationError) as refused:
        check_schema_definition({"pattern": pattern})
    assert len(str(refused.value)) < 400
    assert "b" * 100 not in str(refused.value)


async def test_every_schema_a_client_gives_is_checked_for_re2(manager: StateManager) -> None:
    backreference = {"properties": {"x": {"pattern": r"(a)\1"}}}
    with pytest.raises(StateValidationError, match=r"^schema\.properties\.x\.pattern: the pattern"):
        await manager.register("a", schema=backreference)
    fmt = {"version": "2.0.0", "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": []}]}
    with pytest.raises(StateValidationError, match=r"settings\.state_format\.schemas\.1\.0\.0.*not supported"):
        await manager.register("b", settings={"state_format": {**fmt, "schemas": {"1.0.0": backreference}}})
    handlers = {"inc": {"action": "increment", "path": "/n", "payload_schema": backreference}}
    with pytest.raises(StateValidationError, match=r"^event_handlers\.inc\.payload_schema\.properties\.x\.pattern"):
        await manager.register("c", handlers=handlers)
    with pytest.raises(StateValidationError, match=r"^schema\.properties\.x\.pattern: the pattern"):
        await manager.validate_state(ContextState(data={"x": "aa"}), schema=backreference)
    assert (await manager.list()).contexts == []


def test_exponential_schemas_stop_at_the_step_budget() -> None:
    # anyOf of two references to the next level, 30 levels deep: 2^30 paths for a non-matching value.
    defs = {f"d{i}": {"anyOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]} for i in range(30)}
    schema = {"$defs": {**defs, "d30": {"type": "string"}}, "$ref": "#/$defs/d0"}
    [issue] = _issues(schema, {"x": 1})
    assert issue.pointer == ""
    assert issue.message.startswith("validating against the JSON Schema needs more than 200000 steps")


def test_unique_items_is_linear_and_keeps_json_equality() -> None:
    many = [{"id": i, "tags": ["a", i]} for i in range(20_000)]
    assert _issues({"uniqueItems": True}, many) == []
    [issue] = schema_issues({"uniqueItems": True}, [*many, {"tags": ["a", 7.0], "id": 7}])
    assert issue.message == "has non-unique elements (items 7 and 20000 are equal) (JSON Schema rule 'uniqueItems')"
    assert list(schema_issues({"uniqueItems": True}, [True, 1, False, 0, None])) == []


def test_issues_name_pointer_and_rule_but_never_quote_the_data() -> None:
    secret = "s3cr3t-" * 40_000  # 280 KB
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer", "minimum": 0},
            "e": {"enum": ["x", "y"]},
            "c": {"const": "z"},
            "o": {"type": "array"},
            "k": {"maxLength": 3},
        },
        "required": ["missing"],
        "additionalProperties": False,
    }
    data = {"n": secret, "e": secret, "c": secret, "o": {"big": secret}, "k": secret, "k3y-" * 1000: secret}
    issues = list(schema_issues(schema, data))
    by_pointer = {issue.pointer: issue.message for issue in issues}
    assert by_pointer["/n"] == "must be of type 'integer' (got a string) (JSON Schema rule 'type')"
    assert by_pointer["/e"] == "is not one of the 2 values the schema's enum allows (JSON Schema rule 'enum')"
    assert by_pointer["/c"] == "must equal the schema's const (JSON Schema rule 'const')"
    assert by_pointer["/o"] == "must be of type 'array' (got an object) (JSON Schema rule 'type')"
    assert by_pointer["/k"] == "must be at most 3 characters long (JSON Schema rule 'maxLength')"
    assert by_pointer[""] == "'missing' is a required property (JSON Schema rule 'required')"
    long_key = [issue for issue in issues if issue.pointer.startswith("/k3y-")]
    assert len(long_key) == 1 and len(long_key[0].pointer) <= 200  # a pointer is cut short
    error = StateValidationError(issues)
    assert len(str(error)) <= MAX_MESSAGE_CHARS
    assert "s3cr3t" not in str(error) and "s3cr3t" not in repr(issues)
