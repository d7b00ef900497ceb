"""A lease held by a server process that is killed -9 frees at its expiry: no process has to
release it, no timer has to run; the dead holder's token stays refused. Two server processes on
one SQLite file, and on one PostgreSQL database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conformance.conftest import MakeBackend, make_backend  # noqa: F401 - the fixture
from tests.e2e.harness import RawServer, raw_result_text

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_lease_of_a_killed_process_frees_at_expiry(
    make_backend: MakeBackend,  # noqa: F811
    kind: str,
    tmp_path: Path,
    raw_env: dict[str, str],
) -> None:
    backend = await make_backend(kind)  # type: ignore[arg-type]
    if backend.path is not None:
        backend.path.parent.mkdir(parents=True)
    # The harness passes it on as --database: a file, or a URL as it is.
    database: Any = backend.path if backend.path is not None else backend.database
    holder = await RawServer.start(database, env=raw_env, stderr_path=tmp_path / "holder.err")
    other = await RawServer.start(database, env=raw_env, stderr_path=tmp_path / "other.err")
    try:
        await holder.initialize()
        await other.initialize()
        await holder.call_ok("register_context", {"name": "plan", "state": {"data": {"step": 1}}})
        taken = await holder.call_ok("lease", {"name": "plan", "action": "take", "ttl_seconds": 2, "holder": "doomed"})
        holder.kill()
        await holder.wait()
        refused = await other.call_tool("update_state", {"name": "plan", "data": {"step": 2}})
        assert refused["isError"] and refused["structuredContent"]["error"]["holder"] == "local/doomed"
        assert "is leased by 'local/doomed' until" in raw_result_text(refused)
        # Freed by the expiry (2 s): had it stayed held, the 20 s wait would end in a leased error.
        got = await other.call_ok("lease", {"name": "plan", "action": "take", "wait_seconds": 20})
        assert got["token"] == taken["token"] + 1
        stale = await other.call_tool(
            "update_state", {"name": "plan", "data": {"step": 2}, "lease_token": taken["token"]}
        )
        assert stale["isError"] and stale["structuredContent"]["error"]["code"] == "leased"
        written = await other.call_ok(
            "update_state", {"name": "plan", "data": {"step": 2}, "lease_token": got["token"], "release_lease": True}
        )
        assert written["revision"] == 2
        assert (await other.call_ok("get_context", {"name": "plan"}))["lease"] is None
        assert await other.close() == 0
    finally:
        await holder.ensure_dead()
        await other.ensure_dead()
