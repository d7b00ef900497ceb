"""Encryption at rest, end to end: the real server over stdio and the real console script.

A marker string goes into states, history, change diffs, event payloads and dead letters; it
must then be absent from the database file, its -wal/-shm, a backup, an export without
--plaintext and every log line — and present in the same places without a key, so the greps
can fail.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from groundhog_mcp import ContextState
from groundhog_mcp.errors import EncryptionKeyError, RecordIntegrityError
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.store.base import SEALED_MAGIC, record_aad
from tests.e2e.harness import call_error, call_ok, mcp_client, server_command
from tests.security.encryption_helpers import (
    database_files,
    env_with,
    key_id,
    key_ids_in_use,
    manager_for,
    run,
    run_process,
    sha256,
)

pytestmark = pytest.mark.anyio

MARKER = "ZEBRA-7f3a9c-MARKER"
HANDLERS = {
    "note": {"action": "set", "path": "/last", "value_from": "/text"},
    "count": {"plugin": "flaky-counter", "max_attempts": 1},
}


async def _write_marker_everywhere(database: Path, env: dict[str, str], stderr_path: Path) -> None:
    """Through the real server: state, history and change diffs, an event, a dead letter."""
    async with mcp_client(database, mode="legacy", stderr_path=stderr_path, env=env) as client:
        await call_ok(
            client,
            "register_context",
            {
                "name": "notes",
                "state": {"data": {"secret": MARKER}, "metadata": {"m": MARKER}},
                "event_handlers": HANDLERS,
            },
        )
        for n in range(3):
            await call_ok(
                client, "update_state", {"name": "notes", "merge_patch": {"data": {f"k{n}": f"{MARKER}-{n}"}}}
            )
        await call_ok(client, "emit_event", {"name": "notes", "type": "note", "payload": {"text": f"{MARKER}-event"}})
        failed = await call_error(
            client,
            "emit_event",
            {"name": "notes", "type": "count", "payload": {"fail_times": 1, "why": MARKER}, "idempotency_key": "dl-1"},
        )
        assert "dead" in failed
        # Everything reads back decrypted.
        state = await call_ok(client, "get_state", {"name": "notes"})
        assert state["state"]["data"]["secret"] == MARKER and state["state"]["data"]["last"] == f"{MARKER}-event"
        first = await call_ok(client, "get_state", {"name": "notes", "revision": 1})
        assert first["state"]["data"] == {"secret": MARKER}
        (letter,) = (await call_ok(client, "list_dead_letters", {}))["dead_letters"]
        assert letter["payload"]["why"] == MARKER and "planned failure 1" in letter["last_error"]
        diff = await call_ok(client, "diff_states", {"name": "notes", "from_revision": 1, "to_revision": 2})
        assert MARKER in str(diff)
        # While the server runs, recent writes sit in the -wal file.
        files = database_files(database)
        assert f"{database.name}-wal" in files
        _check_files(files, encrypted="GROUNDHOG_ENCRYPTION_KEY" in env)


def _check_files(files: dict[str, bytes], *, encrypted: bool) -> None:
    marker = MARKER.encode()
    found = [name for name, data in files.items() if marker in data]
    if encrypted:
        assert found == [], f"plaintext marker in {found}"
    else:
        assert found, "without a key the marker must be in the database files (else the grep proves nothing)"


@pytest.mark.parametrize("encrypted", [True, False], ids=["key", "no-key"])
async def test_no_plaintext_in_database_wal_backup_export_or_logs(tmp_path: Path, encrypted: bool) -> None:
    key = generate_key()
    settings = {"encryption_key": key} if encrypted else {}
    env = env_with(tmp_path, log_level="DEBUG", **settings)
    database = tmp_path / "db.sqlite"
    server_log = tmp_path / "server.stderr"
    await _write_marker_everywhere(database, env, server_log)

    _check_files(database_files(database), encrypted=encrypted)
    backup = tmp_path / "backup.sqlite"
    backed = run(env, "--database", str(database), "backup", str(backup))
    _check_files({"backup": backup.read_bytes()}, encrypted=encrypted)

    export = run(env, "--database", str(database), "export", check=False)
    logs = server_log.read_bytes() + backed.stderr + export.stderr
    if encrypted:
        assert export.returncode == 1 and export.stdout == b""
        assert b"pass --plaintext" in export.stderr and b"Nothing was written" in export.stderr
        explicit = run(env, "--database", str(database), "export", "--plaintext")
        assert MARKER.encode() in explicit.stdout  # asked for explicitly: the decrypted contents
        assert b"writing the DECRYPTED (plaintext) contents" in explicit.stderr
        logs += explicit.stderr
        assert f'"key_id": "{key_id(key)}"'.encode() in server_log.read_bytes()  # start-up says it is on
        # Every value of every state-bearing column is sealed under the configured key.
        assert set().union(*key_ids_in_use(database).values()) == {key_id(key)}
    else:
        assert export.returncode == 0 and MARKER.encode() in export.stdout
    assert b'"level": "debug"' in server_log.read_bytes() or b'"level": "info"' in server_log.read_bytes()
    assert MARKER.encode() not in logs, "a log line quoted state contents"
    assert key.encode() not in logs, "a log line quoted the key"


async def test_wrong_or_missing_key_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    right, wrong = generate_key(), generate_key()
    database = tmp_path / "db.sqlite"
    async with manager_for(database, env_with(tmp_path, encryption_key=right)) as manager:
        await manager.register("a", state=_state({"secret": MARKER}))
        await manager.update("a", data={"secret": MARKER, "n": 1})
    before = sha256(database)
    assert not Path(f"{database}-wal").exists()

    refused = run(
        env_with(tmp_path, encryption_key=wrong), "--database", str(database), "contexts", "list", check=False
    )
    text = refused.stderr.decode()
    assert refused.returncode == 1, text
    assert f"was encrypted with key id {key_id(right)}, and the configured key has id {key_id(wrong)}" in text
    assert "The file was not modified" in text and "Traceback" not in text
    assert sha256(database) == before
    assert not Path(f"{database}-wal").exists() and not Path(f"{database}-shm").exists()

    no_key = run(env_with(tmp_path), "--database", str(database), "contexts", "list", check=False)
    text = no_key.stderr.decode()
    assert (
        no_key.returncode == 1 and f"is encrypted (key id {key_id(right)}) and no encryption key is configured" in text
    )
    assert sha256(database) == before

    # The server itself (stdio) refuses before speaking the protocol.
    served = _serve_stdio(env_with(tmp_path, encryption_key=wrong), database)
    assert served.returncode == 1 and served.stdout == b""
    assert f"key id {key_id(right)}" in served.stderr.decode()
    assert sha256(database) == before

    malformed = run(
        env_with(tmp_path, encryption_key="too-short"), "--database", str(database), "contexts", "list", check=False
    )
    text = malformed.stderr.decode()
    assert malformed.returncode == 1 and "GROUNDHOG_ENCRYPTION_KEY is not a key" in text and "too-short" not in text
    assert sha256(database) == before

    # The right key still opens it, and reads what was written.
    shown = run_process(env_with(tmp_path, encryption_key=right), "--database", str(database), "contexts", "show", "a")
    assert MARKER.encode() in shown.stdout


def test_keys_are_never_taken_from_the_command_line_or_the_config_file(tmp_path: Path) -> None:
    key = generate_key()
    for args in (["--encryption-key", key], [f"--encryption-key={key}"], ["serve", "--encryption-key-file", "k"]):
        refused = run(env_with(tmp_path), *args, check=False)
        assert refused.returncode == 2 and b"never taken from the command line" in refused.stderr
        assert key.encode() not in refused.stderr
    config = tmp_path / "config.toml"
    config.write_text(f'encryption_key = "{key}"\n')
    refused = run(env_with(tmp_path), "--config", str(config), "contexts", "list", check=False)
    assert refused.returncode == 2 and b"keys are not read from the config file" in refused.stderr
    # A key file named in the config file is the way to go.
    key_file = tmp_path / "key"
    key_file.write_text(f"# groundhog key\n{key}\n")
    config.write_text(f'encryption_key_file = "{key_file}"\ndatabase = "{tmp_path / "k.sqlite"}"\n')
    listed = run(env_with(tmp_path), "--config", str(config), "contexts", "list")
    assert f'"key_id": "{key_id(key)}"'.encode() in listed.stderr


def _serve_stdio(env: dict[str, str], database: Path) -> subprocess.CompletedProcess[bytes]:
    """``groundhog-mcp --database DATABASE`` (stdio serving) with an empty stdin."""
    return subprocess.run(
        [server_command(), "--database", str(database)],
        input=b"",
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
    )


def _swap(
    database: Path, table: str, column: str, where: str, first: tuple[object, ...], second: tuple[object, ...]
) -> None:
    with contextlib.closing(sqlite3.connect(database)) as conn, conn:
        a = conn.execute(f"SELECT {column} FROM {table} WHERE {where}", first).fetchone()[0]
        b = conn.execute(f"SELECT {column} FROM {table} WHERE {where}", second).fetchone()[0]
        assert a[:4] == b[:4] == SEALED_MAGIC
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (b, *first))
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (a, *second))


async def test_swapped_ciphertexts_fail_with_a_clear_integrity_error(tmp_path: Path) -> None:
    env = env_with(tmp_path, encryption_key=generate_key())
    database = tmp_path / "db.sqlite"
    async with manager_for(database, env) as manager:
        await manager.register("a", state=_state({"who": "a"}))
        await manager.register("b", state=_state({"who": "b"}))
        await manager.register("h", state=_state({"who": "h"}))
        await manager.update("h", data={"who": "h", "n": 2})
        a_id, b_id, h_id = [str((await manager.get(name)).id) for name in ("a", "b", "h")]
    # Two contexts' current states swapped; two revisions of one context's history swapped.
    _swap(database, "contexts", "state", "id = ?", (a_id,), (b_id,))
    _swap(database, "history", "snapshot", "context_id = ? AND revision = ?", (h_id, 1), (h_id, 2))

    async with mcp_client(database, mode="legacy", stderr_path=tmp_path / "server.stderr", env=env) as client:
        text = await call_error(client, "get_state", {"name": "b"})
        assert f"encryption: contexts.state of context {b_id} revision 1 does not decrypt" in text
        assert "authentication failed" in text and "copied from another row" in text
        text = await call_error(client, "get_state", {"name": "h", "revision": 1})
        assert f"encryption: history.snapshot of context {h_id} revision 1 does not decrypt" in text
        # The server keeps serving: an untouched context reads fine after the failures.
        await call_ok(client, "register_context", {"name": "c", "state": {"data": {"ok": True}}})
        assert (await call_ok(client, "get_state", {"name": "c"}))["state"]["data"] == {"ok": True}
    assert "Traceback" not in (tmp_path / "server.stderr").read_text()


async def test_plaintext_database_with_a_key_encrypts_new_writes(tmp_path: Path) -> None:
    database = tmp_path / "db.sqlite"
    async with manager_for(database, env_with(tmp_path)) as manager:
        await manager.register("old", state=_state({"v": MARKER}))
    key = generate_key()
    async with manager_for(database, env_with(tmp_path, encryption_key=key)) as manager:
        await manager.register("new", state=_state({"v": "fresh"}))
        assert (await manager.get("old")).state.data == {"v": MARKER}  # plaintext rows still read
    used = key_ids_in_use(database)
    assert used["contexts.state"] == {None, key_id(key)}  # mixed until `rotate-key`
    refused = run(env_with(tmp_path), "--database", str(database), "contexts", "list", check=False)
    assert refused.returncode == 1 and b"no encryption key is configured" in refused.stderr


async def test_import_into_an_encrypted_database_seals_what_it_loads(tmp_path: Path) -> None:
    key = generate_key()
    env = env_with(tmp_path, encryption_key=key)
    source = tmp_path / "source.sqlite"
    async with manager_for(source, env) as manager:
        await manager.register("a", state=_state({"secret": MARKER}))
        await manager.update("a", data={"secret": MARKER, "n": 1})
        await manager.register("gone", state=_state({"secret": MARKER}))
        await manager.unregister("gone")
    dump = tmp_path / "dump.jsonl"
    _run_export_import(env, source, dump, tmp_path / "copy.sqlite")
    copy = tmp_path / "copy.sqlite"
    assert MARKER.encode() in dump.read_bytes()
    assert set().union(*key_ids_in_use(copy).values()) == {key_id(key)}
    assert MARKER.encode() not in b"".join(database_files(copy).values())
    again = run(env, "--database", str(copy), "export", "--plaintext").stdout.splitlines()[1:]
    assert again == dump.read_bytes().splitlines()[1:]  # the same records, decrypted again


def _run_export_import(env: dict[str, str], source: Path, dump: Path, target: Path) -> None:
    run(env, "--database", str(source), "export", "--plaintext", "-o", str(dump))
    run(env, "--database", str(target), "import", str(dump))


def test_key_configuration_mistakes_are_clear(tmp_path: Path) -> None:
    database = str(tmp_path / "db.sqlite")
    key, other = generate_key(), generate_key()
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}\n{other}\n")
    cases = [
        ({"encryption_key": key, "encryption_key_file": str(key_file)}, "both GROUNDHOG_ENCRYPTION_KEY and"),
        ({"encryption_key_file": str(key_file)}, "must hold exactly one key; it holds 2"),
        ({"encryption_key_file": str(tmp_path / "missing")}, "cannot read encryption_key_file"),
        ({"encryption_old_keys": other}, "old keys are configured"),
        ({"encryption_key": key, "encryption_old_keys": f"{other},nope"}, "GROUNDHOG_ENCRYPTION_OLD_KEYS item 2"),
    ]
    for settings, expected in cases:
        settings.setdefault("database", database)
        refused = run(env_with(tmp_path, **settings), "contexts", "list", check=False)
        text = refused.stderr.decode()
        assert refused.returncode == 1 and expected in text, (settings, text)
        assert key not in text and other not in text and "Traceback" not in text
    assert not Path(database).exists()  # refused before anything was opened


async def test_db_status_shows_the_key_ids(tmp_path: Path) -> None:
    key = generate_key()
    database = tmp_path / "db.sqlite"
    async with manager_for(database, env_with(tmp_path, encryption_key=key)) as manager:
        await manager.list()  # opened with a key, nothing written: nothing sealed yet
        assert (await manager.store.status()).extra["encryption_key_ids"] == []
        await manager.register("a", state=_state({"secret": MARKER}))
    # `db status` reads without a key: it shows which key the database needs.
    status = json.loads(run_process(env_with(tmp_path), "--database", str(database), "db", "status").stdout)
    assert status["extra"]["encryption_key_ids"] == [key_id(key)]


def test_keyring_seal_and_open() -> None:
    text = generate_key()
    key = parse_key(text, source="test")
    assert parse_key(key.secret.hex(), source="hex").key_id == key.key_id  # hex and base64url: one key
    assert len(key.key_id) == 8 and text not in repr(key) and key.secret.hex() not in repr(Keyring(key))
    ring = Keyring(key)
    aad = record_aad("contexts.state", "default", uuid.uuid4(), 3)
    blob = ring.seal(b"hello", aad)
    assert blob[:4] == SEALED_MAGIC and blob[4:8].hex() == key.key_id
    assert ring.seal(b"hello", aad) != blob  # a fresh nonce per record
    assert ring.open(blob, aad) == b"hello"
    with pytest.raises(ValueError, match="authentication failed"):
        ring.open(blob, record_aad("contexts.state", "default", uuid.uuid4(), 3))
    with pytest.raises(ValueError, match="not configured"):
        Keyring(parse_key(generate_key(), source="other")).open(blob, aad)
    with pytest.raises(EncryptionKeyError, match="expected 32 bytes"):
        parse_key("00" * 31, source="short")
    assert issubclass(RecordIntegrityError, Exception)


def _state(data: dict[str, object]) -> ContextState:
    return ContextState(data=data)
