"""History retention: bounded storage, clear `compacted` errors, per-context settings."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from groundhog_mcp import CompactedError, ContextState, StateManager, StateValidationError
from groundhog_mcp.store import Retention, SQLiteStore


def _manager(path: Path, **retention: object) -> StateManager:
    return StateManager(SQLiteStore(path, retention=Retention(**retention)))  # type: ignore[arg-type]


async def test_keep_revisions_prunes_history_and_old_diffs(db_path: Path) -> None:
    manager = _manager(db_path, keep_revisions=10)
    await manager.start()
    try:
        await manager.register("c", state=ContextState(data={"v": 0}))
        for v in range(1, 60):
            await manager.update("c", data={"v": v})
        entries = await manager.history("c", limit=100)
        revisions = [e.revision for e in entries]
        # Pruned at every 10th revision to the last keep_revisions: at revision 60, exactly 51..60.
        assert revisions == list(range(60, 50, -1))
        with pytest.raises(
            CompactedError, match=r"revision: compacted, revision 3 of context 'c' was pruned"
        ) as caught:
            await manager.read("c", 3)
        assert caught.value.oldest_available == 51
        with pytest.raises(CompactedError):
            await manager.diff("c", 3)
        with pytest.raises(CompactedError):
            await manager.rollback("c", 3)
        _, _, kept = await manager.read("c", 51)
        assert kept.data == {"v": 50}
        with sqlite3.connect(db_path) as conn:
            ops = [r[0] for r in conn.execute("SELECT op FROM changes ORDER BY sequence")]
        # The change rows of pruned revisions go, the registration stays: register + revisions 51..60.
        assert ops == ["register"] + ["update"] * 10
        (metrics,) = (await manager.collect_metrics(["c"]))[1]
        assert metrics.state_updates == 59
    finally:
        await manager.close()


async def test_per_context_settings_override_and_zero_keeps_all(db_path: Path) -> None:
    manager = _manager(db_path, keep_revisions=5)
    await manager.start()
    try:
        await manager.register("all", settings={"keep_revisions": 0})
        await manager.register("few", settings={"keep_revisions": 2})
        for v in range(30):
            await manager.update("all", data={"v": v})
            await manager.update("few", data={"v": v})
        assert len(await manager.history("all", limit=100)) == 31
        # keep_revisions=2 at revision 31: pruned at 30 to 29..30, then 31 written.
        assert [e.revision for e in await manager.history("few", limit=100)] == [31, 30, 29]
        with pytest.raises(StateValidationError, match=r"settings\.keep_revisions: must be an integer >= 0"):
            await manager.register("bad", settings={"keep_revisions": -1})
        with pytest.raises(StateValidationError, match=r"settings\.keep_days: must be a number of days > 0"):
            await manager.register("bad", settings={"keep_days": "week"})
    finally:
        await manager.close()


async def test_keep_days_drops_old_revisions(db_path: Path) -> None:
    manager = _manager(db_path, keep_revisions=0, keep_days=1)
    await manager.start()
    try:
        await manager.register("c")
        for v in range(1, 9):
            await manager.update("c", data={"v": v})
        with sqlite3.connect(db_path) as conn:  # age the first revisions by two days
            conn.execute("UPDATE history SET timestamp = '2000-01-01T00:00:00.000000Z' WHERE revision <= 5")
        await manager.update("c", data={"v": 10})  # revision 10: pruning is due
        revisions = [e.revision for e in await manager.history("c", limit=100)]
        assert revisions == list(range(10, 5, -1))
    finally:
        await manager.close()


async def test_storage_stays_bounded(db_path: Path) -> None:
    """2,000 writes of a 10 KB state with the default retention: the file stops growing.

    The full measurement (10,000 writes, file size) is benchmarks/bench_retention.py."""
    manager = _manager(db_path)
    await manager.start()
    try:
        await manager.register("c")
        sizes = []
        for i in range(2000):
            await manager.update("c", data={"blob": f"{i:08d}" + "abcdefghij" * 1000})
            if i in (999, 1999):
                sizes.append((await manager.store.status()).size_bytes or 0)
        assert sizes[1] < sizes[0] * 1.25, sizes
    finally:
        await manager.close()
