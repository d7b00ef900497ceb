"""History retention behaves the same on every backend: pruned history, compacted errors,
change rows of pruned revisions gone, update counts kept."""

from __future__ import annotations

import pytest

from groundhog_mcp import CompactedError, ContextState, StateManager
from groundhog_mcp.store import Retention
from tests.conformance.conftest import Backend


async def test_retention_prunes_history_and_change_rows(backend: Backend) -> None:
    manager = StateManager(backend.store(retention=Retention(keep_revisions=10)))
    await manager.start()
    try:
        await manager.register("c", state=ContextState(data={"v": 0}), settings={})
        await manager.register("all", settings={"keep_revisions": 0})
        for v in range(1, 40):
            await manager.update("c", data={"v": v, "blob": f"{v}" + "z" * 3000})
            await manager.update("all", data={"v": v})
        revisions = [e.revision for e in await manager.history("c", limit=100)]
        # Pruned at every 10th revision to the last keep_revisions=10: at revision 40, exactly 31..40.
        assert revisions == list(range(40, 30, -1))
        assert len(await manager.history("all", limit=100)) == 40
        with pytest.raises(CompactedError) as caught:
            await manager.read("c", 2)
        assert caught.value.oldest_available == 31
        changes = [c for c in await manager.store.changes_after(0, limit=1000) if c.name == "c"]
        # The registration row stays, the change rows of pruned revisions 2..30 go.
        assert [(c.op, c.revision) for c in changes] == [("register", 1)] + [("update", r) for r in range(31, 41)]
        # A diff larger than 2 KB keeps its paths only in the change feed.
        assert changes[-1].patch is not None and all(set(op) == {"op", "path"} for op in changes[-1].patch)
        (metrics,) = (await manager.collect_metrics(["c"]))[1]
        assert metrics.state_updates == 39
    finally:
        await manager.close()
