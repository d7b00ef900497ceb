"""Shared by the encryption tests: keys, environments, the maintenance commands and file greps."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path

from groundhog_mcp.app import load_settings, open_manager
from groundhog_mcp.security.crypto import parse_key
from groundhog_mcp.service import StateManager
from tests.cli_in_process import run_cli
from tests.e2e.harness import server_command, server_env

# The CLI under test: GROUNDHOG_E2E_COMMAND when set (tests/e2e/harness.py), else the venv's script.
SCRIPT = server_command()

SEALED_COLUMNS = (
    ("contexts", "state"),
    ("history", "snapshot"),
    ("changes", "patch"),
    ("events", "payload"),
    ("dead_letters", "payload"),
    ("dead_letters", "last_error"),
)


def key_id(key: str) -> str:
    return parse_key(key, source="test").key_id


def env_with(home: Path, **settings: str) -> dict[str, str]:
    """A private environment (no developer GROUNDHOG_* settings) plus ``GROUNDHOG_<NAME>`` values."""
    env = server_env(home, os.environ)
    env.update({f"GROUNDHOG_{name.upper()}": value for name, value in settings.items()})
    return env


def run(env: Mapping[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """``groundhog-mcp ARGS`` with ``env``, in the test process (tests/cli_in_process.py); stdout
    and stderr as bytes (to grep them for a marker)."""
    result = run_cli(*args, env=env, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return subprocess.CompletedProcess(result.args, result.returncode, result.stdout.encode(), result.stderr.encode())


def run_process(env: Mapping[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """The console script as its own process: for ``db status`` and ``contexts show``, whose JSON
    goes to the ``sys.stdout`` that ``groundhog_mcp.cli`` bound when it was imported."""
    result = subprocess.run([SCRIPT, *args], capture_output=True, timeout=120, env=dict(env), check=False)
    if check:
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


@contextlib.asynccontextmanager
async def manager_for(database: Path, env: Mapping[str, str]) -> AsyncGenerator[StateManager]:
    """A started library state manager configured exactly as the server would be from ``env``."""
    manager = open_manager(load_settings({"database": str(database)}, env=env))
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def database_files(database: Path) -> dict[str, bytes]:
    """The database file and its -wal / -shm companions, as they are on disk now."""
    files: dict[str, bytes] = {}
    for suffix in ("", "-wal", "-shm"):
        path = Path(f"{database}{suffix}")
        if path.exists():
            files[path.name] = path.read_bytes()
    return files


def key_ids_in_use(database: Path) -> dict[str, set[str | None]]:
    """Per sealed column, the key ids of its values (None: a plaintext value), read with sqlite3."""
    used: dict[str, set[str | None]] = {}
    with contextlib.closing(sqlite3.connect(database)) as conn:
        for table, column in SEALED_COLUMNS:
            ids: set[str | None] = set()
            for (value,) in conn.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):
                sealed = isinstance(value, bytes) and value[:4] == b"GHE1"
                ids.add(value[4:8].hex() if sealed else None)
            used[f"{table}.{column}"] = ids
    return used


def sealed_counts(database: Path) -> dict[str, dict[str | None, int]]:
    """Per sealed column, how many values each key id seals (None: plaintext values)."""
    counts: dict[str, dict[str | None, int]] = {}
    with contextlib.closing(sqlite3.connect(database)) as conn:
        for table, column in SEALED_COLUMNS:
            per_key: dict[str | None, int] = {}
            for (value,) in conn.execute(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):
                sealed = isinstance(value, bytes) and value[:4] == b"GHE1"
                key = value[4:8].hex() if sealed else None
                per_key[key] = per_key.get(key, 0) + 1
            counts[f"{table}.{column}"] = per_key
    return counts
