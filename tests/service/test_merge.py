"""Merge strategies: RFC 7396 / RFC 6902 suites, properties (hypothesis), errors, StateManager.merge."""

from __future__ import annotations

import copy
import functools
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from groundhog_mcp import (
    ConflictError,
    ContextError,
    ContextState,
    NotFoundError,
    StateManager,
    StateUpdateError,
    StateValidationError,
)
from groundhog_mcp.errors import MergeConflictError
from groundhog_mcp.service import WriteResult
from groundhog_mcp.service.merge import MergeResult, compute_merge, parse_source, semver_key
from groundhog_mcp.service.patching import apply_json_patch, merge_patch

DATA = Path(__file__).resolve().parent.parent / "data"
PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _cases(name: str) -> list[Any]:
    return [
        pytest.param(case, id=f"{i}-{case.get('comment', '')[:50]}")
        for i, case in enumerate(json.loads((DATA / name).read_text(encoding="utf-8"))["tests"])
    ]


def s(data: dict[str, Any], metadata: dict[str, Any] | None = None, version: str = "1.0.0") -> ContextState:
    return ContextState(data=data, metadata=metadata or {}, version=version)


def three_way(base: dict[str, Any], *sides: dict[str, Any], **kwargs: Any) -> MergeResult:
    return compute_merge([s(d) for d in sides], strategy="three_way", base=s(base), **kwargs)


# -- RFC 7396 Appendix A ---------------------------------------------------------------------


@pytest.mark.parametrize("case", _cases("rfc7396_appendix_a.json"))
def test_rfc7396_appendix_a(case: dict[str, Any]) -> None:
    original, patch, result = case["original"], case["patch"], case["result"]
    assert merge_patch(copy.deepcopy(original), patch) == result
    if isinstance(original, dict) and isinstance(patch, dict):
        # ordered = the first input as it is, each later one applied as a merge patch
        merged = compute_merge([s(original), s(patch)])
        assert merged.state.data == result
        assert compute_merge([s({}, original), s({}, patch)]).state.metadata == result


# -- the json-patch test suite (RFC 6902) ----------------------------------------------------


