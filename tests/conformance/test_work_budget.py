"""The work budget on the write path, on every backend: a patch that would blow a state up, a
schema violation of a large value and an exploding upcast are refused with short, data-free
errors and leave the stored rows as they were; the write computed outside the transaction is
reused only while the context has not moved."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import MAX_MESSAGE_CHARS, LimitExceededError, MigrationError, StateValidationError
from groundhog_mcp.models import ContextState
from tests.conformance.conftest import Backend

SECRET = "s3cr3t-" * 20_000  # 140 KB of state data no message may quote


async def _rows(backend: Backend) -> list[tuple[Any, ...]]:
    return await backend.sql("SELECT name, revision, state FROM contexts ORDER BY name")


async def test_a_patch_copying_the_data_into_itself_is_too_large_and_writes_nothing(
    manager: StateManager, backend: Backend
) -> None:
    await manager.register("c", state=ContextState(data={"blob": SECRET[:10_000]}))
    before = await _rows(backend)
    # Each copy doubles the data: 8 of them make 2.5 MB (30 would make 10 TB before any size check).
    doubling = [{"op": "copy", "from": "", "path": f"/k{n}"} for n in range(8)]
    with pytest.raises(LimitExceededError) as refused:
        await manager.update("c", patch=doubling)
    assert str(refused.value).startswith("patch: too_large at operation 6 (copy at '/k6'): the patch's copy")
    assert await _rows(backend) == before
    assert (await manager.history("c"))[0].revision == 1


async def test_a_schema_violation_of_a_large_value_quotes_nothing(manager: StateManager, backend: Backend) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}, "tags": {"uniqueItems": True}}}
    await manager.register("c", schema=schema, state=ContextState(data={"n": 1}))
    before = await _rows(backend)
    with pytest.raises(StateValidationError) as refused:
        await manager.update("c", merge_patch_={"n": SECRET, "tags": [{"a": SECRET}, {"a": SECRET}]})
    assert str(refused.value) == (
        "state.data.n: must be of type 'integer' (got a string) (JSON Schema rule 'type'); "
        "state.data.tags: has non-unique elements (items 0 and 1 are equal) (JSON Schema rule 'uniqueItems')"
    )
    assert await _rows(backend) == before


async def test_an_exploding_upcast_is_too_large_on_read_and_on_migrate(manager: StateManager, backend: Backend) -> None:
    # The registration dry run has no array at /d to copy: the chain is accepted, the real data is not.
    steps = 12  # 2 KB doubled 12 times is 8 MB: a bound must stop it at 1 MB
    fmt = {
        "version": f"{steps + 1}.0.0",
        "migrations": [
            {"from": f"{i}.0.0", "to": f"{i + 1}.0.0", "patch": [{"op": "copy", "from": "/d", "path": "/d/-"}]}
            for i in range(1, steps + 1)
        ],
    }
    await manager.register("c", settings={"state_format": fmt})
    # An old-version state, as an import or an earlier registration could have stored it.
    await manager.save_state((await manager.get("c")).id, ContextState(data={"d": [SECRET[:2000]]}, version="1.0.0"))
    before = await _rows(backend)
    with pytest.raises(MigrationError) as refused:
        await manager.read("c")
    assert refused.value.too_large and refused.value.step == ("10.0.0", "11.0.0")
    assert len(str(refused.value)) <= MAX_MESSAGE_CHARS and "s3cr3t" not in str(refused.value)
    with pytest.raises(MigrationError, match=r"too_large.*no context was written"):
        await manager.migrate("c")
    assert await _rows(backend) == before


async def test_a_write_prepared_outside_the_transaction_is_redone_when_the_context_moved(
    manager: StateManager,
) -> None:
    await manager.register("c", state=ContextState(data={}))
    # Concurrent unconditional writes: each is prepared on the revision it read, most of them on one
    # that another write has replaced by the time its transaction runs. None may be lost.
    await asyncio.gather(*(manager.update("c", merge_patch_={f"k{i}": i}) for i in range(12)))
    context = await manager.get("c")
    assert context.revision == 13
    assert context.state.data == {f"k{i}": i for i in range(12)}
