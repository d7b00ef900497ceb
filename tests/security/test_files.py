"""Files groundhog-mcp creates are owner-only (0600) under umask 022, and export/backup never
write through a symlink nor over an existing file without ``--force`` (docs/security.md "Threat model")."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from groundhog_mcp.cli import main
from tests.conformance.conftest import MakeBackend

# One subprocess under umask 022 (the usual default) creates every kind of file, through the
# same code paths as the command line, and reports their modes.
_CREATE_ALL = r"""
import json, os, sqlite3, sys
from pathlib import Path
os.umask(0o022)
from groundhog_mcp.cli import main
from tests.conformance.conftest import MakeBackend

work = Path(sys.argv[1])
db = work / "new" / "groundhog.sqlite"
os.environ["GROUNDHOG_TOKEN_FILE"] = str(work / "config" / "tokens.json")
records = work / "seed.jsonl"
from groundhog_mcp.store.records import header_record
context = {
    "type": "context", "id": "7d9c2d3e-5c1a-4f53-9a43-0a4b7a3a9f01", "namespace": "default", "name": "a",
    "version": "1.0.0", "metadata": {}, "settings": {}, "schema": None, "handlers": {}, "revision": 1,
    "state": {"data": {}, "metadata": {}, "timestamp": "2026-01-01T00:00:00.000000Z", "version": "1.0.0"},
    "created_at": "2026-01-01T00:00:00.000000Z", "updated_at": "2026-01-01T00:00:00.000000Z", "deleted_at": None,
}
records.write_text(json.dumps(header_record()) + "\n" + json.dumps(context) + "\n")
# import: the database (with -wal and -shm while it is open) and the audit key beside it
assert main(["--database", str(db), "import", str(records)]) == 0
conn = sqlite3.connect(db)  # a reader keeps -wal and -shm in place to be looked at
conn.execute("SELECT count(*) FROM contexts").fetchone()
assert main(["--database", str(db), "export", "-o", str(work / "export.jsonl")]) == 0
assert main(["--database", str(db), "audit", "export", "-o", str(work / "audit.jsonl")]) == 0
assert main(["--database", str(db), "backup", str(work / "backup.sqlite")]) == 0
assert main(["keygen", "-o", str(work / "encryption.key")]) == 0
assert main(["tokens", "create", "--principal", "ann"]) == 0
names = ["new/groundhog.sqlite", "new/groundhog.sqlite-wal", "new/groundhog.sqlite-shm",
         "new/groundhog.sqlite.audit-key", "export.jsonl", "audit.jsonl", "backup.sqlite", "encryption.key",
         "config/tokens.json", "new", "config"]
modes = {name: oct((work / name).stat().st_mode & 0o777) for name in names}
conn.close()
print(json.dumps(modes))
"""


def test_every_file_is_created_owner_only_under_umask_022(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    result = subprocess.run(
        [sys.executable, "-c", _CREATE_ALL, str(tmp_path)], capture_output=True, text=True, timeout=120, env=env
    )
    assert result.returncode == 0, result.stderr
    modes = json.loads(result.stdout.splitlines()[-1])
    assert modes == {
        "new/groundhog.sqlite": "0o600",
        "new/groundhog.sqlite-wal": "0o600",
        "new/groundhog.sqlite-shm": "0o600",
        "new/groundhog.sqlite.audit-key": "0o600",
        "export.jsonl": "0o600",
        "audit.jsonl": "0o600",
        "backup.sqlite": "0o600",
        "encryption.key": "0o600",
        "config/tokens.json": "0o600",
        "new": "0o700",  # directories the database and the token file needed
        "config": "0o700",
    }


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "groundhog.sqlite"
    assert main(["--database", str(path), "db", "migrate"]) == 0
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command", ["export", "backup", "audit export", "keygen"])
def test_a_symlink_is_never_followed(database: Path, tmp_path: Path, command: str) -> None:
    target = tmp_path / "elsewhere" / "target"
    target.parent.mkdir()
    link = tmp_path / "out"
    link.symlink_to(target)  # dangling: following it would create the target
    argv = _argv(command, database, link)
    assert main(argv) == 1
    assert not target.exists() and link.is_symlink()
    # --force replaces the link itself, never what it points to.
    assert main([*argv, "--force"]) == 0
    assert not target.exists() and not link.is_symlink() and link.is_file()
    assert link.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", ["export", "backup", "audit export", "keygen"])
def test_an_existing_file_is_replaced_only_with_force(
    database: Path, tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "existing"
    existing.write_text("keep me\n")
    existing.chmod(0o644)
    argv = _argv(command, database, existing)
    assert main(argv) == 1
    assert f"{existing} already exists; choose a new file name, or pass --force" in capsys.readouterr().err
    assert existing.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "groundhog.sqlite"]  # no leftovers
    assert main([*argv, "--force"]) == 0
    assert existing.read_bytes() != b"keep me\n" and existing.stat().st_mode & 0o777 == 0o600


def test_backup_force_refuses_a_destination_with_a_wal(database: Path, tmp_path: Path) -> None:
    live = tmp_path / "live.sqlite"
    assert main(["--database", str(live), "db", "migrate"]) == 0
    (tmp_path / "live.sqlite-wal").write_bytes(b"frames")
    before = digest(live)
    assert main(["--database", str(database), "backup", str(live), "--force"]) == 1
    assert digest(live) == before


def test_an_existing_database_keeps_its_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The user's own file: warned about (stderr), never silently chmod-ed."""
    path = tmp_path / "shared.sqlite"
    assert main(["--database", str(path), "db", "migrate"]) == 0
    assert "readable_by_others" not in capsys.readouterr().err
    path.chmod(0o640)
    assert main(["--database", str(path), "contexts", "list"]) == 0
    assert path.stat().st_mode & 0o777 == 0o640
    warning = json.loads(next(line for line in capsys.readouterr().err.splitlines() if "readable_by_others" in line))
    assert (warning["level"], warning["path"], warning["mode"]) == ("warning", str(path), "640")


@pytest.mark.anyio
async def test_postgres_backup_never_follows_a_symlink(make_backend: MakeBackend, tmp_path: Path) -> None:
    backend = await make_backend("postgres")
    assert await asyncio.to_thread(main, ["--database", backend.database, "db", "migrate"]) == 0
    target = tmp_path / "target"
    link = tmp_path / "backup.jsonl"
    link.symlink_to(target)
    argv = ["--database", backend.database, "backup", str(link)]
    assert await asyncio.to_thread(main, argv) == 1
    assert not target.exists() and link.is_symlink()
    assert await asyncio.to_thread(main, [*argv, "--force"]) == 0
    assert not target.exists() and not link.is_symlink()
    assert json.loads(link.read_text().splitlines()[0])["type"] == "header"
    assert link.stat().st_mode & 0o777 == 0o600


def _argv(command: str, database: Path, output: Path) -> list[str]:
    if command == "export":
        return ["--database", str(database), "export", "-o", str(output)]
    if command == "audit export":
        return ["--database", str(database), "audit", "export", "-o", str(output)]
    if command == "backup":
        return ["--database", str(database), "backup", str(output)]
    return ["keygen", "-o", str(output)]
