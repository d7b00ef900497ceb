"""Storage faults: a full disk, a lock held past the busy timeout, read-only and corrupt files.

The disk-full and read-only-mount tests mount a small tmpfs / a read-only bind mount, which
needs root (or CAP_SYS_ADMIN); ``chattr +i`` needs root and a file system with attributes
(ext4, xfs, btrfs; not tmpfs). A test that cannot set up its fault FAILS when it runs as root
or under ``CI=true`` (CI runs as root: a fault test that silently skips there proves nothing);
it is skipped, with the reason, only for a non-root user outside CI.

``[broken-untranslated_storage_errors]``: a build that passes SQLite's own wording through
("database or disk is full", "database is locked", "attempt to write a readonly database")
must fail the disk-full, lock and read-only checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store.migrations import MIGRATIONS
from tests.e2e.harness import RawServer, assert_error_text, raw_result_text, server_command
from tests.reliability.battery import REPLY_WITHIN_S, assert_clear_error, start_raw
from tests.reliability.broken_build import build as build_copy
from tests.reliability.broken_plugin import Build

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

START_TIMEOUT_S = 30.0


def _fingerprint(directory: Path) -> dict[str, str]:
    """Every file in ``directory`` with the SHA-256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def must_set_up_faults() -> bool:
    """Root or CI: a fault that cannot be set up is a failure, not a skip."""
    return os.geteuid() == 0 or os.environ.get("CI", "").lower() == "true"


def _privileged(argv: list[str]) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        failure = result.stderr.strip() or str(result.returncode) if result.returncode != 0 else None
    except FileNotFoundError:
        failure = f"{argv[0]} is not installed"
    if failure is not None:
        reason = f"`{' '.join(argv)}` failed here ({failure})"
        if must_set_up_faults():
            pytest.fail(f"{reason}: the fault cannot be set up, as root or in CI that is a failure", pytrace=False)
        pytest.skip(f"{reason}: needs root (skipped only outside CI for a non-root user)")


def _unmount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True, check=False).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def small_tmpfs(target: Path, size: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    _privileged(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)])
    try:
        yield target
    finally:
        _unmount(target)


@contextlib.contextmanager
def read_only_view(source: Path, target: Path) -> Iterator[Path]:
    """``source`` seen read-only at ``target`` (a read-only bind mount)."""
    target.mkdir(parents=True, exist_ok=True)
    _privileged(["mount", "--bind", str(source), str(target)])
    try:
        _privileged(["mount", "-o", "remount,bind,ro", str(target)])
        yield target
    finally:
        _unmount(target)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    _privileged(["chattr", "+i", str(path)])
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True, check=False)