def _rooted(patch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The same operations on a document moved under /doc (our data is always an object)."""
    moved = []
    for op in patch:
        op = dict(op)
        for key in ("path", "from"):
            if isinstance(op.get(key), str):
                op[key] = "/doc" + op[key]
        moved.append(op)
    return moved


@pytest.mark.parametrize("case", _cases("json_patch_tests.json") + _cases("json_patch_spec_tests.json"))
def test_json_patch_suite(case: dict[str, Any]) -> None:
    doc, patch = case["doc"], case["patch"]
    before = copy.deepcopy(doc)
    direct = isinstance(doc, dict) and isinstance(case.get("expected", {}), dict)

    def apply() -> Any:
        if direct:
            return apply_json_patch(doc, patch)
        return apply_json_patch({"doc": doc}, _rooted(patch))["doc"]

    if "error" in case:
        with pytest.raises(ContextError):
            apply()
    else:
        expected = case.get("expected", doc)
        assert apply() == expected
        if direct:
            # A change made on one side only is what a three-way merge takes, from either side.
            assert three_way(doc, doc, expected).state.data == expected
            assert three_way(doc, expected, doc).state.data == expected
            assert three_way(doc, expected, expected).conflicts == []
    assert doc == before  # atomic: the input is never modified


# -- properties ------------------------------------------------------------------------------

keys = st.sampled_from(["a", "b", "c", "d", "e", "x/y", "t~1"])
scalars = st.none() | st.booleans() | st.integers(-5, 5) | st.sampled_from(["", "s", "t"])
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=4), max_leaves=8
)
objects = st.dictionaries(keys, json_values, max_size=5)


@PROPERTY
@given(st.lists(st.tuples(objects, objects), min_size=2, max_size=4))
def test_ordered_is_a_fold_of_merge_patches(docs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    states = [s(data, metadata) for data, metadata in docs]
    merged = compute_merge(states).state
    assert merged.data == functools.reduce(merge_patch, [d for d, _ in docs[1:]], docs[0][0])
    assert merged.metadata == functools.reduce(merge_patch, [m for _, m in docs[1:]], docs[0][1])


@st.composite
def disjoint_edits(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A base and two sides that each change (set, replace, delete) their own top-level keys."""
    base = draw(objects)
    mine = draw(st.sets(keys))
    theirs = draw(st.sets(keys.filter(lambda k: k not in mine)))

    def edit(owned: set[str]) -> dict[str, Any]:
        side = copy.deepcopy(base)
        for key in owned:
            if draw(st.booleans()) and key in side:
                del side[key]
            else:
                side[key] = draw(json_values)
        return side

    return base, edit(mine), edit(theirs)


@PROPERTY
@given(disjoint_edits())
def test_three_way_without_concurrent_edits_applies_both_diffs(
    case: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    base, ours, theirs = case
    expected = jsonpatch.apply_patch(
        jsonpatch.apply_patch(base, jsonpatch.make_patch(base, ours)), jsonpatch.make_patch(base, theirs)
    )
    result = three_way(base, ours, theirs)
    assert result.conflicts == []
    assert result.state.data == expected


@PROPERTY
@given(objects, objects, objects, objects)
def test_three_way_of_identical_sides_is_that_side(
    base: dict[str, Any], base_meta: dict[str, Any], a: dict[str, Any], a_meta: dict[str, Any]
) -> None:
    result = compute_merge([s(a, a_meta), s(a, a_meta)], strategy="three_way", base=s(base, base_meta))
    assert (result.state.data, result.state.metadata) == (a, a_meta)
    assert result.conflicts == []


@PROPERTY
@given(objects, objects, objects)
def test_swapping_ours_and_theirs_swaps_the_conflict_sides(
    base: dict[str, Any], a: dict[str, Any], b: dict[str, Any]
) -> None:
    forward = three_way(base, a, b, on_conflict="ours")
    backward = three_way(base, b, a, on_conflict="theirs")

    def sides(result: MergeResult, swap: bool) -> dict[str, tuple[Any, ...]]:
        return {
            c.path: (
                c.kind,
                json.dumps(c.base),
                json.dumps(c.theirs if swap else c.ours),
                json.dumps(c.ours if swap else c.theirs),
                tuple(sorted({"ours": "theirs", "theirs": "ours"}.get(x, x) if swap else x for x in c.absent)),
            )
            for c in result.conflicts
        }

    assert sides(forward, swap=False) == sides(backward, swap=True)
    # ours on (a, b) and theirs on (b, a) both keep a's side of every conflict
    assert forward.state.data == backward.state.data


REDUCERS = {
    "/data/total": "sum",
    "/data/log": "append",
    "/data/tags": "union",
    "/data/high": "max",
    "/data/low": "min",
    "/data/name": "last",
    "/data/nested/count": "sum",
    "/metadata/seen": "union",
}
reducible = st.fixed_dictionaries(
    {},
    optional={
        "total": st.integers(-1000, 1000),
        "log": st.lists(st.integers(0, 5), max_size=3),
        "tags": st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=4),
        "high": st.integers(-50, 50),
        "low": st.sampled_from(["2026-01-01", "2026-02-01", "2025-12-31"]),
        "name": json_values,
        "plain": st.integers(0, 3),
        "nested": st.fixed_dictionaries(
            {}, optional={"count": st.integers(0, 9), "flag": st.booleans(), "deep": st.dictionaries(keys, scalars)}
        ),
    },
)
reducible_states = st.builds(
    lambda data, seen: s(data, {"seen": seen} if seen is not None else {}),
    reducible,
    st.none() | st.lists(st.integers(0, 3), max_size=3),
)


@PROPERTY
@given(reducible_states, reducible_states, reducible_states)
def test_reducers_do_not_depend_on_batching(a: ContextState, b: ContextState, c: ContextState) -> None:
    def merge(*states: ContextState) -> ContextState:
        result = compute_merge(list(states), strategy="reducers", reducers=REDUCERS)
        assert result.conflicts == []
        return result.state

    left, right, flat = merge(merge(a, b), c), merge(a, merge(b, c)), merge(a, b, c)
    assert left.document() == right.document() == flat.document()


@PROPERTY
@given(st.lists(st.integers(-100, 100), min_size=2, max_size=5), st.integers(-100, 100))
def test_three_way_sum_adds_every_delta(values: list[int], start: int) -> None:
    result = compute_merge(
        [s({"n": v}) for v in values], strategy="three_way", base=s({"n": start}), reducers={"/data/n": "sum"}
    )
    assert result.state.data["n"] == start + sum(v - start for v in values)


# -- ordered ---------------------------------------------------------------------------------


def test_ordered_later_wins_with_provenance() -> None:
    result = compute_merge(
        [
            s({"title": "a", "cfg": {"x": 1}, "only0": 1}, {"by": "one"}),
            s({"title": "b", "cfg": {"y": 2}}),
            s({"title": "c", "gone": 1}, {"by": "three"}),
            s({"title": "d", "gone": None}),
        ]
    )
    assert result.state.data == {"title": "d", "cfg": {"x": 1, "y": 2}, "only0": 1}
    assert result.state.metadata == {"by": "three"}
    found = {p.path: (p.inputs, p.winner) for p in result.provenance}
    assert found == {
        "/data/title": ((0, 1, 2, 3), 3),
        "/data/cfg": ((0, 1), None),  # objects merged key by key: no single winner
        "/data/gone": ((2, 3), 3),  # input 3 deleted it
        "/metadata/by": ((0, 2), 2),
    }
    assert result.conflicts == [] and result.strategy == "ordered"


def test_ordered_keeps_the_first_inputs_nulls_and_shares_unchanged_values() -> None:
    big = {"k": list(range(100))}
    first = s({"keep": None, "big": big})
    result = compute_merge([first, s({"new": 1})])
    assert result.state.data == {"keep": None, "big": big, "new": 1}
    assert result.state.data["big"] is big  # not copied


def test_ordered_with_reducers() -> None:
    result = compute_merge(
        [s({"log": [1], "n": 1, "t": ["a"]}), s({"log": [2], "n": 2, "t": ["a", "b"]}), s({"log": None, "n": 3})],
        reducers={"/data/log": "append", "/data/n": "sum", "/data/t": "union"},
    )
    assert result.state.data == {"n": 6, "t": ["a", "b"]}  # null still deletes (RFC 7396)


def test_version_is_the_highest_semver_and_timestamp_is_now() -> None:
    before = datetime.now(UTC)
    result = compute_merge([s({}, version="1.9.0"), s({}, version="1.10.0-rc.1"), s({}, version="1.2.0")])
    assert result.state.version == "1.10.0-rc.1"
    assert result.state.timestamp >= before
    ordered = sorted(
        [
            *("1.0.0", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2"),
            *("1.0.0-beta.11", "1.0.0-rc.1", "2.0.0", "1.0.0-alpha.10"),
        ],
        key=semver_key,
    )
    assert ordered == [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.10",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
    ]


# -- three_way -------------------------------------------------------------------------------


def test_three_way_merges_changes_to_different_keys_at_any_depth() -> None:
    base = {"a": 1, "cfg": {"x": 1, "y": 1}, "gone": 1, "list": [1, 2]}
    ours = {"a": 2, "cfg": {"x": 2, "y": 1}, "list": [1, 2]}
    theirs = {"a": 1, "cfg": {"x": 1, "y": 3, "z": 0}, "gone": 1, "list": [1, 2], "new": True}
    result = three_way(base, ours, theirs)
    assert result.conflicts == []
    assert result.state.data == {"a": 2, "cfg": {"x": 2, "y": 3, "z": 0}, "list": [1, 2], "new": True}
    assert [(p.path, p.winner) for p in result.provenance] == [("/data/cfg", None)]


def test_three_way_conflict_kinds_and_resolution() -> None:
    base = {"title": "a", "owner": "x", "cfg": {"n": 1}, "kind": 1, "list": [1]}
    ours = {"title": "b", "owner": "y", "cfg": {"n": 2}, "kind": 2, "list": [1, 2], "added": 1}
    theirs = {"title": "c", "cfg": "flat", "kind": 3, "list": [1, 3], "added": 2}
    with pytest.raises(MergeConflictError) as raised:
        three_way(base, ours, theirs)
    conflicts = {c.path: c for c in raised.value.conflicts}
    assert {path: c.kind for path, c in conflicts.items()} == {
        "/data/title": "both_modified",
        "/data/owner": "modify_delete",
        "/data/cfg": "type_mismatch",
        "/data/kind": "both_modified",
        "/data/list": "both_modified",  # arrays are values
        "/data/added": "add_add",
    }
    assert conflicts["/data/owner"].absent == ("theirs",)
    assert conflicts["/data/added"].absent == ("base",) and conflicts["/data/added"].base is None
    message = str(raised.value)
    assert message.startswith("on_conflict: 'fail' and the merge found 6 conflicts: /data/title both_modified")
    assert "/data/owner modify_delete (absent in theirs)" in message
    assert '"x"' not in message and '"y"' not in message  # paths and kinds, never the values
    assert "nothing was merged or written" in message
    ours_wins = three_way(base, ours, theirs, on_conflict="ours")
    assert ours_wins.state.data == ours
    assert len(ours_wins.conflicts) == 6
    assert three_way(base, ours, theirs, on_conflict="theirs").state.data == theirs


def test_three_way_conflicts_in_nested_objects_and_metadata_name_their_paths() -> None:
    base = s({"a": {"b/c": {"d": 1}}}, {"m": {"owner": "x"}})
    result = compute_merge(
        [s({"a": {"b/c": {"d": 2}}}, {"m": {"owner": "y"}}), s({"a": {"b/c": {"d": 3}}}, {"m": {"owner": "z"}})],
        strategy="three_way",
        base=base,
        on_conflict="theirs",
    )
    assert [c.path for c in result.conflicts] == ["/data/a/b~1c/d", "/metadata/m/owner"]
    assert result.state.data == {"a": {"b/c": {"d": 3}}}


def test_three_way_true_is_not_one() -> None:
    result = three_way({"f": 1, "g": {"h": 0}}, {"f": True, "g": {"h": False}}, {"f": 1, "g": {"h": 0}})
    assert result.state.data == {"f": True, "g": {"h": False}}
    assert type(result.state.data["f"]) is bool


def test_three_way_reducers_combine_both_changes() -> None:
    base = {"log": [1], "tags": ["a", "b"], "n": 10, "hi": 5, "name": "x", "raw": [0]}
    ours = {"log": [1, 2], "tags": ["a", "c"], "n": 15, "hi": 7, "name": "y", "raw": [0, 1]}
    theirs = {"log": [1, 3], "tags": ["b", "d", "a"], "n": 12, "hi": 6, "name": "z", "raw": [0, 2]}
    reducers = {
        "/data/log": "append",
        "/data/tags": "union",
        "/data/n": "sum",
        "/data/hi": "max",
        "/data/name": "last",
    }
    result = three_way(base, ours, theirs, reducers=reducers, on_conflict="ours")
    assert result.state.data == {
        "log": [1, 2, 3],
        "tags": ["a", "c", "d"],  # b removed by ours, c and d added
        "n": 17,
        "hi": 7,
        "name": "z",
        "raw": [0, 1],  # no reducer: arrays are values, a conflict resolved as ours
    }
    assert [c.path for c in result.conflicts] == ["/data/raw"]


def test_three_way_append_when_a_side_rewrote_the_base_is_a_conflict() -> None:
    with pytest.raises(MergeConflictError, match="/data/log both_modified"):
        three_way({"log": [1, 2]}, {"log": [2, 3]}, {"log": [1, 2, 4]}, reducers={"/data/log": "append"})


def test_three_way_with_more_inputs_folds_pairwise_against_the_base() -> None:
    result = three_way(
        {"n": 0, "log": []},
        {"n": 1, "log": ["a"], "x": 1},
        {"n": 2, "log": ["b"], "y": 1},
        {"n": 3, "log": ["c"], "z": 1},
        reducers={"/data/n": "sum", "/data/log": "append"},
    )
    assert result.state.data == {"n": 6, "log": ["a", "b", "c"], "x": 1, "y": 1, "z": 1}


# -- reducers strategy -----------------------------------------------------------------------


def test_reducers_strategy_type_mismatch_and_last() -> None:
    a, b = s({"cfg": {"x": 1}, "n": None}), s({"cfg": 5, "n": 1})
    with pytest.raises(MergeConflictError, match=r"/data/cfg type_mismatch \(absent in base\); pass"):
        compute_merge([a, b], strategy="reducers")
    assert compute_merge([a, b], strategy="reducers", reducers={"/data/cfg": "last"}).state.data == {"cfg": 5, "n": 1}
    # null is a value here, not a deletion
    assert compute_merge([b, a], strategy="reducers", on_conflict="theirs").state.data == {"cfg": {"x": 1}, "n": None}


# -- argument and value errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"strategy": "three_way"}, StateValidationError, "strategy: three_way needs a base: pass base"),
        ({"base": s({})}, StateValidationError, "base: only strategy three_way uses a base; got strategy 'ordered'"),
        ({"strategy": "latest"}, StateValidationError, "strategy: must be one of ordered, three_way, reducers"),
        ({"on_conflict": "mine"}, StateValidationError, "on_conflict: must be one of fail, ours, theirs; got 'mine'"),
        ({"reducers": {"/n": "sum"}}, StateValidationError, "reducers./n: must be a JSON Pointer into the state"),
        (
            {"reducers": {"/data/a~2": "sum"}},
            StateValidationError,
            "reducers./data/a~2: '~' must be followed by 0 or 1",
        ),
        ({"reducers": {"/data/n": "avg"}}, StateValidationError, "reducers./data/n: must be one of append, union, sum"),
        (
            {"reducers": {"/data/a": "last", "/data/a/b": "sum"}},
            StateValidationError,
            "reducers./data/a/b: is inside /data/a, which has its own reducer",
        ),
        (
            {"reducers": {"/data/n": "sum"}},
            StateUpdateError,
            "reducers./data/n: sum needs numbers, got a string in states[1]",
        ),
        ({"reducers": {"/data/n": "append"}}, StateUpdateError, "append needs arrays, got a number in states[0]"),
        ({"reducers": {"/data/n": "max"}}, StateUpdateError, "max compares values of one kind, got a number in"),
    ],
)
def test_errors_name_field_rule_and_limit(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error) as raised:
        compute_merge([s({"n": 1}), s({"n": "x"})], **kwargs)
    assert str(raised.value).startswith(message) or message in str(raised.value), str(raised.value)


