"""Encryption at rest on PostgreSQL: the real server, the real console script, a real schema.

A marker string goes into states, history, change diffs, event payloads and dead letters; it
must then be absent from every column of every table of the schema, read as text and (bytea
columns) as raw and as zlib-decompressed bytes — and present without a key, so the grep can fail.
Then: swapped ciphertexts fail with an integrity error; ``rotate-key`` rewrites everything in
batches and resumes after a kill; a wrong key is refused with nothing modified.
"""

from __future__ import annotations

import json
import os
import uuid
import zlib
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from groundhog_mcp import ContextState
from groundhog_mcp.app import load_settings, open_manager
from groundhog_mcp.errors import RecordIntegrityError
from groundhog_mcp.security.crypto import generate_key
from groundhog_mcp.service import StateManager
from groundhog_mcp.service.events import Event
from groundhog_mcp.store.base import SEALED_MAGIC
from tests.e2e.harness import call_error, call_ok
from tests.security.encryption_helpers import env_with, key_id, run, run_process
from tests.security.test_rotate_key import _kill_after_batches, _progress_lines

pytestmark = pytest.mark.anyio

POSTGRES_URL = os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARKER = "TAPIR-5e81-MARKER"
# (table, column holding sealed values) on PostgreSQL: see store/postgres.py _SEALED_COLUMNS.
SEALED = (
    ("contexts", "state_sealed"),
    ("history", "snapshot"),
    ("changes", "patch_sealed"),
    ("events", "payload_sealed"),
    ("dead_letters", "payload_sealed"),
    ("dead_letters", "last_error_sealed"),
)
PLAIN = (
    ("contexts", "state"),
    ("changes", "patch"),
    ("events", "payload"),
    ("dead_letters", "payload"),
    ("dead_letters", "last_error"),
)


@pytest.fixture
async def schema() -> AsyncGenerator[str]:
    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is unreachable ({exc})", pytrace=False)
    name = f"gh_enc_{uuid.uuid4().hex[:16]}"
    try:
        yield name
    finally:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
        await conn.close()


def _url(schema: str) -> str:
    return f"{POSTGRES_URL}?schema={schema}"


async def _manager(url: str, env: dict[str, str]) -> StateManager:
    manager = open_manager(load_settings({"database": url}, env=env))
    await manager.start()
    return manager


