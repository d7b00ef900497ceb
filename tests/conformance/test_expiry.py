"""Context expiry on every backend: by time and by idleness, across a restart; an expired context
reads exactly as a missing one; its removal is recorded like an unregister, on access, in the
write path, on registration of its name, and by a sweep."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from groundhog_mcp import StateManager
from groundhog_mcp.errors import NotFoundError, StateValidationError
from groundhog_mcp.models import Principal, format_timestamp, utcnow
from groundhog_mcp.service import WriteResult

from .conftest import Backend


async def _error(manager: StateManager, name: str) -> tuple[str, str, bool]:
    with pytest.raises(NotFoundError) as missing:
        await manager.get(name)
    return type(missing.value).__name__, str(missing.value), missing.value.retryable


async def test_expiry_by_time_across_a_restart(backend: Backend) -> None:
    first = StateManager(backend.store())
    await first.start()
    try:
        registered = await first.register("scratch", settings={"ttl_seconds": 1.5, "keep_revisions": 5})
        await first.register("kept")
        assert isinstance(registered, WriteResult)
        expires_at = registered.context.settings["expires_at"]
        assert registered.context.settings == {"keep_revisions": 5, "expires_at": expires_at}  # ttl became a time
        assert [c.name for c in (await first.list()).contexts] == ["kept", "scratch"]
    finally:
        await first.close()
    await asyncio.sleep(1.6)
    second = StateManager(backend.store())  # after a restart, no process ran meanwhile
    await second.start()
    try:
        assert [c.name for c in (await second.list()).contexts] == ["kept"]  # never listed once expired
        missing = await _error(second, "never-was")
        assert await _error(second, "scratch") == (missing[0], missing[1].replace("never-was", "scratch"), missing[2])
        assert await second.store.get("default", "scratch") is None
        changes = await second.changes_after(registered.change.sequence)
        assert [(c.name, c.op, c.revision, c.actor) for c in changes] == [
            ("kept", "register", 1, "local"),
            ("scratch", "expired", 2, "local"),  # recorded once, by the read that missed it
        ]
        await _error(second, "scratch")
        assert len(await second.changes_after(registered.change.sequence)) == 2
        again = await second.register("scratch")
        assert isinstance(again, WriteResult) and again.context.revision == 3  # revisions go on
    finally:
        await second.close()


async def test_idle_expiry_is_reset_by_writes(manager: StateManager) -> None:
    registered = await manager.register("session", settings={"expire_after_idle_seconds": 1.5})
    assert isinstance(registered, WriteResult)
    for n in range(3):  # 1.8 s in all, never 1.5 s without a write
        await asyncio.sleep(0.6)
        await manager.update("session", data={"n": n})
    # A lease is not a write: it does not keep the context alive.
    await manager.take_lease("session", ttl_seconds=5)
    assert (await manager.get("session")).revision == 4
    await asyncio.sleep(1.6)
    with pytest.raises(NotFoundError, match=r"^name: no context named 'session'$"):
        await manager.update("session", data={"n": 9})  # the write path records the removal
    ops = [c.op for c in await manager.changes_after(0)]
    assert ops == ["register", "update", "update", "update", "lease_take", "expired"]
    kept = await manager.store.history(registered.context.id, before=None, limit=10)  # history stays
    assert [(e.revision, e.op) for e in kept] == [(4, "update"), (3, "update"), (2, "update"), (1, "register")]


async def test_a_fixed_time_and_the_sweep(manager: StateManager) -> None:
    soon = format_timestamp(utcnow() + timedelta(seconds=1.5))
    await manager.register("a", settings={"expires_at": soon})
    tenant = manager.with_principal(Principal(name="other", namespace="tenant-b"))
    await tenant.register("b", settings={"ttl_seconds": 1.5})
    await manager.register("stays", settings={"expire_after_idle_seconds": 3600})
    await asyncio.sleep(1.6)
    removed = await manager.store.sweep(limit=10)
    assert sorted((c.namespace, c.name, c.op, c.actor) for c in removed) == [
        ("default", "a", "expired", "expiry"),
        ("tenant-b", "b", "expired", "expiry"),
    ]
    assert await manager.store.sweep(limit=10) == []
    assert [c.name for c in (await manager.list()).contexts] == ["stays"]
    assert [c.name for c in (await tenant.list()).contexts] == []
    # A tenant's read never records another tenant's removal, nor learns of it.
    assert [c.name for c in await tenant.changes_after(0)] == ["b", "b"]


async def test_expiry_settings_are_checked(manager: StateManager) -> None:
    past = format_timestamp(utcnow() - timedelta(seconds=1))
    cases = {
        "settings.ttl_seconds: must be a number of seconds > 0 and <= 3.1536e+09": {"ttl_seconds": 0},
        "settings.expire_after_idle_seconds: must be a number of seconds > 0 and <= 3.1536e+09": {
            "expire_after_idle_seconds": True
        },
        "settings.expires_at: must be in the future": {"expires_at": past},
        "settings.expires_at: must be an RFC 3339 date-time with a time zone, like 2026-01-31T12:00:00Z": {
            "expires_at": "tomorrow"
        },
        "settings.ttl_seconds: give expires_at or ttl_seconds, not both": {"expires_at": past, "ttl_seconds": 5},
    }
    for message, settings in cases.items():
        with pytest.raises(StateValidationError) as refused:
            await manager.register("c", settings=settings)
        assert str(refused.value) == message
    assert (await manager.list()).contexts == []