def _fill(directory: Path) -> Path:
    """Write a file until the file system is full, down to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


async def _run_once(database: Path, env: dict[str, str], *args: str) -> tuple[int, str]:
    """Start the server with stdin at end of file: it opens the database, serves nothing, exits."""
    process = await asyncio.create_subprocess_exec(
        server_command(),
        "--database",
        str(database),
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(START_TIMEOUT_S):
        stdout, stderr = await process.communicate()
    assert stdout == b"", f"stdout carried non-protocol bytes: {stdout[:300]!r}"
    return int(process.returncode or 0), stderr.decode("utf-8", "replace")


async def _make_database(database: Path) -> None:
    """A real groundhog database with some history (written through the library API: no process)."""
    async with StateManager.open(database) as manager:
        await manager.register("a", state=ContextState(data={"v": 0, "pad": "p" * 3000}))
        for i in range(1, 20):
            await manager.update("a", data={"v": i, "pad": str(i) * 3000})


async def _write_error(server: RawServer, tool: str, arguments: dict[str, object], *mentions: str) -> str:
    result = await server.call_tool(tool, arguments)
    text = raw_result_text(result)
    assert result.get("isError"), f"{tool} succeeded but should have failed: {text[:300]}"
    assert_clear_error(text, tool, *mentions)
    return text


async def _alive(server: RawServer) -> None:
    async with asyncio.timeout(REPLY_WITHIN_S):
        assert await server.request("ping") == {}


# -- disk full --------------------------------------------------------------------------------


_UNTRANSLATED = "untranslated_storage_errors"
_UNHANDLED_START = r"^(a traceback on stderr|the message does not name the file)"


@pytest.mark.broken_build(_UNTRANSLATED, match=r"the error does not mention \['disk full'\]")
async def test_disk_full_is_a_clear_error_and_recovers(tmp_path: Path, raw_env: dict[str, str]) -> None:
    with small_tmpfs(tmp_path / "small", "3m") as mount:
        database = mount / "groundhog.sqlite"
        server = await start_raw(database, env=raw_env, stderr_path=tmp_path / "full.stderr")
        try:
            await server.initialize()
            await server.call_ok("register_context", {"name": "a", "state": {"data": {"v": 1}}})
            await server.call_ok("update_state", {"name": "a", "data": {"v": 2}, "expected_revision": 1})

            filler = _fill(mount)
            big = os.urandom(200_000).hex()  # incompressible: it cannot fit anywhere
            for tool, arguments in (
                ("update_state", {"name": "a", "data": {"v": 3}, "expected_revision": 2}),
                ("update_state", {"name": "a", "data": {"v": big}, "expected_revision": 2}),
                ("register_context", {"name": "b", "state": {"data": {"v": big}}}),
            ):
                await _write_error(server, tool, arguments, "disk full", "nothing was written")
                await _alive(server)
                current = await server.call_ok("get_state", {"name": "a"})
                assert current["revision"] == 2 and current["state"]["data"] == {"v": 2}, "the previous state changed"

            filler.unlink()  # space returns: the same server writes again, no restart needed
            recovered = big[:100_000]
            written = await server.call_ok(
                "update_state", {"name": "a", "data": {"v": recovered}, "expected_revision": 2}
            )
            assert written["revision"] == 3
            server.kill()  # and what it acknowledged after the fault is durable
            await server.wait()
        finally:
            await server.ensure_dead()

        server = await start_raw(database, env=raw_env, stderr_path=tmp_path / "full-restart.stderr")
        try:
            await server.initialize()
            current = await server.call_ok("get_state", {"name": "a", "path": "/v"})
            assert current["revision"] == 3 and current["value"] == recovered
            missing = await server.call_tool("get_context", {"name": "b"})
            assert missing.get("isError"), "the register_context refused for a full disk exists after all"
            assert await server.close() == 0
        finally:
            await server.ensure_dead()
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# -- locked by another process ------------------------------------------------------------------


@pytest.mark.broken_build(_UNTRANSLATED, match=r"raw SQLite lock error leaked")
async def test_lock_held_past_the_busy_timeout_is_a_clear_retryable_error(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    server = await start_raw(
        database, env=raw_env, stderr_path=tmp_path / "locked.stderr", args=["--busy-timeout-ms", "200"]
    )
    try:
        await server.initialize()
        await server.call_ok("register_context", {"name": "a", "state": {"data": {"v": 1}}})
        holder = sqlite3.connect(database, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            for tool, arguments in (
                ("update_state", {"name": "a", "data": {"v": 2}, "expected_revision": 1}),
                ("register_context", {"name": "b"}),
                ("unregister_context", {"name": "a"}),
            ):
                async with asyncio.timeout(REPLY_WITHIN_S + 0.2):
                    text = await _write_error(server, tool, arguments, "locked", "busy_timeout=200", "retry")
                assert_error_text(text, tool)  # never SQLite's raw "database is locked"
                # Readers are not blocked by a writer (WAL).
                current = await server.call_ok("get_state", {"name": "a"})
                assert current["revision"] == 1
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        # Retrying after the lock is gone works, and the refused attempts wrote nothing.
        written = await server.call_ok("update_state", {"name": "a", "data": {"v": 2}, "expected_revision": 1})
        assert written["revision"] == 2
        missing = await server.call_tool("get_context", {"name": "b"})
        assert missing.get("isError")
        assert await server.close() == 0
    finally:
        await server.ensure_dead()


# -- read-only ----------------------------------------------------------------------------------


@pytest.mark.broken_build(_UNTRANSLATED, match=r"the error does not mention \['read-only'\]")
async def test_immutable_database_file_refuses_writes_clearly(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    await _make_database(database)
    before = _fingerprint(database.parent)
    with immutable(database):
        server = await start_raw(database, env=raw_env, stderr_path=tmp_path / "immutable.stderr")
        try:
            await server.initialize()
            current = await server.call_ok("get_state", {"name": "a", "path": "/v"})
            assert current["value"] == 19, "reads work on a read-only file"
            for tool, arguments in (
                ("update_state", {"name": "a", "data": {"v": 99}}),
                ("register_context", {"name": "b"}),
                ("unregister_context", {"name": "a"}),
            ):
                await _write_error(server, tool, arguments, "read-only", "nothing was written")
                await _alive(server)
            assert (await server.call_ok("get_state", {"name": "a", "path": "/v"}))["value"] == 19
            assert await server.close() == 0
        finally:
            await server.ensure_dead()
    after = _fingerprint(database.parent)
    assert after[database.name] == before[database.name], "the read-only database file changed"


@pytest.mark.broken_build("start_errors_unhandled", match=_UNHANDLED_START)
async def test_read_only_file_system_refuses_to_start(database: Path, raw_env: dict[str, str], tmp_path: Path) -> None:
    await _make_database(database)
    before = _fingerprint(database.parent)
    with read_only_view(database.parent, tmp_path / "ro") as view:
        code, stderr = await _run_once(view / database.name, raw_env)
    assert code != 0, f"the server served a database on a read-only file system; stderr:\n{stderr}"
    assert database.name in stderr, f"the message does not name the file: {stderr}"
    assert "Traceback" not in stderr, f"a traceback on stderr: {stderr}"
    assert _fingerprint(database.parent) == before


@pytest.mark.broken_build("no_read_only_cause", match=r"^the start error does not name the read-only file system")
async def test_read_only_file_system_message_names_the_cause(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    await _make_database(database)
    with read_only_view(database.parent, tmp_path / "ro") as view:
        code, stderr = await _run_once(view / database.name, raw_env)
    assert code != 0
    assert "read-only file system" in stderr and f"{database.name}-wal" in stderr, (
        f"the start error does not name the read-only file system and the -wal file: {stderr}"
    )
    assert "Traceback" not in stderr, f"a traceback on stderr: {stderr}"


# -- corrupt files ------------------------------------------------------------------------------


def _corrupt_garbage(database: Path) -> None:
    database.write_bytes(os.urandom(8192))


def _corrupt_truncated(database: Path) -> None:
    data = database.read_bytes()
    database.write_bytes(data[: len(data) // 2])


def _corrupt_header(database: Path) -> None:
    with database.open("r+b") as f:
        f.write(b"definitely not SQLite")


def _newer_schema(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("INSERT INTO schema_migrations (version, name, applied_at) VALUES (9999, 'future', 'x')")
        db.commit()


@pytest.mark.broken_build("start_errors_unhandled", match=_UNHANDLED_START)
@pytest.mark.parametrize(
    ("damage", "words"),
    [
        pytest.param(_corrupt_garbage, ("not a usable",), id="random-bytes"),
        pytest.param(_corrupt_truncated, ("not a usable",), id="truncated"),
        pytest.param(_corrupt_header, ("not a usable",), id="header"),
        pytest.param(_newer_schema, ("newer", "not modified"), id="newer-schema"),
    ],
)
async def test_corrupt_database_refuses_to_start_and_is_untouched(
    database: Path, raw_env: dict[str, str], tmp_path: Path, damage: Callable[[Path], None], words: tuple[str, ...]
) -> None:
    await _make_database(database)
    damage(database)
    before = _fingerprint(database.parent)
    code, stderr = await _run_once(database, raw_env)
    assert code != 0, f"the server started on a damaged database; stderr:\n{stderr}"
    assert str(database) in stderr, f"the message does not name the file: {stderr}"
    assert "Traceback" not in stderr, f"a traceback on stderr: {stderr}"
    for word in words:
        assert word in stderr, f"the message does not say {word!r}: {stderr}"
    assert _fingerprint(database.parent) == before, "the damaged file (or its directory) was modified"


def _corrupt_contexts_page(database: Path) -> None:
    with contextlib.closing(sqlite3.connect(database)) as db:
        (page_size,) = db.execute("PRAGMA page_size").fetchone()
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'contexts'").fetchone()
    with database.open("r+b") as f:
        f.seek((root - 1) * page_size)
        f.write(os.urandom(page_size))


@pytest.mark.broken_build("no_quick_check", match=r"the server started on a corrupt database")
async def test_corrupt_page_refuses_to_start(database: Path, raw_env: dict[str, str], tmp_path: Path) -> None:
    await _make_database(database)
    _corrupt_contexts_page(database)
    before = _fingerprint(database.parent)
    code, stderr = await _run_once(database, raw_env)
    assert _fingerprint(database.parent) == before
    assert code != 0, f"the server started on a corrupt database; stderr:\n{stderr}"
    assert str(database) in stderr and "corrupt" in stderr and "Traceback" not in stderr, stderr


@pytest.mark.broken_build("adopts_foreign_file", match=r"the foreign database was modified")
async def test_foreign_sqlite_file_is_refused_and_untouched(database: Path, raw_env: dict[str, str]) -> None:
    with contextlib.closing(sqlite3.connect(database)) as db:
        db.execute("CREATE TABLE bookmarks (url TEXT)")
        db.execute("INSERT INTO bookmarks VALUES ('https://example.org')")
        db.commit()
    before = _fingerprint(database.parent)
    code, stderr = await _run_once(database, raw_env)
    assert _fingerprint(database.parent) == before, "the foreign database was modified"
    assert code != 0 and str(database) in stderr, stderr


@pytest.mark.broken_build("refuses_empty_file", match=r"^an empty file was refused")
async def test_empty_file_is_initialised(database: Path, raw_env: dict[str, str]) -> None:
    """A zero-byte file is an empty SQLite database, not a corrupt one (``touch`` then point at it)."""
    database.touch()
    code, stderr = await _run_once(database, raw_env)
    assert code == 0, f"an empty file was refused: {stderr}"
    with contextlib.closing(sqlite3.connect(database)) as db:
        versions = [v for (v,) in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]


# -- what an unexpected error leaves in the log ----------------------------------------------------


@pytest.mark.broken_build("logs_frame_locals", match=r"^state contents were written to the log")
async def test_unexpected_errors_never_log_state_contents(
    database: Path, raw_env: dict[str, str], tmp_path: Path, build: Build
) -> None:
    secret = "TOPSECRET-" + os.urandom(8).hex()
    async with StateManager.open(database) as manager:
        await manager.register("a", state=ContextState(data={"secret": secret}))
        await manager.update("a", data={"secret": secret, "n": 2})
    # The unexpected error is this test's input: planted here, on top of the build under test.
    planted = ["unexpected_read_error", *([build.defect] if build.defect else [])]
    command = [str(build_copy(planted, tmp_path / "faulty"))]
    stderr_path = tmp_path / "faulty.stderr"
    server = await start_raw(database, env=raw_env, stderr_path=stderr_path, command=command)
    try:
        await server.initialize()
        result = await server.call_tool("get_state", {"name": "a", "revision": 1})
        text = raw_result_text(result)
        assert result.get("isError") and "internal error" in text, f"the injected fault did not fire: {text}"
        assert secret not in text
        assert await server.close() == 0
    finally:
        await server.ensure_dead()
    assert secret not in stderr_path.read_text(encoding="utf-8"), "state contents were written to the log"
