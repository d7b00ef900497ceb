"""State format migration behaves the same on every backend: reads upcast without writing, a dry run
and a failing batch change nothing (paging past 500 contexts is covered on SQLite in tests/service)."""

from __future__ import annotations

import pytest

from groundhog_mcp import ContextState, MigrationError, StateManager
from tests.conformance.conftest import Backend
from tests.service.test_migration import WITH_PLUGIN, v1, v3

COUNT = 60


async def stored_data(backend: Backend) -> object:
    """The fingerprint without SQLite's shared-memory index, which readers update."""
    found = await backend.fingerprint()
    return {k: v for k, v in found.items() if not k.endswith("-shm")} if backend.path is not None else found


async def test_migration_on_every_backend(backend: Backend) -> None:
    manager = StateManager(backend.store())
    await manager.start()
    try:
        for i in range(COUNT):
            await manager.register(
                f"t-{i:03d}", settings={"state_format": WITH_PLUGIN}, state=ContextState(data=v1(i, email=i != 55))
            )
        before = await stored_data(backend)
        assert (await manager.read("t-001"))[2].data == v3(1)
        dry = await manager.migrate(prefix="t-", dry_run=True, to_version="2.0.0")
        assert dry.migrated == COUNT
        with pytest.raises(MigrationError, match=r"context 't-055', step 2.0.0 -> 3.0.0: ValueError"):
            await manager.migrate(prefix="t-")
        assert await stored_data(backend) == before
        await manager.update(
            "t-055", data={"summary": "fixed", "owner_name": "o", "owner_email": "e", "priority": "low"}
        )
        report = await manager.migrate(prefix="t-")
        assert (report.matched, report.migrated, report.unchanged) == (COUNT, COUNT - 1, 1)
        stored = await manager.get("t-059")
        assert (stored.revision, stored.state.version, stored.state.data) == (2, "3.0.0", v3(59))
        old = await manager.store.read_revision(stored.id, 1)
        assert old is not None and not isinstance(old, int) and old.state.data == v1(59)
    finally:
        await manager.close()
