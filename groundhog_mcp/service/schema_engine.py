"""JSON Schema validation on a work budget: linear-time regexes and a bounded number of steps.

Schemas come from clients, so validating a state against one must never take time a client can
choose. Three things make ``jsonschema``'s own Draft 2020-12 validator unsafe for that:

* ``pattern``, ``patternProperties`` (and ``additionalProperties`` / ``unevaluatedProperties``,
  which consult the same patterns) run on Python's backtracking ``re``: ``^(a+)+$`` against 30
  ``a``\\ s and a ``!`` takes minutes. Here every regex runs on RE2 (``google-re2``), whose time is
  linear in the input; a pattern RE2 cannot compile (backreferences, lookaround) is refused when
  the schema is registered (:func:`pattern_problems`).
* ``uniqueItems`` on unsortable items and ``unevaluatedProperties`` are quadratic in the size of
  the data; here they hash and use sets.
* Nested ``anyOf`` / ``oneOf`` / ``$ref`` can make the work exponential in the schema's size. Every
  keyword evaluation spends one step (``enum`` one per listed value) from a budget proportional to
  the size of the validated value; a schema that needs more raises :class:`WorkBudgetExceeded`.

The messages of the errors produced here never quote the validated value (see
:func:`groundhog_mcp.service.validation.schema_issues`).
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema._utils import equal  # pyright: ignore[reportPrivateUsage]
from jsonschema.exceptions import ValidationError

from groundhog_mcp.models import pointer_token

__all__ = [
    "BoundedValidator",
    "PatternProblem",
    "WorkBudgetExceeded",
    "budget_for",
    "compile_pattern",
    "pattern_problems",
    "spending",
]

# RE2 logs a parse error through absl to stderr; the error is ours to report, not a log line.
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False
_OPTIONS.max_mem = 8 << 20  # program and DFA memory per pattern: a bound on compile and match

_STEPS_PER_NODE = 16
_MIN_STEPS = 200_000
# A $ref costs a lookup and a new validator: tens of times a plain keyword.
_REFERENCE_STEPS = 8
# Steps are a deterministic bound; CPU time is the backstop for what they weigh too lightly.
_MAX_CPU_SECONDS = 5.0
_CLOCK_EVERY = 1024
MAX_PATTERN_SHOWN = 100


class WorkBudgetExceeded(Exception):
    """Validation needed more steps than its budget allows."""

    def __init__(self, budget: int, *, cpu_seconds: float | None = None) -> None:
        self.budget = budget
        self.cpu_seconds = cpu_seconds
        super().__init__(f"validation needs more than {budget} steps or {_MAX_CPU_SECONDS} s of CPU")


class _Budget(threading.local):
    remaining: int | None = None
    total: int = 0
    clock_at: int = 0
    cpu_deadline: float = 0.0


_budget = _Budget()


def budget_for(value: Any) -> int:
    """The steps validating ``value`` may take: proportional to its number of JSON nodes."""
    nodes = 0
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        nodes += 1
        if isinstance(node, dict):
            stack.extend(cast(dict[str, Any], node).values())
        elif isinstance(node, list):
            stack.extend(cast(list[Any], node))
    return max(_MIN_STEPS, _STEPS_PER_NODE * nodes)


class spending:
    """``with spending(steps):`` validation in this thread may take at most ``steps`` steps."""

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._outer: tuple[int | None, int, int, float] = (None, 0, 0, 0.0)

    def __enter__(self) -> None:
        self._outer = (_budget.remaining, _budget.total, _budget.clock_at, _budget.cpu_deadline)
        _budget.remaining, _budget.total = self.steps, self.steps
        _budget.clock_at = self.steps - _CLOCK_EVERY
        _budget.cpu_deadline = time.thread_time() + _MAX_CPU_SECONDS

    def __exit__(self, *_: object) -> None:
        _budget.remaining, _budget.total, _budget.clock_at, _budget.cpu_deadline = self._outer


def _spend(steps: int) -> None:
    remaining = _budget.remaining
    if remaining is None:
        return  # outside `spending` (the packaged schemas): no budget needed
    remaining -= steps
    _budget.remaining = remaining
    if remaining < 0:
        raise WorkBudgetExceeded(_budget.total)
    if remaining <= _budget.clock_at:
        _budget.clock_at = remaining - _CLOCK_EVERY
        if time.thread_time() > _budget.cpu_deadline:
            raise WorkBudgetExceeded(_budget.total, cpu_seconds=_MAX_CPU_SECONDS)


# -- regular expressions on RE2 ------------------------------------------------------------------


class PatternProblem(ValueError):
    """A pattern RE2 cannot compile; ``reason`` is RE2's (e.g. ``invalid escape sequence: \\1``)."""

    def __init__(self, pattern: str, reason: str) -> None:
        self.pattern = pattern
        self.reason = reason
        super().__init__(reason)