def test_input_count_limits() -> None:
    with pytest.raises(StateValidationError, match="states: a merge needs at least 2 inputs, got 1"):
        compute_merge([s({})])
    with pytest.raises(StateValidationError, match="a merge takes at most 16 inputs, got 17"):
        compute_merge([s({})] * 17)


def test_parse_source_shapes_and_errors() -> None:
    assert parse_source({"context": "c"}, "inputs[0]").context == "c"  # type: ignore[union-attr]
    inline = parse_source({"state": {"data": {"a": 1}, "version": "2.0.0"}}, "inputs[1]")
    assert isinstance(inline, ContextState) and inline.version == "2.0.0"
    assert parse_source({"data": {}, "timestamp": "2026-01-01T00:00:00Z"}, "x").timestamp.year == 2026  # type: ignore[union-attr]
    for value, message in [
        ({"context": "c", "data": {}}, "inputs[0]: a context input takes context and revision only; got also data"),
        ({"context": "c", "revision": 0}, "inputs[0].revision: must be a revision number ≥ 1 or null; got 0"),
        ({"context": "a/b"}, "inputs[0].context: must match"),
        ({"state": {"data": []}}, "inputs[0].state.data: must be an object; got an array"),
        ({"state": {"data": {}, "version": "1"}}, "inputs[0].state.version: must be a semantic version"),
        (
            {"state": {"data": {}, "extra": 1}},
            "inputs[0].state: a state has data, metadata, version and timestamp only; got also extra",
        ),
        ({"data": {}, "timestamp": "yesterday"}, "inputs[0].timestamp: must be an RFC 3339 time"),
        ({"revision": 3}, "inputs[0]: must have context (a context at a revision) or state (an inline state)"),
        ([1], "inputs[0]: must be {context, revision?} or an inline state"),
    ]:
        with pytest.raises(StateValidationError) as raised:
            parse_source(value, "inputs[0]")
        assert str(raised.value).startswith(message), str(raised.value)


