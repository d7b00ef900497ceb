"""``groundhog-mcp rotate-key``, run as the real console script: rotation to a new key, an
interrupted rotation (kill -9) that resumes, encrypting a plaintext database and decrypting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from groundhog_mcp import ContextState
from groundhog_mcp.security.crypto import generate_key
from groundhog_mcp.service.events import Event
from tests.e2e.harness import call_ok, mcp_client
from tests.security.encryption_helpers import (
    SCRIPT,
    env_with,
    key_id,
    key_ids_in_use,
    manager_for,
    run,
    sealed_counts,
)

pytestmark = pytest.mark.anyio

MARKER = "OKAPI-41d2-MARKER"


async def _populate(database: Path, env: dict[str, str], *, updates: int) -> None:
    """States, history, change diffs, events and a dead letter, through the library."""
    async with manager_for(database, env) as manager:
        handlers = {"note": {"action": "set", "path": "/last", "value_from": "/text"}}
        await manager.register("a", state=ContextState(data={"secret": MARKER}), handlers=handlers)
        await manager.register(
            "b",
            state=ContextState(data={"secret": MARKER}),
            handlers={"count": {"plugin": "flaky-counter", "max_attempts": 1}},
        )
        for n in range(updates):
            await manager.update("a", data={"secret": MARKER, "n": n})
        # An unregistered context keeps its (last) state: sealed again for its final revision.
        await manager.register("gone", state=ContextState(data={"secret": MARKER}))
        await manager.unregister("gone")
        await manager.emit_event("a", Event(type="note", payload={"text": MARKER}))
        # A fresh idempotency key: the plugin counts attempts per key, per process.
        with pytest.raises(Exception, match="dead"):
            await manager.emit_event(
                "b", Event(type="count", payload={"fail_times": 1, "why": MARKER}, idempotency_key=str(uuid.uuid4()))
            )


def _export(env: dict[str, str], database: Path) -> list[dict[str, object]]:
    """Every record, decrypted (``export --plaintext``), without the header's time stamp."""
    out = run(env, "--database", str(database), "export", "--plaintext").stdout.decode()
    return [json.loads(line) for line in out.splitlines()][1:]


