"""Hypothesis strategies from a tool's ``inputSchema`` (the JSON Schema subset pydantic emits).

``hypothesis-jsonschema`` would be the obvious tool, but its latest release (0.23.1) calls a
Hypothesis internal (``many.more()``) that Hypothesis 6.170 removed, so every draw fails with
``AttributeError``. This module covers what ``tools/list`` carries today — ``type``,
``properties``/``required``/``additionalProperties``/``min``-``maxProperties``, ``items``,
``anyOf``/``oneOf``, ``enum``, ``const``, ``$ref`` into ``$defs``, string ``pattern``/length,
numeric bounds, array bounds — and raises :class:`UnsupportedSchema` on anything else, so a
new construct in a tool's schema is noticed instead of silently fuzzed less.

:func:`arguments_for` draws valid arguments and, one time in three, breaks them: a field of a
wrong type, a required field left out, or an unknown field added.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st

__all__ = ["UnsupportedSchema", "arguments_for", "json_values", "strategy_for"]

# Keywords that only document a schema.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"})
_SUPPORTED = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "oneOf",
    "enum",
    "const",
    "$ref",
    "$defs",
    "pattern",
    "minLength",
    "maxLength",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "format",
}

# A small, finite JSON world: the interesting hostile values have their own seed table.
_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    return st.recursive(
        _JSON_LEAVES,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=12), children, max_size=4)
        ),
        max_leaves=max_leaves,
    )


class UnsupportedSchema(Exception):
    """The schema uses a keyword this module does not generate for."""


def strategy_for(schema: dict[str, Any] | bool, root: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Values valid against ``schema`` (``root`` holds the ``$defs`` for ``$ref``)."""
    root = root if root is not None else (schema if isinstance(schema, dict) else {})
    if schema is True or schema == {}:
        return json_values()
    if schema is False:
        return st.nothing()
    assert isinstance(schema, dict)
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise UnsupportedSchema(f"keywords {sorted(unknown)} in {schema}")
    if "$ref" in schema:
        ref = schema["$ref"]
        if not ref.startswith("#/$defs/"):
            raise UnsupportedSchema(f"$ref {ref!r}")
        return strategy_for(root["$defs"][ref.removeprefix("#/$defs/")], root)
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return st.one_of([strategy_for(option, root) for option in schema[combinator]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([strategy_for({**schema, "type": k}, root) for k in kind])
    if kind == "object" or (kind is None and "properties" in schema):
        return _object(schema, root)
    if kind == "array":
        items = strategy_for(schema.get("items", True), root)
        return st.lists(items, min_size=schema.get("minItems", 0), max_size=min(schema.get("maxItems", 5), 5))
    if kind == "string":
        return _string(schema)
    if kind == "integer":
        low = schema.get("minimum", schema.get("exclusiveMinimum", -(2**40) - 1) + 1)
        high = schema.get("maximum", schema.get("exclusiveMaximum", 2**40 + 1) - 1)
        return st.integers(min_value=math.ceil(low), max_value=math.floor(high))
    if kind == "number":
        return st.floats(
            min_value=schema.get("minimum", schema.get("exclusiveMinimum")),
            max_value=schema.get("maximum", schema.get("exclusiveMaximum")),
            exclude_min="exclusiveMinimum" in schema,
            exclude_max="exclusiveMaximum" in schema,
            allow_nan=False,
            allow_infinity=False,
        )
    if kind == "boolean":
        return st.booleans()
    if kind == "null":
        return st.none()
    if kind is None:
        return json_values()
    raise UnsupportedSchema(f"type {kind!r}")


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    low, high = schema.get("minLength", 0), schema.get("maxLength")
    if "pattern" in schema:
        base = st.from_regex(schema["pattern"], fullmatch=True)
        return base.filter(lambda s: len(s) >= low and (high is None or len(s) <= high))
    return st.text(min_size=low, max_size=min(high if high is not None else 60, 60))


def _object(schema: dict[str, Any], root: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    fixed = st.fixed_dictionaries(
        {k: strategy_for(v, root) for k, v in properties.items() if k in required},
        optional={k: strategy_for(v, root) for k, v in properties.items() if k not in required},
    )
    extra = schema.get("additionalProperties", not properties)
    if extra is False or extra is None:
        return fixed
    values = json_values() if extra is True else strategy_for(extra, root)
    keys = st.text(max_size=12).filter(lambda k: k not in properties)
    low = max(0, schema.get("minProperties", 0) - len(required))
    high = max(low, min(3, schema.get("maxProperties", 3) - len(properties)))
    extras = st.dictionaries(keys, values, min_size=low, max_size=high)
    return st.tuples(fixed, extras).map(lambda pair: {**pair[1], **pair[0]})


@st.composite
def _broken(draw: st.DrawFn, valid: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    arguments = dict(valid)
    properties = list(schema.get("properties", {}))
    how = draw(st.sampled_from(["wrong type", "missing", "unknown field"]))
    if how == "wrong type" and properties:
        arguments[draw(st.sampled_from(properties))] = draw(json_values(max_leaves=3))
    elif how == "missing" and schema.get("required"):
        arguments.pop(draw(st.sampled_from(schema["required"])), None)
    else:
        arguments[draw(st.text(min_size=1, max_size=20).filter(lambda k: k not in properties))] = draw(
            json_values(max_leaves=3)
        )
    return arguments


def arguments_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Tool arguments: valid against ``schema`` two times in three, broken the third."""
    valid = strategy_for(schema)
    return st.one_of(valid, valid, valid.flatmap(lambda v: _broken(v, schema)))