@functools.lru_cache(maxsize=1024)
def compile_pattern(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (cached); raises :class:`PatternProblem`."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "not a valid pattern"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "backslashreplace")
        raise PatternProblem(pattern, str(reason)[:200]) from None
    except (TypeError, UnicodeEncodeError) as exc:
        raise PatternProblem(pattern, f"not a valid pattern ({type(exc).__name__})") from None


def _search(pattern: str, text: str) -> bool:
    _spend(1 + len(text) // 4096)
    return compile_pattern(pattern).search(text) is not None


def shown_pattern(pattern: str) -> str:
    """A pattern as quoted in a message: at most ``MAX_PATTERN_SHOWN`` characters."""
    text = json.dumps(pattern, ensure_ascii=False)
    return text if len(text) <= MAX_PATTERN_SHOWN else text[: MAX_PATTERN_SHOWN - 4] + '..."'


def _unusable(pattern: str, problem: PatternProblem) -> ValidationError:
    # Only a schema stored before patterns were checked at registration can get here.
    return ValidationError(f"the schema's pattern {shown_pattern(pattern)} cannot be used: {problem.reason}")


def _pattern(validator: Any, patrn: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "string"):
        return
    try:
        if not _search(patrn, instance):
            yield ValidationError(f"does not match the pattern {shown_pattern(patrn)}")
    except PatternProblem as problem:
        yield _unusable(patrn, problem)


def _matching(patterns: Iterable[str], key: str) -> Iterator[str]:
    for pattern in patterns:
        if _search(pattern, key):
            yield pattern


def _pattern_properties(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    try:
        for pattern, subschema in value.items():
            for key, child in instance.items():
                if _search(pattern, key):
                    yield from _descend(validator, child, subschema, key, pattern)
    except PatternProblem as problem:
        yield _unusable(problem.pattern, problem)


def _descend(validator: Any, child: Any, subschema: Any, key: str, schema_path: str | None) -> Iterator[Any]:
    # jsonschema's descend gives a `false` subschema's error no path: this one names the key.
    if subschema is False:
        yield ValidationError("is not allowed here (the schema is false)", validator="false", path=deque([key]))
        return
    yield from validator.descend(child, subschema, path=key, schema_path=schema_path)


def _additional(instance: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    properties = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [key for key in instance if key not in properties and not any(True for _ in _matching(patterns, key))]


def _not_allowed(keys: list[str], rule: str) -> Iterator[ValidationError]:
    # One error per key, at the key's own pointer: the key is named by where it is, not quoted.
    for key in keys:
        yield ValidationError(f"is not allowed by the schema ({rule})", path=deque([key]))


def _additional_properties(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    try:
        extras = _additional(instance, schema)
    except PatternProblem as problem:
        yield _unusable(problem.pattern, problem)
        return
    if validator.is_type(value, "object"):
        for extra in extras:
            yield from _descend(validator, instance[extra], value, extra, None)
    elif not value and extras:
        yield from _not_allowed(extras, "additionalProperties is false")


def _evaluated_keys(validator: Any, instance: dict[str, Any], schema: Any) -> set[str]:
    """The keys of ``instance`` some keyword of ``schema`` evaluated (for unevaluatedProperties);
    ``jsonschema._utils.find_evaluated_property_keys_by_schema`` with RE2 and a set."""
    if validator.is_type(schema, "boolean"):
        return set()
    found: set[str] = set()
    for keyword in ("$ref", "$dynamicRef"):
        reference = schema.get(keyword)
        if reference is not None:
            resolved = validator._resolver.lookup(reference)
            found |= _evaluated_keys(
                validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                instance,
                resolved.contents,
            )
    properties = schema.get("properties")
    if validator.is_type(properties, "object"):
        found |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        subschema = schema.get(keyword)
        if subschema is not None:
            found |= {key for key, child in instance.items() if _valid(validator.descend(child, subschema))}
    if "patternProperties" in schema:
        patterns = list(schema["patternProperties"])
        found |= {key for key in instance if any(True for _ in _matching(patterns, key))}
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            found |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            if _valid(validator.descend(instance, subschema)):
                found |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            found |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                found |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            found |= _evaluated_keys(validator, instance, schema["else"])
    return found


def _valid(errors: Iterator[ValidationError]) -> bool:
    return next(errors, None) is None


def _unevaluated_properties(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not validator.is_type(instance, "object"):
        return
    try:
        evaluated = _evaluated_keys(validator, instance, schema)
    except PatternProblem as problem:
        yield _unusable(problem.pattern, problem)
        return
    failing = [
        key
        for key in instance
        if key not in evaluated and not _valid(validator.descend(instance[key], value, path=key, schema_path=key))
    ]
    rule = "unevaluatedProperties is false" if value is False else "unevaluatedProperties"
    yield from _not_allowed(failing, rule)


# -- linear uniqueItems and weighted enum ---------------------------------------------------------


def _canonical(value: Any) -> str:
    """A text equal for values JSON Schema calls equal (1 == 1.0, key order ignored, true != 1)."""

    def normal(node: Any) -> Any:
        if isinstance(node, bool) or node is None or isinstance(node, str):
            return node
        if isinstance(node, float) and node.is_integer():
            return int(node)
        if isinstance(node, dict):
            return {k: normal(v) for k, v in cast(dict[str, Any], node).items()}
        if isinstance(node, list):
            return [normal(v) for v in cast(list[Any], node)]
        return node

    return json.dumps(normal(value), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _unique_items(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if not value or not validator.is_type(instance, "array"):
        return
    _spend(len(instance))
    seen: dict[str, int] = {}
    for index, item in enumerate(instance):
        key = _canonical(item)
        if key in seen:
            yield ValidationError(f"has non-unique elements (items {seen[key]} and {index} are equal)")
            return
        seen[key] = index


def _enum(validator: Any, enums: Any, instance: Any, schema: Any) -> Iterator[ValidationError]:
    _spend(len(enums) if isinstance(enums, list) else 1)
    if all(not equal(each, instance) for each in enums):
        yield ValidationError(f"is not one of the {len(enums)} values the schema's enum allows")


_Keyword = Callable[[Any, Any, Any, Any], Any]


def _counted(keyword: _Keyword, steps: int = 1) -> _Keyword:
    def spend_then(validator: Any, value: Any, instance: Any, schema: Any) -> Any:
        _spend(steps)
        return keyword(validator, value, instance, schema)

    return spend_then


_OVERRIDES: dict[str, _Keyword] = {
    "pattern": _pattern,
    "patternProperties": _pattern_properties,
    "additionalProperties": _additional_properties,
    "unevaluatedProperties": _unevaluated_properties,
    "uniqueItems": _unique_items,
    "enum": _enum,
}

BoundedValidator: Any = validators.extend(
    Draft202012Validator,
    {
        name: _counted(
            _OVERRIDES.get(name, cast(_Keyword, keyword)),
            _REFERENCE_STEPS if name in ("$ref", "$dynamicRef") else 1,
        )
        for name, keyword in Draft202012Validator.VALIDATORS.items()
    },
)
"""Draft 2020-12 with RE2 regexes and the step budget (every keyword spends)."""


# -- registration: every pattern in a schema must compile on RE2 ----------------------------------


def _pointer(path: Iterable[Any]) -> str:
    return "".join(f"/{pointer_token(str(p))}" for p in path)


@functools.cache
def _regex_checker() -> Any:
    from jsonschema import FormatChecker

    checker = FormatChecker(formats=())

    @checker.checks("regex", raises=PatternProblem)
    def _is_re2(instance: object) -> bool:  # pyright: ignore[reportUnusedFunction]
        if isinstance(instance, str):
            compile_pattern(instance)
        return True

    return checker


def pattern_problems(schema: Any) -> list[tuple[str, str]]:
    """``(pointer, message)`` for each pattern of ``schema`` RE2 cannot compile, found where the
    draft 2020-12 meta-schema says a regex is (``pattern``, the keys of ``patternProperties``).
    Call it on a schema that already passed ``check_schema``."""
    meta = Draft202012Validator(Draft202012Validator.META_SCHEMA, format_checker=_regex_checker())
    found: list[tuple[str, str]] = []
    for error in meta.iter_errors(schema):
        for leaf in _leaves(error):
            if leaf.validator != "format" or leaf.validator_value != "regex":
                continue
            pattern = str(cast(Any, leaf.instance))
            path: list[Any] = list(leaf.absolute_path)
            if path and path[-1] == "patternProperties":
                path.append(pattern)  # the key itself is the pattern
            cause = leaf.cause
            reason = cause.reason if isinstance(cause, PatternProblem) else "not a valid pattern"
            found.append(
                (
                    _pointer(path),
                    f"the pattern {shown_pattern(pattern)} is not supported: {reason} (patterns run on "
                    "RE2, linear-time: no backreferences, no lookahead or lookbehind)",
                )
            )
    return found


def _leaves(error: ValidationError) -> Iterator[ValidationError]:
    if not error.context:
        yield error
        return
    for child in error.context:
        yield from _leaves(child)
