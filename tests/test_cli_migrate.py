"""``groundhog-mcp migrate-context``, through ``main(argv)`` in the test process (tests/cli_in_process.py)."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from groundhog_mcp import ContextState, SQLiteStore, StateManager
from tests.cli_in_process import run_cli as run
from tests.service.test_migration import DECLARATIVE, WITH_PLUGIN, dump, v1, v3

COUNT = 40


@pytest.fixture
def tasks(db_path: Path) -> Path:
    async def fill() -> None:
        manager = StateManager(SQLiteStore(db_path, synchronous="NORMAL"))
        await manager.start()
        try:
            for i in range(COUNT):
                await manager.register(
                    f"task-{i:02d}", settings={"state_format": DECLARATIVE}, state=ContextState(data=v1(i))
                )
            await manager.register(
                "zz-broken", settings={"state_format": WITH_PLUGIN}, state=ContextState(data=v1(3, email=False))
            )
        finally:
            await manager.close()

    anyio.run(fill)
    return db_path


async def _read(database: Path, name: str) -> tuple[int, str | None, object]:
    async with StateManager.open(database) as manager:
        context = await manager.get(name)
    return context.revision, context.state.version, context.state.data


def records(stdout: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_dry_run_prints_the_diff_per_context_and_writes_nothing(tasks: Path) -> None:
    before = dump(tasks)
    result = run("--database", str(tasks), "migrate-context", "--prefix", "task-", "--dry-run")
    lines = records(result.stdout)
    contexts = [r for r in lines if r["type"] == "context"]
    assert len(contexts) == COUNT and lines[-1]["type"] == "summary"
    assert lines[-1]["dry_run"] is True and lines[-1]["migrated"] == COUNT and lines[-1]["matched"] == COUNT
    assert contexts[5]["name"] == "task-05" and contexts[5]["from_version"] == "1.0.0"
    assert {"op": "add", "path": "/data/owner_email", "value": "o5@example.com"} in contexts[5]["patch"]  # type: ignore[operator]
    assert f"would migrate {COUNT} of {COUNT} contexts" in result.stderr
    assert dump(tasks) == before


def test_migrate_shows_progress_on_stderr_and_rewrites(tasks: Path) -> None:
    result = run("--database", str(tasks), "migrate-context", "--prefix", "task-")
    progress = [line for line in result.stderr.splitlines() if line.startswith("migrate-context: migrated ")]
    assert len(progress) >= 10, result.stderr
    assert progress[-1] == f"migrate-context: migrated {COUNT} of {COUNT} contexts"
    assert "migrate-context: checked 40 contexts, 40 to migrate" in result.stderr
    summary = records(result.stdout)[-1]
    assert (summary["dry_run"], summary["migrated"], summary["unchanged"]) == (False, COUNT, 0)
    assert anyio.run(_read, tasks, "task-09") == (2, "3.0.0", v3(9))
    one = run("--database", str(tasks), "migrate-context", "task-09")
    assert records(one.stdout)[-1]["unchanged"] == 1


def test_a_failing_upcaster_exits_1_naming_context_step_and_cause(tasks: Path) -> None:
    before = dump(tasks)
    result = run("--database", str(tasks), "migrate-context", "--prefix", "", check=False)
    assert result.returncode == 1
    assert (
        "migration: context 'zz-broken', step 2.0.0 -> 3.0.0: ValueError: owner 'owner 3' has no email" in result.stderr
    )
    assert result.stdout == ""
    assert dump(tasks) == before
    usage = run("--database", str(tasks), "migrate-context", check=False)
    assert usage.returncode == 1 and "give exactly one of name" in usage.stderr
