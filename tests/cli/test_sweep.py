"""``groundhog-mcp db sweep``: the removal of expired contexts, recorded now."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from groundhog_mcp import StateManager
from tests.cli_in_process import run_cli


async def test_sweep_records_the_removal_of_expired_contexts(tmp_path: Path) -> None:
    database = tmp_path / "g.sqlite"
    async with StateManager.open(database) as manager:
        await manager.register("scratch", settings={"ttl_seconds": 0.2})
        await manager.register("kept")
    await asyncio.sleep(0.3)
    done = run_cli("db", "sweep", "--database", str(database))
    assert json.loads(done.stdout) == {"expired": 1, "contexts": ["default/scratch"]}
    assert json.loads(run_cli("db", "sweep", "--database", str(database)).stdout)["expired"] == 0
    async with StateManager.open(database) as manager:
        assert [(c.name, c.op, c.actor) for c in await manager.changes_after(0)] == [
            ("scratch", "register", "local"),
            ("kept", "register", "local"),
            ("scratch", "expired", "expiry"),
        ]