def _kill_after_batches(env: dict[str, str], database: Path, *, batches: int) -> int:
    """Start ``rotate-key`` with one row per batch and kill -9 it after ``batches`` progress lines.

    The progress lines outgrow the pipe, so the process blocks on stderr until it is read: it
    is still mid-way when it is killed. Returns how many progress lines it wrote.
    """
    process = subprocess.Popen(
        [SCRIPT, "--database", str(database), "rotate-key", "--batch-size", "1"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env=env,
    )
    assert process.stderr is not None
    seen = 0
    try:
        for raw in process.stderr:
            if raw.startswith(b"rotate-key: ") and b"(batch " in raw:
                seen += 1
                if seen == batches:
                    break
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    return seen


def _progress_lines(stderr: bytes) -> list[str]:
    return [line for line in stderr.decode().splitlines() if line.startswith("rotate-key: ") and "(batch " in line]


async def test_rotation_to_a_new_key(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    database = tmp_path / "db.sqlite"
    await _populate(database, env_with(tmp_path, encryption_key=old), updates=5)
    before = _export(env_with(tmp_path, encryption_key=old), database)
    assert set().union(*key_ids_in_use(database).values()) == {key_id(old)}

    # The new key alone cannot open it yet, and says which key it needs.
    refused = run(env_with(tmp_path, encryption_key=new), "--database", str(database), "contexts", "list", check=False)
    assert refused.returncode == 1 and f"encrypted with key id {key_id(old)}".encode() in refused.stderr

    rotating = env_with(tmp_path, encryption_key=new, encryption_old_keys=old)
    rotated = run(rotating, "--database", str(database), "rotate-key", "--batch-size", "3")
    progress = _progress_lines(rotated.stderr)
    assert any(line.startswith("rotate-key: history.snapshot: ") for line in progress), progress
    assert any(line.startswith("rotate-key: dead_letters.payload: 1/1 ") for line in progress), progress
    assert (
        f"every record is sealed with key id {key_id(new)}; key ids {key_id(old)} are no longer needed".encode()
        in rotated.stderr
    )

    assert set().union(*key_ids_in_use(database).values()) == {key_id(new)}
    only_new = env_with(tmp_path, encryption_key=new)
    assert _export(only_new, database) == before  # everything reads with the new key alone
    # ... and over the protocol: state, an old revision, the dead letter.
    async with mcp_client(database, mode="legacy", stderr_path=tmp_path / "server.stderr", env=only_new) as client:
        assert (await call_ok(client, "get_state", {"name": "a", "revision": 1}))["state"]["data"] == {"secret": MARKER}
        (letter,) = (await call_ok(client, "list_dead_letters", {}))["dead_letters"]
        assert letter["payload"]["why"] == MARKER
        await call_ok(client, "update_state", {"name": "a", "merge_patch": {"data": {"after": 1}}})
    refused = run(env_with(tmp_path, encryption_key=old), "--database", str(database), "contexts", "list", check=False)
    assert refused.returncode == 1 and f"encrypted with key id {key_id(new)}".encode() in refused.stderr

    # Running it again finds nothing to do.
    again = run(only_new, "--database", str(database), "rotate-key")
    assert _progress_lines(again.stderr) == [] and b"rotate-key: done" in again.stderr


async def test_interrupted_rotation_resumes(tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    database = tmp_path / "db.sqlite"
    # keep_revisions=0 keeps every revision: ~1,800 rows to rotate one by one.
    await _populate(database, env_with(tmp_path, encryption_key=old, keep_revisions="0"), updates=900)
    before = _export(env_with(tmp_path, encryption_key=old), database)
    rotating = env_with(tmp_path, encryption_key=new, encryption_old_keys=old)

    assert _kill_after_batches(rotating, database, batches=3) == 3
    counts = sealed_counts(database)
    rotated = sum(per_key.get(key_id(new), 0) for per_key in counts.values())
    stale = sum(per_key.get(key_id(old), 0) for per_key in counts.values())
    # Killed mid-way: both keys in use. It may have run a few batches past the third line before the
    # kill, but never to the end: ~1,800 progress lines (~140 KB) do not fit in a 64 KiB pipe nobody reads.
    assert rotated >= 3 and stale > 500, counts
    # Meanwhile the database serves with the new key plus the old one for reading.
    assert _export(rotating, database) == before

    # The second run takes its keys from files (TOML / GROUNDHOG_*_FILE) instead of the environment.
    (tmp_path / "new.key").write_text(f"{new}\n")
    (tmp_path / "old.keys").write_text(f"# retired 2026-11\n{old}\n")
    from_files = env_with(
        tmp_path, encryption_key_file=str(tmp_path / "new.key"), encryption_old_keys_file=str(tmp_path / "old.keys")
    )
    resumed = run(from_files, "--database", str(database), "rotate-key", "--batch-size", "200")
    progress = _progress_lines(resumed.stderr)
    # Each column's first progress line says how many of its rows this run found to do: only the stale ones.
    pending: dict[str, int] = {}
    for line in progress:
        column, counted = line.split(": ")[1], int(line.split(": ")[2].split("/")[1].split()[0])
        pending.setdefault(column, counted)
    assert sum(pending.values()) == stale, (pending, stale)
    assert set().union(*key_ids_in_use(database).values()) == {key_id(new)}
    assert _export(env_with(tmp_path, encryption_key=new), database) == before


async def test_encrypt_a_plaintext_database_then_decrypt_it(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    await _populate(database, env_with(tmp_path), updates=3)
    plain = env_with(tmp_path)
    before = _export(plain, database)
    assert MARKER.encode() in database.read_bytes()

    key = generate_key()
    keyed = env_with(tmp_path, encryption_key=key)
    run(keyed, "--database", str(database), "rotate-key")
    assert set().union(*key_ids_in_use(database).values()) == {key_id(key)}
    assert MARKER.encode() not in database.read_bytes()  # secure_delete: no stale plaintext either
    assert not Path(f"{database}-wal").exists() or MARKER.encode() not in Path(f"{database}-wal").read_bytes()
    assert _export(keyed, database) == before
    refused = run(plain, "--database", str(database), "contexts", "list", check=False)
    assert refused.returncode == 1 and b"no encryption key is configured" in refused.stderr

    # A current key is required to rotate (old keys alone are refused) ...
    only_old = env_with(tmp_path, encryption_old_keys=key)
    refused = run(only_old, "--database", str(database), "rotate-key", check=False)
    assert refused.returncode == 1 and b"rotate-key --decrypt" in refused.stderr
    # ... unless decrypting: every key only reads, every record is written as plaintext.
    decrypted = run(only_old, "--database", str(database), "rotate-key", "--decrypt")
    assert b"every record is plaintext" in decrypted.stderr
    assert set().union(*key_ids_in_use(database).values()) == {None}
    assert _export(plain, database) == before  # opens without any key again
