"""``groundhog-mcp import`` accepts only what the tools would: a crafted export with one bad
name, namespace, version, revision or timestamp is refused whole, naming its line and field,
and the target database is left byte for byte (SQLite: sha256 of every file; PostgreSQL: every
row of the schema)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.cli import main
from tests.conformance.conftest import POSTGRES_URL, Backend, Kind, MakeBackend, make_backend, require_postgres

__all__ = ["make_backend"]  # the fixture

pytestmark = pytest.mark.anyio

# (record type, field, value): each is something no tool accepts.
BAD_FIELDS: list[tuple[str, str, Any]] = [
    ("context", "name", "notes\nforged"),
    ("context", "name", "notes\u200fevil"),  # a right-to-left mark
    ("context", "name", "groundhog://contexts/other"),
    ("context", "name", "n" * 5000),
    ("context", "name", ".."),
    ("context", "namespace", "tenant\nb"),
    ("context", "namespace", "\u202etenant"),
    ("context", "namespace", "t" * 5000),
    ("name_revision", "name", "a b"),
    ("change", "namespace", "groundhog://x"),
    ("dead_letter", "name", "x\ty"),
    ("revision", "actor", "ann\nrevision 7 by root"),
    ("change", "actor", ""),
    ("context", "version", "1.0"),
    ("context", "revision", 0),
    ("context", "revision", True),
    ("context", "revision", "3"),
    ("revision", "revision", -1),
    ("change", "sequence", 2**63),
    ("dead_letter", "attempts", -1),
    ("context", "created_at", "2026-01-01 00:00:00"),
    ("change", "timestamp", "20260101T000000Z"),
    ("event", "created_at", "2026-01-01T00:00:00+01:00"),
    ("revision", "timestamp", "yesterday"),
]


async def populate(backend: Backend) -> None:
    manager = StateManager(backend.store())
    await manager.start()
    try:
        await manager.register("notes", state=ContextState(data={"n": 1}))
        await manager.update("notes", data={"n": 2})
        await manager.register("board")
    finally:
        await manager.close()


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[Kind], Path]]:
    """The export of a populated database of each kind, made once per module: tests only read it."""
    made: dict[Kind, Path] = {}
    schemas: list[str] = []

    def export_of(kind: Kind) -> Path:
        if kind not in made:
            folder = tmp_path_factory.mktemp(f"export-{kind}")
            if kind == "sqlite":
                database = str(folder / "source.sqlite")
            else:
                anyio.run(require_postgres)
                schemas.append(f"gh_test_{uuid.uuid4().hex[:16]}")
                database = f"{POSTGRES_URL}?schema={schemas[-1]}"
            anyio.run(populate, Backend(kind, database))
            assert main(["--database", database, "export", "-o", str(folder / "export.jsonl")]) == 0
            made[kind] = folder / "export.jsonl"
        return made[kind]

    yield export_of
    if schemas:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            for schema in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgres"])
async def target_and_export(
    request: pytest.FixtureRequest, make_backend: MakeBackend, exports: Callable[[Kind], Path]
) -> tuple[Backend, Path]:
    export = await asyncio.to_thread(exports, request.param)  # made outside this event loop
    target = await make_backend(request.param, migrated=True)  # migrated right away
    # The target exists and is migrated: a refused import must not change one byte of it.
    assert await run_cli("--database", target.database, "db", "migrate") == 0
    return target, export


async def run_cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


@pytest.mark.parametrize(("kind", "field", "value"), BAD_FIELDS)
async def test_one_bad_field_refuses_the_whole_import(
    target_and_export: tuple[Backend, Path],
    kind: str,
    field: str,
    value: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, export = target_and_export
    lines = export.read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if kind in ("event", "dead_letter") and not any(r["type"] == kind for r in records):
        records.append(_extra(kind, records))
    number = next(n for n, r in enumerate(records, start=1) if r["type"] == kind)
    records[number - 1][field] = value
    crafted = tmp_path / "crafted.jsonl"
    # A blank line first: the message names the file's line, not the record's index.
    crafted.write_text("\n" + "".join(json.dumps(r) + "\n" for r in records))
    before = await target.fingerprint()
    capsys.readouterr()
    monkeypatch.setenv("GROUNDHOG_AUDIT_KEY", "k" * 40)
    assert await run_cli("--database", target.database, "import", str(crafted)) == 1
    err = capsys.readouterr().err
    assert re.match(rf"groundhog-mcp: import: line {number + 1} \({kind}\): field '?{field}'?[: ]", err), err
    assert err.rstrip().endswith("nothing was imported") and "Traceback" not in err
    assert await target.fingerprint() == before


async def test_a_refused_import_creates_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crafted = tmp_path / "crafted.jsonl"
    crafted.write_text(
        json.dumps({"type": "header", "format": "groundhog-export", "format_version": 2})
        + "\n"
        + json.dumps({"type": "name_revision", "namespace": "default", "name": "a\nb", "last_revision": 1})
        + "\n"
    )
    target = tmp_path / "new" / "groundhog.sqlite"
    assert await run_cli("--database", str(target), "import", str(crafted)) == 1
    assert "line 2 (name_revision): field name: must match" in capsys.readouterr().err
    assert not target.parent.exists()


def _extra(kind: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    """An event or dead letter record for the first context (export from a store without one)."""
    context = next(r for r in records if r["type"] == "context")
    if kind == "event":
        return {
            "type": "event", "id": 1, "context_id": context["id"], "event_type": "add", "payload": {},
            "idempotency_key": None, "revision": 1, "sequence": 1, "created_at": "2026-01-01T00:00:00.000000Z",
        }  # fmt: skip
    return {
        "type": "dead_letter", "id": 1, "namespace": context["namespace"], "context_id": context["id"],
        "name": context["name"], "event_type": "add", "payload": {}, "idempotency_key": None, "attempts": 3,
        "last_error": "boom", "created_at": "2026-01-01T00:00:00.000000Z", "replayed_at": None,
        "replay_revision": None,
    }  # fmt: skip