# -- StateManager ----------------------------------------------------------------------------


async def _register(manager: StateManager, name: str, data: dict[str, Any], **kwargs: Any) -> None:
    result = await manager.register(name, state=ContextState(data=data), **kwargs)
    assert isinstance(result, WriteResult)


async def test_merge_states_keeps_the_specification_call(manager: StateManager) -> None:
    a = ContextState(data={"x": 1, "keep": {"a": 1}}, version="1.0.0")
    b = ContextState(data={"x": 2, "keep": {"b": 2}}, metadata={"m": 1}, version="1.2.0")
    merged = await manager.merge_states([a, b])
    assert merged.data == {"x": 2, "keep": {"a": 1, "b": 2}} and merged.version == "1.2.0"
    assert await manager.validate_state(merged) is None
    base = ContextState(data={"n": 1})
    merged = await manager.merge_states(
        [ContextState(data={"n": 2}), ContextState(data={"n": 5})],
        strategy="three_way",
        base=base,
        reducers={"/data/n": "sum"},
    )
    assert merged.data == {"n": 6}
    with pytest.raises(MergeConflictError):
        await manager.merge_states(
            [ContextState(data={"n": 2}), ContextState(data={"n": 5})], strategy="three_way", base=base
        )


async def test_merge_by_name_with_automatic_base(manager: StateManager) -> None:
    await _register(manager, "plan", {"title": "a", "n": 1})
    await manager.update("plan", merge_patch_={"title": "b"})
    await manager.update("plan", merge_patch_={"n": 2})
    outcome = await manager.merge([{"context": "plan", "revision": 2}, {"context": "plan"}], strategy="three_way")
    assert outcome.base is not None and (outcome.base.context, outcome.base.revision) == ("plan", 2)
    assert [(i.context, i.revision) for i in outcome.inputs] == [("plan", 2), ("plan", 3)]
    assert outcome.state is not None and outcome.state.data == {"title": "b", "n": 2}
    assert outcome.write is None
    with pytest.raises(StateValidationError, match="strategy: three_way needs a base"):
        await manager.merge([{"context": "plan"}, {"state": {"data": {}}}], strategy="three_way")


