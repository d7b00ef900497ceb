"""The RFC 6902 diff every write records: applying it always gives the target, exactly."""

from __future__ import annotations

from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundhog_mcp.models import json_diff

scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=3)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=3), children, max_size=5),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that also tells 1 from 1.0 from True, as JSON text does."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_applying_the_diff_gives_the_target(source: Any, target: Any) -> None:
    patch = json_diff({"v": source}, {"v": target})
    result = jsonpatch.apply_patch({"v": source}, patch)
    assert _same(result, {"v": target})
    if _same(source, target):
        assert patch == []


def test_small_changes_give_small_patches() -> None:
    before = {"tasks": ["a", "b", "c", "d"], "n": 1, "meta": {"x": 1}}
    after = {"tasks": ["a", "c", "d", "e"], "n": 1.0, "meta": {"x": 1, "y": 2}}
    assert json_diff(before, after) == [
        {"op": "replace", "path": "/tasks/1", "value": "c"},
        {"op": "replace", "path": "/tasks/2", "value": "d"},
        {"op": "replace", "path": "/tasks/3", "value": "e"},
        {"op": "replace", "path": "/n", "value": 1.0},
        {"op": "add", "path": "/meta/y", "value": 2},
    ]
    assert json_diff({"a/b": [1, 2, 3]}, {"a/b": [1, 3]}) == [{"op": "remove", "path": "/a~1b/1"}]
    assert json_diff({"l": [1]}, {"l": [1, 2, 3]}) == [
        {"op": "add", "path": "/l/1", "value": 2},
        {"op": "add", "path": "/l/2", "value": 3},
    ]
