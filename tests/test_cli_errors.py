"""No user error prints a traceback: one line on stderr and the documented exit status
(docs/operations.md "Command line": 0 ok, 1 the command failed, 2 usage or configuration, 70 a bug,
130 interrupted). Most cases run in-process through ``main(argv)``; a closed pipe and the
modules a maintenance command loads need a real process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from groundhog_mcp.cli import EXIT_BUG, EXIT_FAILED, EXIT_USAGE, main


@pytest.fixture(autouse=True)
def _keep_logging() -> Iterator[None]:
    # main() points the root logger at the stderr of the moment (capsys's): put it back.
    handlers = logging.getLogger().handlers[:]
    yield
    logging.getLogger().handlers[:] = handlers


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("GROUNDHOG_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("GROUNDHOG_TOKEN_FILE", str(tmp_path / "tokens.json"))


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "groundhog.sqlite"
    assert main(["--database", str(path), "db", "migrate"]) == 0
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def test_missing_import_file(capsys: pytest.CaptureFixture[str], database: Path) -> None:
    code, err = run(capsys, "--database", str(database), "import", "/nonexistent/dump.jsonl")
    assert (code, err) == (
        EXIT_FAILED,
        "groundhog-mcp: import: cannot read /nonexistent/dump.jsonl: No such file or directory; nothing was imported",
    )


def test_import_file_that_is_a_directory_or_not_utf8(
    capsys: pytest.CaptureFixture[str], database: Path, tmp_path: Path
) -> None:
    code, err = run(capsys, "--database", str(database), "import", str(tmp_path))
    assert (code, err) == (
        EXIT_FAILED,
        f"groundhog-mcp: import: cannot read {tmp_path}: Is a directory; nothing was imported",
    )
    binary = tmp_path / "dump.jsonl"
    binary.write_bytes(b'{"type": "header"}\n\xff\xfe\n')
    code, err = run(capsys, "--database", str(database), "import", str(binary))
    assert (code, err) == (EXIT_FAILED, f"groundhog-mcp: import: {binary} line 2: not UTF-8 text; nothing was imported")


def test_database_directory_that_cannot_be_created(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = run(capsys, "--database", str(blocker / "sub" / "g.sqlite"), "contexts", "list")
    assert (code, err) == (
        EXIT_FAILED,
        f"groundhog-mcp: database: cannot create {blocker}/sub/g.sqlite: Not a directory ({blocker}/sub); "
        "nothing was written",
    )


def test_bad_flags_and_settings_are_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "contexts", "list", "--no-such-flag")
    assert code == EXIT_USAGE and err.endswith("error: unrecognized arguments: --no-such-flag")
    code, err = run(capsys, "serve", "--port", "eighty")
    assert code == EXIT_USAGE and err.endswith("argument --port: invalid int value: 'eighty'")
    code, err = run(capsys, "--busy-timeout-ms", "-5", "contexts", "list")
    assert code == EXIT_USAGE and err.startswith("groundhog-mcp: config: busy_timeout_ms: ")
    code, err = run(capsys, "--config", str(tmp_path / "missing.toml"), "contexts", "list")
    assert (code, err) == (EXIT_USAGE, f"groundhog-mcp: config: file {tmp_path}/missing.toml does not exist")
    code, err = run(capsys, "--config", str(tmp_path), "contexts", "list")
    assert (code, err) == (EXIT_USAGE, f"groundhog-mcp: config: cannot read {tmp_path}: Is a directory")


def test_unreadable_key_files(
    capsys: pytest.CaptureFixture[str], database: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests run as root in CI, where a chmod 000 file is still readable: a directory is unreadable as a file.
    monkeypatch.setenv("GROUNDHOG_ENCRYPTION_KEY_FILE", str(tmp_path))
    code, err = run(capsys, "--database", str(database), "contexts", "list")
    assert (code, err) == (
        EXIT_FAILED,
        f"groundhog-mcp: encryption: cannot read encryption_key_file {tmp_path}: Is a directory",
    )
    monkeypatch.delenv("GROUNDHOG_ENCRYPTION_KEY_FILE")
    monkeypatch.setenv("GROUNDHOG_AUDIT_KEY_FILE", str(tmp_path))
    code, err = run(capsys, "--database", str(database), "audit", "verify")
    assert (code, err) == (EXIT_FAILED, f"groundhog-mcp: audit_key_file: cannot read {tmp_path}: Is a directory")
    monkeypatch.setenv("GROUNDHOG_TOKEN_FILE", str(tmp_path))
    code, err = run(capsys, "tokens", "list")
    assert (code, err) == (EXIT_FAILED, f"groundhog-mcp: token file {tmp_path}: cannot read it: Is a directory")


def test_missing_database_and_missing_context(capsys: pytest.CaptureFixture[str], database: Path) -> None:
    code, err = run(capsys, "--database", str(database.with_name("none.sqlite")), "db", "status")
    assert (code, err) == (EXIT_FAILED, f"groundhog-mcp: no database at {database.with_name('none.sqlite')}")
    code, err = run(capsys, "--database", str(database), "contexts", "show", "nope")
    assert code == EXIT_FAILED and err.startswith("groundhog-mcp: ") and "'nope'" in err


def test_an_unexpected_error_is_one_line_and_exit_70(
    capsys: pytest.CaptureFixture[str], database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from groundhog_mcp.store.sqlite import SQLiteStore

    async def broken(self: SQLiteStore) -> None:
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(SQLiteStore, "status", broken)
    code, err = run(capsys, "--database", str(database), "db", "status")
    assert (code, err) == (
        EXIT_BUG,
        "groundhog-mcp: internal error (ZeroDivisionError); this is a bug, please report it "
        "(--log-level DEBUG shows the traceback)",
    )


# -- real processes -------------------------------------------------------------------------------


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    env["GROUNDHOG_TOKEN_FILE"] = str(tmp_path / "tokens.json")
    env["GROUNDHOG_AUDIT_KEY"] = "audit-key-for-the-cli-tests-0123456789abcdef"
    return env


def test_export_into_a_closed_pipe(tmp_path: Path) -> None:
    """``groundhog-mcp export | head -1``: the reader leaves early; no traceback, exit 1."""
    database = tmp_path / "g.sqlite"
    fill = (
        "import anyio\nfrom groundhog_mcp import StateManager, ContextState\n"
        "async def fill():\n"
        f"    async with StateManager.open({str(database)!r}) as m:\n"
        "        for i in range(40):\n"
        "            await m.register(f'c{i}', state=ContextState(data={'blob': 'x' * 8000}))\n"
        "anyio.run(fill)\n"
    )
    subprocess.run([sys.executable, "-c", fill], check=True, timeout=120)
    process = subprocess.Popen(
        [sys.executable, "-m", "groundhog_mcp", "--database", str(database), "export"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
    )
    assert process.stdout is not None and process.stderr is not None
    assert json.loads(process.stdout.readline())["type"] == "header"
    process.stdout.close()  # 40 x 8 KB states do not fit in the pipe: the next writes fail
    err = process.stderr.read().decode()
    assert process.wait(timeout=60) == EXIT_FAILED
    assert err == "groundhog-mcp: the output was closed before it was complete (broken pipe)\n"


_LOADED = """
import json, sys
from groundhog_mcp.cli import main
code = main(sys.argv[1:])
heavy = sorted({m.split(".")[0] for m in sys.modules} & {"mcp", "uvicorn", "starlette", "sse_starlette", "httpx",
    "httpx2", "httpcore", "httpcore2", "anyio"})
print(json.dumps({"code": code, "heavy": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["tokens", "list"],
        ["db", "status"],
        ["contexts", "list"],
        ["export", "-o", "{tmp}/export.jsonl"],
        ["backup", "{tmp}/backup.sqlite"],
        ["audit", "head"],
        ["audit", "verify"],
        ["import", "{tmp}/empty.jsonl"],
        ["migrate-context", "--prefix", "", "--dry-run"],
        ["dead-letters", "list"],
        ["metrics"],
        ["keygen"],
        ["state", "set", "notes", "{}", "--expected-revision", "0"],
    ],
    ids=lambda argv: " ".join(a for a in argv if not a.startswith("{")),
)
def test_maintenance_commands_load_neither_the_sdk_nor_the_http_stack(
    tmp_path: Path, database: Path, argv: list[str]
) -> None:
    # The database is migrated in-process (the fixture): only the command under test needs a process.
    (tmp_path / "empty.jsonl").write_text('{"type": "header", "format": "groundhog-export", "format_version": 2}\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    result = subprocess.run(
        [sys.executable, "-c", _LOADED, "--database", str(database), *args],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=60,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report == {"code": 0, "heavy": []}
