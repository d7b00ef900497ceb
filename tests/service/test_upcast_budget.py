"""Upcasts on a budget: a migration chain is dry-run at registration, every upcast is bounded by
the state size limit, and an upcast result is cached per context revision and format version.
Plus the bounds on error messages that quote nothing of the state."""

from __future__ import annotations

from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import (
    MAX_MESSAGE_CHARS,
    ContextError,
    MergeConflictError,
    MigrationError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
)
from groundhog_mcp.models import ContextState
from groundhog_mcp.service.merge import compute_merge
from groundhog_mcp.service.migration import UpcastCache, load_upcaster, parse_state_format, upcast
from groundhog_mcp.service.patching import apply_json_patch, resolve_pointer
from groundhog_mcp.service.validation import Limits

SECRET = "s3cr3t-" * 40_000  # 280 KB of state data no message may quote


def _chain(steps: int, patch: Any) -> dict[str, Any]:
    return {
        "version": f"{steps + 1}.0.0",
        "migrations": [{"from": f"{i}.0.0", "to": f"{i + 1}.0.0", "patch": patch(i)} for i in range(1, steps + 1)],
    }


# -- the cache -----------------------------------------------------------------------------------


async def test_an_upcast_is_cached_per_revision_not_rerun_per_read(
    manager: StateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    upcaster = load_upcaster("split-full-name")  # the plugin, loaded from its entry point
    calls: list[dict[str, Any]] = []
    original = type(upcaster).__call__

    def counting(self: Any, data: dict[str, Any]) -> dict[str, Any]:
        calls.append(dict(data))
        return original(self, data)

    monkeypatch.setattr(type(upcaster), "__call__", counting)
    fmt = {"version": "2.0.0", "migrations": [{"from": "1.0.0", "to": "2.0.0", "plugin": "split-full-name"}]}
    await manager.register("people", settings={"state_format": fmt}, state=ContextState(data={"name": "Ada Lovelace"}))
    registered = len(calls)  # the dry run at registration calls it too
    assert registered == 2 and calls[:2] == [{}, {"name": "Ada Lovelace"}]
    for _ in range(5):
        assert (await manager.read("people"))[2].data == {"first_name": "Ada", "last_name": "Lovelace"}
        assert (await manager.read("people", revision=1))[2].version == "2.0.0"
        await manager.check("people")
    assert len(calls) == registered + 1
    # A write stores the current format: the new revision needs no upcast, the old one stays cached.
    await manager.update("people", merge_patch_={"age": 36})
    assert (await manager.read("people"))[2].data["age"] == 36
    assert (await manager.read("people", revision=1))[2].data["first_name"] == "Ada"
    assert len(calls) == registered + 1  # the write applied its patch to the cached upcast too


def test_the_upcast_cache_is_bounded_by_entries_and_bytes() -> None:
    cache = UpcastCache(max_entries=2, max_bytes=1000)
    states = [ContextState(data={"i": i}) for i in range(4)]
    cache.put(("a", 1, "1.0.0", "2.0.0"), states[0], 100)
    cache.put(("a", 2, "1.0.0", "2.0.0"), states[1], 100)
    assert cache.get(("a", 1, "1.0.0", "2.0.0")) is states[0]  # now the most recent
    cache.put(("a", 3, "1.0.0", "2.0.0"), states[2], 100)
    assert cache.get(("a", 2, "1.0.0", "2.0.0")) is None and len(cache) == 2
    cache.put(("b", 1, "1.0.0", "2.0.0"), states[3], 240)
    cache.put(("b", 2, "1.0.0", "2.0.0"), states[3], 240)
    assert len(cache) == 2 and cache.get(("a", 1, "1.0.0", "2.0.0")) is None
    cache.put(("c", 1, "1.0.0", "2.0.0"), states[3], 251)  # over a quarter of the bytes: never kept
    assert cache.get(("c", 1, "1.0.0", "2.0.0")) is None


# -- bounded upcasts and the dry run ---------------------------------------------------------------


def test_every_upcast_is_bounded_by_the_state_size_limit() -> None:
    doubling = parse_state_format(_chain(12, lambda i: [{"op": "copy", "from": "/d", "path": "/d/-"}]))
    state = ContextState(data={"d": [SECRET[:200]]}, version="1.0.0")
    with pytest.raises(MigrationError) as refused:
        upcast(doubling, state, context="c", limits=Limits(max_state_bytes=50_000))
    error = refused.value
    assert error.too_large and error.step == ("8.0.0", "9.0.0")
    assert "too_large" in str(error) and "50000 bytes" in str(error)
    assert len(str(error)) <= MAX_MESSAGE_CHARS and "s3cr3t-s3cr3t" not in str(error)
    # Within one step: copies of the whole data into new members of itself, bounded as they happen.
    one_step = parse_state_format(
        _chain(1, lambda i: [{"op": "copy", "from": "", "path": f"/k{n}"} for n in range(40)])
    )
    with pytest.raises(MigrationError, match=r"too_large at operation 7 \(copy at '/k7'\)") as refused:
        upcast(one_step, state, context="c", limits=Limits(max_state_bytes=50_000))
    assert refused.value.step == ("1.0.0", "2.0.0")


async def test_a_chain_that_blows_data_up_is_refused_at_registration(manager: StateManager) -> None:
    root_copy = _chain(20, lambda i: [{"op": "copy", "from": "", "path": f"/k{i}"}])
    with pytest.raises(StateValidationError) as refused:
        await manager.register("boom", settings={"state_format": root_copy})
    assert str(refused.value) == (
        "settings.state_format.migrations: the chain from 1.0.0 grows a 2-byte data object past 16512 bytes at "
        "step 12.0.0 -> 13.0.0 (dry run at registration; the bound is 16 KiB + 64 x the input, and at most the "
        "state size limit)"
    )
    array_copy = _chain(20, lambda i: [{"op": "copy", "from": "/d", "path": "/d/-"}])
    example = ContextState(data={"d": ["y" * 200]}, version="1.0.0")
    with pytest.raises(StateValidationError, match=r"the chain from 1\.0\.0 grows a 210-byte data object past 29824"):
        await manager.register("boom", settings={"state_format": array_copy}, state=example)
    assert (await manager.list()).contexts == []
    # A step that fails on the empty sample (the path it moves is missing) depends on real data: accepted.
    moving = _chain(3, lambda i: [{"op": "move", "from": f"/v{i}", "path": f"/v{i + 1}"}])
    await manager.register("moving", settings={"state_format": moving}, state=ContextState(data={"v1": 5}))
    assert (await manager.read("moving"))[2].data == {"v4": 5}


# -- error messages: bounded, and never the data ------------------------------------------------------


def test_every_context_error_message_is_at_most_1000_characters() -> None:
    assert len(str(ContextError("x" * 1_000_000))) <= MAX_MESSAGE_CHARS
    assert str(ContextError("short")) == "short"
    assert str(NotFoundError("y" * 5000)).endswith("... (5000 chars)")


def test_a_missing_path_in_a_large_state_names_the_step_not_the_data() -> None:
    document = {"data": {"blob": SECRET, "items": [1, 2]}}
    with pytest.raises(NotFoundError) as missing:
        resolve_pointer(document, "/data/missing/x")
    assert str(missing.value) == (
        "path: '/data/missing/x' does not exist in the state ('/data/missing' is missing; /data is an object)"
    )
    with pytest.raises(NotFoundError, match=r"'/data/items/5' is missing; /data/items is an array\)$"):
        resolve_pointer(document, "/data/items/5")


def test_patch_errors_name_the_operation_not_the_data() -> None:
    data = {"blob": SECRET}
    with pytest.raises(StateUpdateError) as failed:
        apply_json_patch(data, [{"op": "add", "path": "/n", "value": 1}, {"op": "test", "path": "/blob", "value": 1}])
    assert str(failed.value) == (
        "patch: a 'test' operation failed (operation 1 (test at '/blob'): the value there differs); nothing was changed"
    )
    with pytest.raises(StateUpdateError) as failed:
        apply_json_patch(data, [{"op": "copy", "from": "/nope/x", "path": "/y"}])
    assert "s3cr3t" not in str(failed.value) and "operation 0 (copy at '/y')" in str(failed.value)


def test_merge_conflicts_name_paths_and_kinds_never_values() -> None:
    base = ContextState(data={f"k{i}": "base" for i in range(30)})
    ours = ContextState(data={f"k{i}": SECRET for i in range(30)})
    theirs = ContextState(data={f"k{i}": "other" + SECRET for i in range(30)})
    with pytest.raises(MergeConflictError) as conflicted:
        compute_merge([ours, theirs], strategy="three_way", base=base)
    text = str(conflicted.value)
    assert text.startswith("on_conflict: 'fail' and the merge found 30 conflicts: /data/k0 both_modified; ")
    assert "s3cr3t" not in text and len(text) <= MAX_MESSAGE_CHARS
    assert len(conflicted.value.conflicts) == 30  # the values stay available to programs
