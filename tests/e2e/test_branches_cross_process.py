"""Branches and time across processes: two stdio servers on one SQLite file.

Path watches (``wait_for_change`` with ``paths``, a path subscription in each protocol era) hear of
a write to a child of the watched path made through the other process, and not of a write to a
sibling; ``get_state(as_of)`` reads revisions written by either process; a fork made through one
process merges back through the other.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import anyio
import mcp_types as types
import pytest

from tests.e2e.harness import Inbox, call_ok, mcp_client

pytestmark = pytest.mark.e2e

PATH_URI = "groundhog://contexts/shared/state?path=/data/plan"
MARKER_URI = "groundhog://contexts/marker/state"
INITIAL = {"data": {"plan": {"step": 0}, "log": []}}


async def test_path_watches_hear_only_their_path_from_another_process(
    database: Path, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    inbox = Inbox()
    async with (
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "a.err", env=sdk_env, message_handler=inbox) as a,
        mcp_client(database, mode="auto", stderr_path=tmp_path / "m.err", env=sdk_env) as modern,
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "b.err", env=sdk_env) as b,
    ):
        registered = await call_ok(b, "register_context", {"name": "shared", "state": INITIAL})
        marker = await call_ok(b, "register_context", {"name": "marker"})
        # Both watchers' processes have seen the registrations (which touch every path) first.
        for watcher in (a, modern):
            seen = {"after_sequence": marker["sequence"] - 1, "timeout": 10}
            assert (await call_ok(watcher, "wait_for_change", seen))["cursor"] == marker["sequence"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await a.subscribe_resource(PATH_URI)
        async with modern.listen(resource_subscriptions=[PATH_URI, MARKER_URI]) as subscription:
            await call_ok(b, "update_state", {"name": "shared", "merge_patch": {"log": ["sibling"]}})
            await call_ok(b, "update_state", {"name": "marker", "data": {"n": 1}})
            child = await call_ok(b, "update_state", {"name": "shared", "merge_patch": {"plan": {"step": 1}}})
            uris: list[str | None] = []
            with anyio.fail_after(10):
                while PATH_URI not in uris:
                    uris.append(getattr(await subscription.__anext__(), "uri", None))
        # In commit order: a notification for the sibling write would come before the marker's.
        assert uris[-2:] == [MARKER_URI, PATH_URI], uris
        # Notifications go out in commit order: had the sibling's been sent, it would be first.
        await inbox.wait_for_count(types.ResourceUpdatedNotification, 1)
        legacy = [str(n.params.uri) for n in inbox.notifications if isinstance(n, types.ResourceUpdatedNotification)]
        assert legacy == [PATH_URI]
        watched = await call_ok(
            a,
            "wait_for_change",
            {"contexts": ["shared"], "after_sequence": registered["sequence"], "timeout": 10, "paths": ["/data/plan"]},
        )
        assert [c["revision"] for c in watched["changes"]] == [child["revision"]]
        assert watched["cursor"] == child["sequence"]


async def test_time_travel_and_merge_back_across_processes(
    database: Path, tmp_path: Path, sdk_env: dict[str, str]
) -> None:
    async with (
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "a.err", env=sdk_env) as a,
        mcp_client(database, mode="legacy", stderr_path=tmp_path / "b.err", env=sdk_env) as b,
    ):
        await call_ok(a, "register_context", {"name": "shared", "state": INITIAL})
        writes = []
        for n, client in enumerate((b, a, b, a), start=1):
            writes.append(await call_ok(client, "update_state", {"name": "shared", "merge_patch": {"n": n}}))
        for write in writes:
            for client in (a, b):
                state = await call_ok(client, "get_state", {"name": "shared", "as_of": write["timestamp"]})
                assert state["revision"] == write["revision"], (write, state)
        since = await call_ok(a, "get_history", {"name": "shared", "since": writes[2]["timestamp"]})
        assert [r["revision"] for r in since["revisions"]] == [5, 4]

        await call_ok(a, "fork_context", {"name": "shared", "new_name": "try"})
        await call_ok(b, "update_state", {"name": "try", "merge_patch": {"log": ["tried"]}})
        await call_ok(a, "update_state", {"name": "shared", "merge_patch": {"plan": {"step": 9}}})
        merged = await call_ok(
            b,
            "merge_states",
            {"inputs": [{"context": "shared"}, {"context": "try"}], "strategy": "three_way", "target": "shared"},
        )
        assert merged["base"] == {"context": "shared", "revision": 5}
        assert merged["state"]["data"] == {"plan": {"step": 9}, "log": ["tried"], "n": 4}
