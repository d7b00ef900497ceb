"""Branches and time on every backend: fork, merge base from lineage, as_of reads, path watches."""

from __future__ import annotations

from datetime import timedelta

import anyio
import pytest

from groundhog_mcp import ContextState, NotFoundError, StateManager
from groundhog_mcp.errors import CompactedError, ConflictError, MergeConflictError, StateValidationError
from groundhog_mcp.models import Parent, Principal
from groundhog_mcp.store import Retention, maintenance
from tests.conformance.conftest import Backend, MakeBackend


async def _merge(manager: StateManager, ours: str, theirs: str, *, dry_run: bool = False, **kwargs: object):
    return await manager.merge(
        [{"context": ours}, {"context": theirs}],
        strategy="three_way",
        target=None if dry_run else ours,
        dry_run=dry_run,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_fork_copies_state_and_definition_and_records_lineage(manager: StateManager) -> None:
    schema = {"type": "object", "properties": {"data": {"type": "object"}}}
    await manager.register(
        "plan",
        state=ContextState(data={"a": 1}),
        settings={"keep_revisions": 0},
        schema=schema,
        metadata={"owner": "x"},
    )
    await manager.update("plan", merge_patch_={"a": 2})
    await manager.update("plan", merge_patch_={"a": 3})

    forked = await manager.fork("plan", "plan-b", revision=2)
    assert forked.context.revision == 1 and forked.change.op == "register"
    assert forked.context.state.data == {"a": 2}
    assert (forked.context.schema, forked.context.settings, forked.context.metadata) == (
        schema,
        {"keep_revisions": 0},
        {"owner": "x"},
    )
    assert await manager.forked_from(forked.context) == Parent("fork", "plan", 2)
    assert await manager.forked_from(await manager.get("plan")) is None
    history = await manager.history("plan-b")
    assert [(e.revision, e.parents) for e in history] == [(1, (Parent("fork", "plan", 2),))]

    # Current by default, and definition overrides.
    other = await manager.fork("plan", "plan-c", settings={"keep_revisions": 5})
    assert other.context.state.data == {"a": 3} and other.context.settings == {"keep_revisions": 5}
    assert await manager.forked_from(other.context) == Parent("fork", "plan", 3)

    with pytest.raises(ConflictError):
        await manager.fork("plan", "plan-b")
    with pytest.raises(NotFoundError, match="no revision 9"):
        await manager.fork("plan", "plan-d", revision=9)
    with pytest.raises(NotFoundError):
        await manager.fork("nope", "plan-e")


async def test_merge_back_uses_the_fork_point_then_the_last_merge(manager: StateManager) -> None:
    """The issue's scenario: fork; different fields; merge back; same field; conflict resolved by
    on_conflict; more changes; merge again considers only the new changes."""
    await manager.register("main", state=ContextState(data={"title": "t", "steps": 1, "notes": "n"}))
    await manager.fork("main", "explore")
    await manager.update("main", merge_patch_={"title": "T"})
    await manager.update("explore", merge_patch_={"steps": 2})

    preview = await _merge(manager, "main", "explore", dry_run=True)
    assert preview.base is not None and (preview.base.context, preview.base.revision) == ("main", 1)
    merged = await _merge(manager, "main", "explore")
    assert merged.write is not None
    assert merged.write.context.state.data == {"title": "T", "steps": 2, "notes": "n"}
    history = await manager.history("main", limit=1)
    assert history[0].parents == (Parent("merge", "explore", 2),)

    # Both change the same field: a typed conflict, then settled by on_conflict.
    await manager.update("main", merge_patch_={"notes": "main's"})
    await manager.update("explore", merge_patch_={"notes": "explore's"})
    with pytest.raises(MergeConflictError) as raised:
        await _merge(manager, "main", "explore")
    assert [(c.path, c.kind) for c in raised.value.conflicts] == [("/data/notes", "both_modified")]
    preview = await _merge(manager, "main", "explore", dry_run=True)
    assert preview.base is not None and (preview.base.context, preview.base.revision) == ("explore", 2)
    settled = await _merge(manager, "main", "explore", on_conflict="theirs")
    assert settled.write is not None and settled.write.context.state.data["notes"] == "explore's"

    # More work on the fork only: merging again takes only the new change, no conflict on notes.
    await manager.update("explore", merge_patch_={"steps": 3})
    again = await _merge(manager, "main", "explore")
    assert again.base is not None and (again.base.context, again.base.revision) == ("explore", 3)
    assert again.write is not None and again.write.context.state.data == {
        "title": "T",
        "steps": 3,
        "notes": "explore's",
    }

    # The other direction: the source into the fork; its base is main's last merge of explore.
    await manager.update("main", merge_patch_={"title": "T2"})
    back = await _merge(manager, "explore", "main")
    assert back.base is not None and (back.base.context, back.base.revision) == ("explore", 4)
    assert back.write is not None and back.write.context.state.data == {"title": "T2", "steps": 3, "notes": "explore's"}


async def test_merge_base_across_two_generations_of_forks(manager: StateManager) -> None:
    await manager.register("a", state=ContextState(data={"x": 0, "y": 0, "z": 0}))
    await manager.update("a", merge_patch_={"x": 1})  # a@2
    await manager.fork("a", "b")  # from a@2
    await manager.update("b", merge_patch_={"y": 1})  # b@2
    await manager.fork("b", "c")  # from b@2
    await manager.update("c", merge_patch_={"z": 1})
    await manager.update("a", merge_patch_={"x": 2})

    preview = await _merge(manager, "a", "c", dry_run=True)
    assert preview.base is not None and (preview.base.context, preview.base.revision) == ("a", 2)
    assert preview.state is not None and preview.state.data == {"x": 2, "y": 1, "z": 1}
    # b and c share b@2.
    preview = await _merge(manager, "c", "b", dry_run=True)
    assert preview.base is not None and (preview.base.context, preview.base.revision) == ("b", 2)
    # An explicit base still wins.
    chosen = await manager.merge(
        [{"context": "a"}, {"context": "c"}], strategy="three_way", base={"context": "a", "revision": 1}, dry_run=True
    )
    assert chosen.base is not None and (chosen.base.context, chosen.base.revision) == ("a", 1)


async def test_a_merge_that_creates_its_target_records_lineage(manager: StateManager) -> None:
    """A merge written to a new target (expected_revision=0) records what it took in, as a merge
    into an existing target does, so a later three-way merge finds its base from it."""
    await manager.register("main", state=ContextState(data={"title": "t", "steps": 1, "notes": "n"}))
    await manager.fork("main", "feature")
    await manager.update("main", merge_patch_={"title": "T"})  # main@2
    await manager.update("feature", merge_patch_={"steps": 2})  # feature@2

    created = await manager.merge(
        [{"context": "main"}, {"context": "feature"}], strategy="three_way", target="release", expected_revision=0
    )
    assert created.write is not None and created.write.context.state.data == {"title": "T", "steps": 2, "notes": "n"}
    history = await manager.history("release")
    assert [(e.revision, e.parents) for e in history] == [
        (1, (Parent("merge", "feature", 2), Parent("merge", "main", 2)))
    ]

    # Both sides move on; merging main into release again finds main@2 (what release took in).
    await manager.update("main", merge_patch_={"notes": "N"})
    await manager.update("release", merge_patch_={"steps": 3})
    again = await _merge(manager, "release", "main")
    assert again.base is not None and (again.base.context, again.base.revision) == ("main", 2)
    assert again.write is not None and again.write.context.state.data == {"title": "T", "steps": 3, "notes": "N"}

    # Any strategy: an ordered merge into a new target records its inputs too.
    await manager.merge([{"context": "main"}, {"context": "feature"}], target="ordered", expected_revision=0)
    assert (await manager.history("ordered"))[0].parents == (Parent("merge", "feature", 2), Parent("merge", "main", 3))


async def test_unrelated_contexts_still_need_a_base(manager: StateManager) -> None:
    await manager.register("p", state=ContextState(data={"v": 1}))
    await manager.register("q", state=ContextState(data={"v": 2}))
    with pytest.raises(StateValidationError, match="three_way needs a base"):
        await _merge(manager, "p", "q", dry_run=True)


async def test_state_as_of_a_time(manager: StateManager) -> None:
    first = await manager.register("t", state=ContextState(data={"v": 1}))
    assert not isinstance(first, type(None))
    created = (await manager.get("t")).created_at
    second = await manager.update("t", data={"v": 2})
    third = await manager.update("t", data={"v": 3})
    at2 = second.change.timestamp
    _, revision, state = await manager.read("t", as_of=at2)
    assert (revision, state.data) == (2, {"v": 2})
    _, revision, state = await manager.read("t", as_of=third.change.timestamp - timedelta(microseconds=1))
    assert (revision, state.data) == (2, {"v": 2})
    _, revision, state = await manager.read("t", as_of=third.change.timestamp + timedelta(days=1))
    assert (revision, state.data) == (3, {"v": 3})
    with pytest.raises(NotFoundError, match=r"did not exist at .*it was created at") as raised:
        await manager.read("t", as_of=created - timedelta(seconds=1))
    assert raised.value.code == "not_found"

    entries = await manager.history("t", since=at2)
    assert [e.revision for e in entries] == [3, 2]
    entries = await manager.history("t", until=at2)
    assert [e.revision for e in entries] == [1]
    assert await manager.diff("t", None, from_as_of=at2) == [{"op": "replace", "path": "/data/v", "value": 3}]
    assert await manager.diff_between("t", 1, to_as_of=at2) == (
        1,
        2,
        [{"op": "replace", "path": "/data/v", "value": 2}],
    )


async def test_state_as_of_a_pruned_revision_is_compacted(backend: Backend) -> None:
    manager = StateManager(backend.store(retention=Retention(keep_revisions=2, prune_every=1)))
    await manager.start()
    try:
        await manager.register("r", state=ContextState(data={"v": 0}))
        writes = [await manager.update("r", data={"v": i}) for i in range(1, 5)]
        with pytest.raises(CompactedError, match=r"as_of: compacted.*oldest available revision is 4") as raised:
            await manager.read("r", as_of=writes[0].change.timestamp)
        assert raised.value.code == "compacted"
        _, revision, _ = await manager.read("r", as_of=writes[2].change.timestamp)
        assert revision == 4
    finally:
        await manager.close()


async def test_wait_for_change_with_paths_skips_siblings(manager: StateManager) -> None:
    await manager.register("w", state=ContextState(data={"plan": {"step": 1}, "log": []}))
    start = (await manager.get("w")).revision
    del start
    cursor = (await manager.wait_for_changes(["w"], timeout=0))[1]
    await manager.update("w", merge_patch_={"log": ["x"]})  # sibling: not seen
    sibling = await manager.wait_for_changes(["w"], after_sequence=cursor, timeout=0, paths=["/data/plan"])
    assert sibling[0] == [] and sibling[1] > cursor  # the cursor moved past it
    await manager.update("w", merge_patch_={"plan": {"step": 2}})  # a child of the watched path
    changes, after = await manager.wait_for_changes(["w"], after_sequence=sibling[1], timeout=0, paths=["/data/plan"])
    assert [c.revision for c in changes] == [3]
    # An ancestor is watched: the same change wakes it; the root watches everything.
    changes, _ = await manager.wait_for_changes(["w"], after_sequence=cursor, timeout=0, paths=["/data"])
    assert [c.revision for c in changes] == [2, 3]
    changes, _ = await manager.wait_for_changes(["w"], after_sequence=cursor, timeout=0, paths=["/data/plan/step/x"])
    assert [c.revision for c in changes] == [3]

    # Waiting: a sibling write does not wake the watcher, a child write does.
    async def later() -> None:
        await manager.update("w", merge_patch_={"log": ["y"]})
        await manager.update("w", merge_patch_={"plan": {"step": 3}})

    async with anyio.create_task_group() as tg:
        tg.start_soon(later)
        with anyio.fail_after(10):
            changes, _ = await manager.wait_for_changes(
                ["w"], after_sequence=after, timeout=10, paths=["/data/plan/step"]
            )
    assert [c.revision for c in changes] == [5]

    with pytest.raises(StateValidationError, match=r"paths\[0\]"):
        await manager.wait_for_changes(["w"], timeout=0, paths=["data/plan"])


async def test_lineage_never_crosses_namespaces(manager: StateManager) -> None:
    """A context of another namespace with the same name is neither a fork source nor a merge base."""
    other = manager.with_principal(Principal(name="mallory", namespace="other"))
    await other.register("shared", state=ContextState(data={"secret": 1}))
    with pytest.raises(NotFoundError):
        await manager.fork("shared", "mine")
    await manager.register("shared", state=ContextState(data={"v": 1}))
    await manager.fork("shared", "mine")
    await other.register("mine", state=ContextState(data={"secret": 2}))
    with pytest.raises(StateValidationError, match="three_way needs a base"):
        await _merge(other, "shared", "mine", dry_run=True)
    assert await other.forked_from(await other.get("mine")) is None
    assert (await other.history("mine"))[0].parents == ()


async def test_lineage_survives_export_and_import(backend: Backend, make_backend: MakeBackend) -> None:
    """An export carries the lineage: after an import the fork point and the last merge are found."""
    source = StateManager(backend.store())
    await source.start()
    try:
        await source.register("main", state=ContextState(data={"a": 0, "b": 0}))
        await source.fork("main", "side")
        await source.update("side", merge_patch_={"b": 1})
        await _merge(source, "main", "side")
        records = [r async for r in maintenance(source.store).export_records()]
    finally:
        await source.close()
    assert sorted(r["kind"] for r in records if r["type"] == "lineage") == ["fork", "merge"]
    copy = StateManager((await make_backend(backend.kind)).store())
    await copy.start()
    try:
        await maintenance(copy.store).import_records(records)
        assert await copy.forked_from(await copy.get("side")) == Parent("fork", "main", 1)
        await copy.update("side", merge_patch_={"a": 2})
        preview = await _merge(copy, "main", "side", dry_run=True)
        assert preview.base is not None and (preview.base.context, preview.base.revision) == ("side", 2)
    finally:
        await copy.close()