async def test_merge_into_target_writes_one_revision_with_cas(manager: StateManager) -> None:
    await _register(manager, "doc", {"title": "a", "tags": ["x"]})
    mine = {"state": {"data": {"title": "a", "tags": ["x", "y"], "done": True}}}
    with pytest.raises(ConflictError, match="expected revision 7 but context 'doc' is at revision 1"):
        await manager.merge(
            [{"context": "doc"}, mine], strategy="three_way", base={"context": "doc", "revision": 1},
            target="doc", expected_revision=7,
        )  # fmt: skip
    outcome = await manager.merge(
        [{"context": "doc"}, mine],
        strategy="three_way",
        base={"context": "doc", "revision": 1},
        target="doc",
        expected_revision=1,
    )
    assert outcome.write is not None and outcome.write.context.revision == 2
    assert outcome.write.change.op == "merge"
    assert (await manager.read("doc"))[2].data == {"title": "a", "tags": ["x", "y"], "done": True}
    history = await manager.history("doc")
    assert [(h.revision, h.op) for h in history] == [(2, "merge"), (1, "register")]


async def test_merge_into_a_target_that_moved_merges_the_new_revision(manager: StateManager) -> None:
    await _register(manager, "doc", {"a": 0, "b": 0})
    store = manager.store
    real_mutate = store.mutate

    async def mutate_after_a_concurrent_write(*args: Any, **kwargs: Any) -> Any:
        # Another writer commits between the merge's read and its write transaction.
        store.mutate = real_mutate  # type: ignore[method-assign]
        await manager.update("doc", merge_patch_={"b": 5})
        return await real_mutate(*args, **kwargs)

    store.mutate = mutate_after_a_concurrent_write  # type: ignore[method-assign]
    outcome = await manager.merge(
        [{"context": "doc"}, {"state": {"data": {"a": 1, "b": 0}}}],
        strategy="three_way",
        base={"context": "doc", "revision": 1},
        target="doc",
    )
    assert outcome.write is not None and outcome.write.context.revision == 3
    assert (await manager.read("doc"))[2].data == {"a": 1, "b": 5}  # the concurrent b=5 survives
    assert outcome.state is not None and outcome.state.data == {"a": 1, "b": 5}


