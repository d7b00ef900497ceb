"""Change notification across processes: two stdio servers on one SQLite file.

A change committed through server B reaches the subscribers and ``wait_for_change`` callers of
server A, on both protocol eras, in order and once each.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from tests.e2e.harness import Inbox, call_ok, mcp_client

pytestmark = pytest.mark.e2e

STATE_URI = "groundhog://contexts/shared/state"


async def test_legacy_subscriber_hears_writes_from_another_process(
    database: Path, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    inbox = Inbox()
    async with (
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "a.err", env=sdk_env, message_handler=inbox) as a,
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "b.err", env=sdk_env) as b,
    ):
        await call_ok(b, "register_context", {"name": "shared"})
        # A learns of the registration made through B (list_changed crosses processes too).
        await inbox.wait_for_count(types.ResourceListChangedNotification, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await a.subscribe_resource(STATE_URI)
        for n in range(1, 6):
            await call_ok(b, "update_state", {"name": "shared", "data": {"n": n}, "expected_revision": n})
        await inbox.wait_for_count(types.ResourceUpdatedNotification, 5)
        uris = [str(m.params.uri) for m in inbox.notifications if isinstance(m, types.ResourceUpdatedNotification)]
        assert uris == [STATE_URI] * 5
        state = await call_ok(a, "get_state", {"name": "shared"})
        assert state["revision"] == 6 and state["state"]["data"] == {"n": 5}


async def test_modern_listener_hears_writes_from_another_process(
    database: Path, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    async with (
        mcp_client(database, mode="auto", stderr_path=tmp_path / "a.err", env=sdk_env) as a,
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "b.err", env=sdk_env) as b,
    ):
        await call_ok(b, "register_context", {"name": "shared"})
        async with a.listen(resource_subscriptions=[STATE_URI]) as subscription:
            await call_ok(b, "update_state", {"name": "shared", "data": {"n": 1}})
            with anyio.fail_after(10):
                event = await subscription.__anext__()
        assert type(event).__name__ == "ResourceUpdated" and event.uri == STATE_URI  # type: ignore[attr-defined]


async def test_wait_for_change_sees_another_process_in_order(
    database: Path, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    async with (
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "a.err", env=sdk_env) as a,
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "b.err", env=sdk_env) as b,
    ):
        registered = await call_ok(b, "register_context", {"name": "shared"})
        cursor = registered["sequence"]
        seen: list[int] = []

        async def watch() -> None:
            nonlocal cursor
            while len(seen) < 20:
                result = await call_ok(
                    a, "wait_for_change", {"contexts": ["shared"], "after_sequence": cursor, "timeout": 10}
                )
                assert result["timed_out"] is False, result
                seen.extend(c["revision"] for c in result["changes"])
                cursor = result["cursor"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for n in range(20):
                await call_ok(b, "update_state", {"name": "shared", "data": {"n": n}})
        assert seen == list(range(2, 22))  # every change once, in order
        empty = await call_ok(a, "wait_for_change", {"after_sequence": cursor, "timeout": 0.2})
        assert empty == {"changes": [], "cursor": cursor, "timed_out": True}
