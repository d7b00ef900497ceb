"""The bound on denial rows: one row per principal per window, counts carried, none lost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp import NotFoundError, StateManager
from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.service import Caller
from groundhog_mcp.service.audit import DENIAL_SUMMARY_OPERATION, DenialLog
from groundhog_mcp.store import SQLiteStore
from groundhog_mcp.store.base import AUDIT_DENIED, AuditEntry, AuditQuery, AuditRecord


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def denial(principal: str, operation: str = "get_state", namespace: str = "default") -> AuditEntry:
    return AuditEntry(
        principal=principal, namespace=namespace, operation=operation, outcome=AUDIT_DENIED, detail="access: no"
    )


def test_first_denial_of_a_window_is_itemized_the_rest_counted_and_carried() -> None:
    clock = Clock()
    log = DenialLog(60.0, clock=clock)
    assert log.admit(denial("m")) == denial("m")
    for operation in ("get_state", "get_state", "update_state"):
        assert log.admit(denial("m", operation)) is None
    assert log.admit(denial("m", namespace="other")) == denial("m", namespace="other")  # another principal
    assert log.pending == 3
    clock.now += 59.9
    assert log.due() == [] and log.pending == 3  # the window has not passed yet
    clock.now += 0.1
    row = log.admit(denial("m", "diff_states"))  # the next window's first denial carries the count
    assert row is not None and row.operation == "diff_states" and row.detail is not None
    assert row.detail.startswith("access: no; and 3 denied requests not itemized since ")
    assert row.detail.endswith("(get_state 2, update_state 1)")
    assert log.pending == 0


def test_a_count_goes_out_as_a_summary_when_the_window_passes_or_at_shutdown() -> None:
    clock = Clock()
    log = DenialLog(60.0, clock=clock)
    log.admit(denial("m"))
    log.admit(denial("m"))
    log.admit(denial("n"))
    log.admit(denial("n"), itemize=False)  # a denial that must not touch the store now
    clock.now += 60
    rows = log.due()
    assert [(r.principal, r.operation, r.context, r.outcome) for r in rows] == [
        ("m", DENIAL_SUMMARY_OPERATION, None, AUDIT_DENIED),
        ("n", DENIAL_SUMMARY_OPERATION, None, AUDIT_DENIED),
    ]
    assert all(r.detail is not None and r.detail.endswith("(get_state 1)") for r in rows)
    # A summary row is the principal's row of the new window: the next denial is counted...
    assert log.admit(denial("m")) is None
    assert log.due() == []
    # ...and a clean shutdown writes it whatever the window.
    [last] = log.due(everything=True)
    assert last.detail is not None and last.detail.startswith("1 denied request not itemized since ")
    assert log.due(everything=True) == [] and log.pending == 0


def test_summaries_are_bounded_and_idle_principals_forgotten() -> None:
    clock = Clock()
    log = DenialLog(60.0, clock=clock)
    log.admit(denial("m"))
    for i in range(40):
        log.admit(denial("m", f"operation_{i:02d}_{'x' * 40}"))
    clock.now += 60
    [row] = log.due()
    assert row.detail is not None and len(row.detail) <= 500 and row.detail.startswith("40 denied requests")
    clock.now += 60
    assert log.due() == []
    assert log.admit(denial("m")) is not None  # forgotten while idle: itemized again


class SummaryWatcher:
    """A real store that sets ``written`` once a denial summary row has been appended."""

    def __init__(self, inner: SQLiteStore) -> None:
        self._inner = inner
        self.written = asyncio.Event()

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)

    async def append_audit(self, entry: AuditEntry) -> AuditRecord | None:
        record = await self._inner.append_audit(entry)
        if entry.operation == DENIAL_SUMMARY_OPERATION:
            self.written.set()
        return record


async def test_a_running_manager_writes_the_count_once_the_minute_has_passed(db_path: Path) -> None:
    store = SummaryWatcher(SQLiteStore(db_path, audit_signer=AuditKey("k" * 32)))
    manager = StateManager(store)  # type: ignore[arg-type]
    clock = Clock()
    manager.denials = DenialLog(60.0, clock=clock)
    manager.denial_summary_interval = 0.01
    await manager.start()
    try:
        reader = manager.with_principal(Principal("r", "default", grants=(Grant.parse("read:open."),)))
        for _ in range(3):
            with pytest.raises(NotFoundError):
                await reader.get("closed")
        assert not store.written.is_set()
        clock.now += 60  # the minute is over: the next look writes the count of the two not itemized
        async with asyncio.timeout(5):
            await store.written.wait()
        rows = await store.read_audit(AuditQuery(limit=10))
        assert [(r.principal, r.operation, r.context) for r in rows] == [
            ("r", "read", "closed"),
            ("r", DENIAL_SUMMARY_OPERATION, None),
        ]
        assert rows[1].detail is not None and rows[1].detail.endswith("(read 2)")
    finally:
        await manager.close()


async def test_the_caller_is_one_explicit_value_each_view_audits_its_own_request(db_path: Path) -> None:
    """Request id and operation come from the view's Caller, not from context variables: two
    requests served at once on one manager each find their own id (and operation) in their rows."""
    manager = StateManager(SQLiteStore(db_path, audit_signer=AuditKey("k" * 32)))
    manager.denials.window = 0.0  # every denial is itemized
    await manager.start()
    try:
        writer = manager.with_caller(Caller(Principal(), request_id="req-w", operation="update_state"))
        reader = manager.with_caller(
            Caller(Principal("r", "default", grants=(Grant.parse("read:open."),)), "req-r", "get_state")
        )

        async def denied() -> None:
            with pytest.raises(NotFoundError):
                await reader.get("closed")

        await asyncio.gather(writer.update("notes", data={"n": 1}, expected_revision=0), denied())
        rows = await manager.store.read_audit(AuditQuery(limit=10))
        assert sorted((r.principal, r.operation, r.context, r.request_id) for r in rows) == [
            ("local", "register", "notes", "req-w"),
            ("r", "get_state", "closed", "req-r"),
        ]
        assert manager.caller == Caller(Principal())  # the views never change the manager's own
    finally:
        await manager.close()
