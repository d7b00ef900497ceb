"""The write hot path (groundhog_mcp/service/updates.py ``update``, store/core.py ``mutate``): an
update with small inputs to a context without schema or state format costs one trip to the
SQLite thread; anything costlier is computed in a worker thread before the transaction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.service.validation import SMALL_INPUT_COST, small_json
from groundhog_mcp.store import SQLiteStore


def test_small_json_counts_values_and_stops_early() -> None:
    state = {"items": [{"id": i, "text": "x" * 40} for i in range(16)], "n": 1}
    assert small_json(state, None, {"note": "a"})
    assert not small_json({"s": "x" * (64 * SMALL_INPUT_COST)})  # one long string
    assert not small_json(list(range(SMALL_INPUT_COST + 1)))
    assert not small_json({f"k{i}": i for i in range(10**6)})  # refused by its length, not walked
    assert small_json([[[]]] * 10) and not small_json([[[]]] * SMALL_INPUT_COST)


class _Trips:
    """Counts what is handed to the store's one database thread."""

    def __init__(self, store: SQLiteStore) -> None:
        executor = store._executor
        assert executor is not None
        self.count = 0
        submit: Callable[..., Any] = executor.submit

        def counted(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return submit(fn, *args, **kwargs)

        executor.submit = counted  # type: ignore[method-assign]


@pytest.mark.parametrize(
    ("schema", "data", "trips"),
    [
        (None, {"n": 2}, 1),  # cheap: applied inside the one write transaction
        ({"type": "object"}, {"n": 2}, 2),  # a schema to check: prepared in a worker thread first
        (None, {"n": list(range(SMALL_INPUT_COST + 1))}, 2),  # large input: the same
    ],
)
async def test_trips_to_the_database_thread_per_update(
    db_path: Path, schema: dict[str, Any] | None, data: dict[str, Any], trips: int
) -> None:
    async with StateManager.open(db_path) as manager:
        await manager.register("c", state=ContextState(data={"n": 1}), schema=schema)
        store = manager.store
        assert isinstance(store, SQLiteStore)
        counter = _Trips(store)
        result = await manager.update("c", data=data, expected_revision=1)
        assert result.context.revision == 2 and result.context.state.data == data
        assert counter.count == trips
