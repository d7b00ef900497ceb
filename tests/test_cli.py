"""The ``groundhog-mcp`` maintenance commands: in the test process through ``main(argv)``
(tests/cli_in_process.py), and as the real console script where the process is what is tested
(the exit on a corrupt file) or a command prints its JSON to the ``sys.stdout`` bound at import."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

import anyio
import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store.migrations import MIGRATIONS
from tests.cli_in_process import run_cli
from tests.e2e.harness import server_command


def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The real console script (``GROUNDHOG_E2E_COMMAND`` or the venv's) as its own process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    result = subprocess.run(
        [server_command(), *args], input=stdin, capture_output=True, text=True, timeout=60, env=env, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def populated(db_path: Path) -> Path:
    async def fill() -> None:
        async with StateManager.open(db_path) as manager:
            await manager.register("alpha", state=ContextState(data={"n": 1}))
            await manager.update("alpha", data={"n": 2})
            await manager.register("beta", metadata={"team": "b"})

    anyio.run(fill)
    return db_path


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("groundhog-mcp ")
    assert "export" in run_cli("--help").stdout


def test_contexts_list_and_show(populated: Path) -> None:
    lines = run_cli("--database", str(populated), "contexts", "list").stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [["alpha", "revision 2"], ["beta", "revision 1"]]
    shown = json.loads(run("contexts", "show", "alpha", "--database", str(populated)).stdout)
    assert shown["state"]["data"] == {"n": 2} and shown["revision"] == 2
    missing = run_cli("--database", str(populated), "contexts", "show", "nope", check=False)
    assert missing.returncode == 1 and "no context named 'nope'" in missing.stderr


def test_export_import_round_trip(populated: Path, tmp_path: Path) -> None:
    exported = tmp_path / "export.jsonl"
    run_cli("--database", str(populated), "export", "-o", str(exported))
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert records[0]["type"] == "header"
    assert sum(r["type"] == "revision" for r in records) == 3
    copy = tmp_path / "copy.sqlite"
    run_cli("--database", str(copy), "import", str(exported))
    again = run_cli("--database", str(copy), "export").stdout.splitlines()
    assert [json.loads(line) for line in again][1:] == records[1:]
    refused = run_cli("--database", str(copy), "import", str(exported), check=False)
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "header"}\nnot json\n')
    broken = run_cli("--database", str(tmp_path / "other.sqlite"), "import", str(bad), check=False)
    assert broken.returncode == 1 and "line 2: not JSON" in broken.stderr


def test_backup(populated: Path, tmp_path: Path) -> None:
    destination = tmp_path / "backup.sqlite"
    run_cli("--database", str(populated), "backup", str(destination))
    with sqlite3.connect(destination) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert [r[0] for r in conn.execute("SELECT name FROM contexts ORDER BY name")] == ["alpha", "beta"]


def test_db_status_and_migrate(populated: Path, tmp_path: Path) -> None:
    status = json.loads(run("--database", str(populated), "db", "status").stdout)
    assert status["backend"] == "sqlite" and status["pending_migrations"] == [] and status["contexts"] == 2
    migrated = json.loads(run("--database", str(populated), "db", "migrate").stdout)
    assert migrated["applied"] == []
    fresh = tmp_path / "fresh.sqlite"
    applied = json.loads(run("--database", str(fresh), "db", "migrate").stdout)["applied"]
    assert applied == [m.version for m in MIGRATIONS]
    missing = run_cli("--database", str(tmp_path / "none.sqlite"), "db", "status", check=False)
    assert missing.returncode == 1 and "no database at" in missing.stderr


def test_serve_refuses_a_corrupt_database_with_a_clear_message(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"garbage" * 1000)
    before = corrupt.read_bytes()
    result = run("--database", str(corrupt), check=False, stdin="")
    assert result.returncode == 1
    assert "not a usable SQLite database" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
    assert corrupt.read_bytes() == before


def test_bad_flag_value_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("--database", str(tmp_path / "x.sqlite"), "--busy-timeout-ms", "-5", check=False)
    assert result.returncode == 2 and "busy_timeout_ms" in result.stderr