async def test_dry_run_writes_nothing_and_lists_conflicts(manager: StateManager) -> None:
    await _register(manager, "doc", {"t": "a"})
    await manager.update("doc", data={"t": "b"})
    inputs = [{"context": "doc"}, {"state": {"data": {"t": "c"}}}]
    outcome = await manager.merge(
        inputs, strategy="three_way", base={"context": "doc", "revision": 1}, target="doc", dry_run=True
    )
    assert outcome.state is None and outcome.dry_run
    assert [(c.path, c.kind, c.base, c.ours, c.theirs) for c in outcome.conflicts] == [
        ("/data/t", "both_modified", "a", "b", "c")
    ]
    resolved = await manager.merge(
        inputs,
        strategy="three_way",
        base={"context": "doc", "revision": 1},
        on_conflict="theirs",
        target="doc",
        expected_revision=2,
        dry_run=True,
    )
    assert resolved.state is not None and resolved.state.data == {"t": "c"} and resolved.write is None
    with pytest.raises(ConflictError):
        await manager.merge(inputs, strategy="ordered", target="doc", expected_revision=1, dry_run=True)
    assert (await manager.get("doc")).revision == 2


async def test_merge_errors_change_nothing(manager: StateManager) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    await _register(manager, "doc", {"n": 1}, schema=schema)
    with pytest.raises(StateValidationError, match=r"state.data.n: must be of type 'integer' \(got a string\)"):
        await manager.merge([{"context": "doc"}, {"state": {"data": {"n": "x"}}}], target="doc")
    with pytest.raises(NotFoundError, match=r"inputs\[1\]\.context: no context named 'nope'"):
        await manager.merge([{"context": "doc"}, {"context": "nope"}])
    with pytest.raises(NotFoundError, match=r"inputs\[1\]\.revision: context 'doc' has no revision 9"):
        await manager.merge([{"context": "doc"}, {"context": "doc", "revision": 9}])
    with pytest.raises(NotFoundError, match="target: no context named 'other'; register it first"):
        await manager.merge([{"context": "doc"}, {"context": "doc"}], target="other")
    with pytest.raises(StateValidationError, match="expected_revision: only used with target"):
        await manager.merge([{"context": "doc"}, {"context": "doc"}], expected_revision=1)
    with pytest.raises(StateValidationError, match=r"inputs\[1\]\.data\.x(\.a)+: nesting depth 65 exceeds limit 64"):
        deep: dict[str, Any] = {}
        for _ in range(64):
            deep = {"a": deep}
        await manager.merge([{"context": "doc"}, {"data": {"x": deep}}])
    with pytest.raises(StateValidationError, match=r"merged: serialised size \d+ bytes exceeds limit 1048576 bytes"):
        half = "x" * (600 * 1024)
        await manager.merge([{"data": {"a": half}}, {"data": {"b": half}}])
    assert (await manager.get("doc")).revision == 1


async def test_merge_can_create_the_target(manager: StateManager) -> None:
    await _register(manager, "a", {"x": 1})
    outcome = await manager.merge([{"context": "a"}, {"data": {"y": 2}}], target="b", expected_revision=0)
    assert outcome.write is not None and outcome.write.context.revision == 1
    assert (await manager.read("b"))[2].data == {"x": 1, "y": 2}
    with pytest.raises(ConflictError, match="0 means create-only"):
        await manager.merge([{"context": "a"}, {"data": {"y": 2}}], target="b", expected_revision=0)