async def _sql(schema: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await conn.execute(f'SET search_path TO "{schema}"')
        cur = await conn.execute(query, params)
        return await cur.fetchall() if cur.description else []


async def _populate(url: str, env: dict[str, str], *, updates: int) -> None:
    """States, history, change diffs, an event, a dead letter and an unregistered context."""
    manager = await _manager(url, env)
    try:
        handlers = {"note": {"action": "set", "path": "/last", "value_from": "/text"}}
        await manager.register("a", state=ContextState(data={"secret": MARKER}), handlers=handlers)
        await manager.register(
            "b",
            state=ContextState(data={"secret": MARKER}),
            handlers={"count": {"plugin": "flaky-counter", "max_attempts": 1}},
        )
        for n in range(updates):
            await manager.update("a", data={"secret": MARKER, "n": n})
        await manager.register("gone", state=ContextState(data={"secret": MARKER}))
        await manager.unregister("gone")
        await manager.emit_event("a", Event(type="note", payload={"text": MARKER}))
        with pytest.raises(Exception, match="dead"):
            await manager.emit_event(
                "b", Event(type="count", payload={"fail_times": 1, "why": MARKER}, idempotency_key=str(uuid.uuid4()))
            )
        # Everything reads back decrypted through the library.
        assert (await manager.get("a")).state.data == {"secret": MARKER, "n": updates - 1, "last": MARKER}
        (letter,) = await manager.store.list_dead_letters(
            "default", name=None, after_id=0, limit=10, include_replayed=True
        )
        assert letter.payload["why"] == MARKER
    finally:
        await manager.close()


async def _raw_contents(schema: str) -> bytes:
    """Every column of every table of the schema as text, plus every bytea value raw and, where it
    is zlib data, decompressed (plaintext history snapshots are compressed)."""
    out: list[bytes] = []
    tables = [r[0] for r in await _sql(schema, "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,))]
    assert {"contexts", "history", "changes", "events", "dead_letters"} <= set(tables)
    for table in tables:
        columns = await _sql(
            schema,
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
            (schema, table),
        )
        for column, data_type in columns:
            for (value,) in await _sql(schema, f'SELECT "{column}"::text FROM "{table}"'):
                out.append((value or "").encode())
            if data_type == "bytea":
                for (value,) in await _sql(schema, f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL'):
                    blob = bytes(value)
                    out.append(blob)
                    if blob[:1] == b"\x78":
                        out.append(zlib.decompress(blob))
    return b"\n".join(out)


async def _key_ids(schema: str) -> set[str | None]:
    """The key ids of every stored value of every state-bearing column (None: a plaintext one)."""
    ids: set[str | None] = set()
    for table, column in SEALED:
        for (value,) in await _sql(schema, f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"):
            blob = bytes(value)
            ids.add(blob[4:8].hex() if blob[:4] == SEALED_MAGIC else None)
    for table, column in PLAIN:
        if await _sql(schema, f"SELECT 1 FROM {table} WHERE {column} IS NOT NULL LIMIT 1"):
            ids.add(None)
    return ids


async def _export(env: dict[str, str], url: str) -> list[dict[str, object]]:
    out = run(env, "--database", url, "export", "--plaintext").stdout.decode()
    return [json.loads(line) for line in out.splitlines()][1:]


@pytest.mark.parametrize("encrypted", [True, False], ids=["key", "no-key"])
async def test_no_plaintext_in_any_table(tmp_path: Path, schema: str, encrypted: bool) -> None:
    key = generate_key()
    env = env_with(tmp_path, **({"encryption_key": key} if encrypted else {}))
    url = _url(schema)
    await _populate(url, env, updates=3)
    contents = await _raw_contents(schema)
    export = run(env, "--database", url, "export", check=False)
    backup = run(env, "--database", url, "backup", str(tmp_path / "backup.jsonl"), check=False)
    if encrypted:
        assert MARKER.encode() not in contents, "plaintext marker in a table"
        assert await _key_ids(schema) == {key_id(key)}
        status = json.loads(run_process(env, "--database", url, "db", "status").stdout)
        assert status["extra"]["encryption_key_ids"] == [key_id(key)]
        assert export.returncode == 1 and export.stdout == b"" and b"pass --plaintext" in export.stderr
        # A PostgreSQL backup is a JSON export: with a key it would be plaintext, so it is refused.
        assert backup.returncode == 1 and b"pg_dump" in backup.stderr
        assert not (tmp_path / "backup.jsonl").exists()
        explicit = run(env, "--database", url, "export", "--plaintext")
        assert MARKER.encode() in explicit.stdout
        assert MARKER.encode() not in export.stderr + backup.stderr + explicit.stderr
    else:
        assert MARKER.encode() in contents, (
            "without a key the marker must be in the tables (else the grep proves nothing)"
        )
        assert await _key_ids(schema) == {None}
        assert export.returncode == 0 and MARKER.encode() in export.stdout
        assert backup.returncode == 0


async def test_swapped_ciphertexts_fail_with_a_clear_integrity_error(tmp_path: Path, schema: str) -> None:
    env = env_with(tmp_path, encryption_key=generate_key())
    url = _url(schema)
    manager = await _manager(url, env)
    try:
        await manager.register("a", state=ContextState(data={"who": "a"}))
        await manager.register("b", state=ContextState(data={"who": "b"}))
        await manager.register("h", state=ContextState(data={"who": "h"}))
        await manager.update("h", data={"who": "h", "n": 2})
        a_id, b_id, h_id = [(await manager.get(name)).id for name in ("a", "b", "h")]
    finally:
        await manager.close()

    async def swap(table: str, column: str, where: str, first: tuple[object, ...], second: tuple[object, ...]) -> None:
        (a,) = (await _sql(schema, f"SELECT {column} FROM {table} WHERE {where}", first))[0]
        (b,) = (await _sql(schema, f"SELECT {column} FROM {table} WHERE {where}", second))[0]
        assert bytes(a)[:4] == bytes(b)[:4] == SEALED_MAGIC
        await _sql(schema, f"UPDATE {table} SET {column} = %s WHERE {where}", (b, *first))
        await _sql(schema, f"UPDATE {table} SET {column} = %s WHERE {where}", (a, *second))

    await swap("contexts", "state_sealed", "id = %s", (a_id,), (b_id,))
    await swap("history", "snapshot", "context_id = %s AND revision = %s", (h_id, 1), (h_id, 2))

    manager = await _manager(url, env)
    try:
        with pytest.raises(RecordIntegrityError) as raised:
            await manager.get("b")
        text = str(raised.value)
        assert f"encryption: contexts.state of context {b_id} revision 1 does not decrypt" in text
        assert "authentication failed" in text and "copied from another row" in text
        with pytest.raises(RecordIntegrityError, match=f"history.snapshot of context {h_id} revision 1 does not"):
            await manager.read("h", 1)
        # An untouched context still reads and writes.
        await manager.register("c", state=ContextState(data={"ok": True}))
        assert (await manager.get("c")).state.data == {"ok": True}
    finally:
        await manager.close()
    # ... and over the protocol: a clear tool error, no traceback.
    from tests.e2e.harness import mcp_client

    stderr = tmp_path / "server.stderr"
    async with mcp_client(url, mode="legacy", stderr_path=stderr, env=env) as client:  # type: ignore[arg-type]
        text = await call_error(client, "get_state", {"name": "a"})
        assert f"encryption: contexts.state of context {a_id} revision 1 does not decrypt" in text
        assert (await call_ok(client, "get_state", {"name": "c"}))["state"]["data"] == {"ok": True}
    assert "Traceback" not in stderr.read_text()


async def test_wrong_or_missing_key_is_refused_and_changes_nothing(tmp_path: Path, schema: str) -> None:
    key = generate_key()
    url = _url(schema)
    await _populate(url, env_with(tmp_path, encryption_key=key), updates=1)
    before = await _raw_contents(schema)
    wrong = run(env_with(tmp_path, encryption_key=generate_key()), "--database", url, "contexts", "list", check=False)
    assert wrong.returncode == 1 and f"encrypted with key id {key_id(key)}".encode() in wrong.stderr
    assert b"Nothing was modified" in wrong.stderr and b"Traceback" not in wrong.stderr
    missing = run(env_with(tmp_path), "--database", url, "contexts", "list", check=False)
    assert missing.returncode == 1 and b"no encryption key is configured" in missing.stderr
    assert await _raw_contents(schema) == before


async def test_rotate_key_on_postgres(tmp_path: Path, schema: str) -> None:
    old, new = generate_key(), generate_key()
    url = _url(schema)
    await _populate(url, env_with(tmp_path, encryption_key=old, keep_revisions="0"), updates=300)
    before = await _export(env_with(tmp_path, encryption_key=old), url)
    assert await _key_ids(schema) == {key_id(old)}

    rotating = env_with(tmp_path, encryption_key=new, encryption_old_keys=old)
    # Killed mid-way (one row per batch): both keys in use, everything still readable with both.
    assert _kill_after_batches(rotating, url, batches=3) == 3  # type: ignore[arg-type]
    assert await _key_ids(schema) == {key_id(old), key_id(new)}
    assert await _export(rotating, url) == before

    resumed = run(rotating, "--database", url, "rotate-key", "--batch-size", "50")
    progress = _progress_lines(resumed.stderr)
    assert any(line.startswith("rotate-key: history.snapshot: ") for line in progress), progress
    assert any(line.startswith("rotate-key: dead_letters.last_error: 1/1 ") for line in progress), progress
    assert f"key ids {key_id(old)} are no longer needed".encode() in resumed.stderr
    assert await _key_ids(schema) == {key_id(new)}
    assert [r[0] for r in await _sql(schema, "SELECT key_id FROM encryption_keys")] == [key_id(new)]

    only_new = env_with(tmp_path, encryption_key=new)
    assert await _export(only_new, url) == before
    refused = run(env_with(tmp_path, encryption_key=old), "--database", url, "contexts", "list", check=False)
    assert refused.returncode == 1 and f"encrypted with key id {key_id(new)}".encode() in refused.stderr
    again = run(only_new, "--database", url, "rotate-key")
    assert _progress_lines(again.stderr) == [] and b"rotate-key: done" in again.stderr

    # Decrypting: every value written as plaintext, readable without a key.
    decrypted = run(env_with(tmp_path, encryption_old_keys=new), "--database", url, "rotate-key", "--decrypt")
    assert b"every record is plaintext" in decrypted.stderr
    assert await _key_ids(schema) == {None}
    assert await _export(env_with(tmp_path), url) == before


async def test_import_into_encrypted_postgres_seals_what_it_loads(tmp_path: Path, schema: str) -> None:
    key = generate_key()
    env = env_with(tmp_path, encryption_key=key)
    source = tmp_path / "source.sqlite"
    await _populate(str(source), env, updates=2)
    dump = tmp_path / "dump.jsonl"
    run(env, "--database", str(source), "export", "--plaintext", "-o", str(dump))
    url = _url(schema)
    run(env, "--database", url, "import", str(dump))
    assert MARKER.encode() not in await _raw_contents(schema)
    assert await _key_ids(schema) == {key_id(key)}
    again = run(env, "--database", url, "export", "--plaintext").stdout.splitlines()[1:]
    assert again == dump.read_bytes().splitlines()[1:]


async def test_plaintext_postgres_with_a_key_encrypts_new_writes(tmp_path: Path, schema: str) -> None:
    url = _url(schema)
    manager = await _manager(url, env_with(tmp_path))
    try:
        await manager.register("old", state=ContextState(data={"v": MARKER}))
    finally:
        await manager.close()
    assert await _key_ids(schema) == {None}
    key = generate_key()
    manager = await _manager(url, env_with(tmp_path, encryption_key=key))
    try:
        await manager.register("new", state=ContextState(data={"v": "fresh"}))
        assert (await manager.get("old")).state.data == {"v": MARKER}  # plaintext rows still read
        await manager.update("old", data={"v": "sealed now"})
        assert (await manager.read("old", 1))[2].data == {"v": MARKER}  # the plaintext snapshot
    finally:
        await manager.close()
    assert await _key_ids(schema) == {None, key_id(key)}  # mixed until `rotate-key`
    states = await _sql(schema, "SELECT name, state IS NULL, state_sealed IS NULL FROM contexts ORDER BY name")
    assert states == [("new", True, False), ("old", True, False)]
    refused = run(env_with(tmp_path), "--database", url, "contexts", "list", check=False)
    assert refused.returncode == 1 and b"no encryption key is configured" in refused.stderr


async def test_rotation_while_writing_loses_no_write(tmp_path: Path, schema: str) -> None:
    """rotate-key locks each batch's rows: a write racing it is neither overwritten nor left under the old key."""
    import asyncio

    from groundhog_mcp.store.postgres import PostgresStore

    old, new = generate_key(), generate_key()
    url = _url(schema)
    await _populate(url, env_with(tmp_path, encryption_key=old, keep_revisions="0"), updates=60)
    rotating = env_with(tmp_path, encryption_key=new, encryption_old_keys=old)
    writer = await _manager(url, rotating)
    rotator = writer.store
    assert isinstance(rotator, PostgresStore)
    other = PostgresStore(url, cipher=rotator.cipher)
    await other.open()
    try:
        written = 0
        seen: list[int] = []  # writes done when each rotation batch committed

        async def write() -> None:
            nonlocal written
            for n in range(40):
                await writer.update("a", data={"secret": MARKER, "racing": n})
                written += 1

        done, _ = await asyncio.gather(
            other.rotate_keys(batch_size=4, progress=lambda _: seen.append(written)), write()
        )
        assert done is True
        assert any(0 < w < 40 for w in seen), seen  # the two really overlapped
        assert (await writer.get("a")).state.data == {"secret": MARKER, "racing": 39}
        assert (await writer.read("a", 1))[2].data == {"secret": MARKER}
    finally:
        await other.close()
        await writer.close()
    assert await _key_ids(schema) == {key_id(new)}
    assert [r[0] for r in await _sql(schema, "SELECT key_id FROM encryption_keys")] == [key_id(new)]
