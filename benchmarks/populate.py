"""Building the benchmarks' databases through the store's import path, cached between runs, and
evicting a file from the page cache for cold-cache figures.

A database of ``contexts`` contexts (1 KB state each) whose ten hot ones (``bench-hot-0`` …
``-9``) have ``revisions`` revisions: the hot contexts' first revisions and one filler are
written through :class:`StateManager`; that database is exported (``export_records``), and the
records of the rest are copies of those (fresh ids, names and change sequences), loaded into a
new file by ``import_records`` in one transaction. So every row is one the store itself wrote
or checked on import, and 100,000 contexts take seconds, not the minutes one tool call each
would.

Built files are cached under ``benchmarks/results/cache/`` (git-ignored), keyed by the
groundhog-mcp version, the schema and export format versions and the parameters; a run copies
the cached file. Delete the folder to rebuild.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
import uuid
from importlib import metadata
from pathlib import Path
from typing import Any

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION
from groundhog_mcp.store.records import EXPORT_FORMAT_VERSION
from groundhog_mcp.store.sqlite import SQLiteStore

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "cache"
HOT = [f"bench-hot-{i}" for i in range(10)]
FILLER = "filler-"  # the other contexts: same 1 KB state, never written by the measurement
HOT_REVISIONS = 10  # revisions of each hot context in the shallow databases
STATE_BYTES = 1024
# Bump when what a built database holds changes (payload, names, record copying).
BUILD_FORMAT = 2

__all__ = [
    "FILLER",
    "HOT",
    "HOT_REVISIONS",
    "STATE_BYTES",
    "evict",
    "filler_name",
    "history_rows",
    "payload",
    "populate",
    "resident_bytes",
]


def payload(i: int) -> dict[str, Any]:
    """A ~1 KB (compact JSON) data object; each ``i`` changes a counter and one item."""
    items = [{"id": k, "title": f"task number {k} of the plan", "done": (k + i) % 3 == 0} for k in range(12)]
    data: dict[str, Any] = {"counter": i, "owner": "agent-7", "status": "in-progress", "items": items, "notes": ""}
    pad = STATE_BYTES - len(json.dumps(data, separators=(",", ":")))
    data["notes"] = "n" * max(pad, 0)
    return data


def filler_name(n: int) -> str:
    return f"{FILLER}{n:06d}"


def cache_key(contexts: int, revisions: int) -> str:
    version = metadata.version("groundhog-context-mcp")
    return (
        f"v{version}-schema{LATEST_SCHEMA_VERSION}-export{EXPORT_FORMAT_VERSION}-build{BUILD_FORMAT}"
        f"-{contexts}x{revisions}.sqlite"
    )


async def populate(path: Path, *, contexts: int, revisions: int, use_cache: bool = True) -> dict[str, Any]:
    """Put a database of ``contexts`` contexts (hot ones with ``revisions`` revisions) at ``path``.

    Returns what it holds, its size, how long it took and whether it came from the cache."""
    started = time.perf_counter()
    cached = CACHE / cache_key(contexts, revisions)
    from_cache = use_cache and cached.exists()
    if not from_cache:
        CACHE.mkdir(parents=True, exist_ok=True)
        building = cached.with_suffix(f".building-{os.getpid()}")
        try:
            await _build(building, contexts=contexts, revisions=revisions)
            building.replace(cached)  # atomic: a half-built file is never taken for a cached one
        finally:
            for leftover in building.parent.glob(building.name + "*"):
                leftover.unlink()
    shutil.copyfile(cached, path)
    conn = sqlite3.connect(path)
    try:
        counts: dict[str, Any] = {
            "contexts": conn.execute("SELECT count(*) FROM contexts").fetchone()[0],
            "hot_contexts": len(HOT),
            "hot_revisions": conn.execute("SELECT revision FROM contexts WHERE name = ?", (HOT[0],)).fetchone()[0],
            "history_rows": conn.execute("SELECT count(*) FROM history").fetchone()[0],
            "changes": conn.execute("SELECT count(*) FROM changes").fetchone()[0],
        }
    finally:
        conn.close()
    counts["file_mb"] = round(path.stat().st_size / 2**20, 1)
    counts["from_cache"] = from_cache
    counts["populate_s"] = round(time.perf_counter() - started, 2)
    return counts


async def _build(path: Path, *, contexts: int, revisions: int) -> None:
    template = path.with_name(path.name + "-template")
    async with StateManager.open(template) as manager:
        for name in HOT:
            await manager.register(name, state=ContextState(data=payload(0)))
            for i in range(1, min(revisions, HOT_REVISIONS)):
                await manager.update(name, data=payload(i))
        if contexts > len(HOT):
            await manager.register(filler_name(0), state=ContextState(data=payload(0)))
        records = [record async for record in manager.store.export_records()]

    sequence = max(r["sequence"] for r in records if r["type"] == "change")
    extra: list[dict[str, Any]] = []
    filler = _records_of(records, filler_name(0)) if contexts > len(HOT) else {}
    for n in range(1, contexts - len(HOT)):
        sequence += 1
        name, context_id = filler_name(n), str(uuid.uuid4())
        extra += [
            _copy(filler["context"], id=context_id, name=name),
            _copy(filler["revision"], context_id=context_id, sequence=sequence),
            _copy(filler["name_revision"], name=name),
            _copy(filler["change"], context_id=context_id, name=name, sequence=sequence),
        ]
    if revisions > HOT_REVISIONS:
        for name in HOT:
            hot = _records_of(records, name)
            for revision in range(HOT_REVISIONS + 1, revisions + 1):
                sequence += 1
                extra.append(_copy(hot["revision"], revision=revision, sequence=sequence))
                extra.append(_copy(hot["change"], revision=revision, sequence=sequence))
            hot["context"]["revision"] = revisions
            hot["name_revision"]["last_revision"] = revisions
    # Records in export order (each kind together, changes by sequence), as an export file is.
    kinds = [k["type"] for k in records if k["type"] != "header"]
    order = {kind: i for i, kind in enumerate(dict.fromkeys(kinds))}
    body = sorted(records[1:] + extra, key=lambda r: (order[r["type"]], r.get("sequence", 0)))
    store = SQLiteStore(path, synchronous="NORMAL")
    await store.open()
    try:
        await store.import_records([records[0], *body], actor="bench")
    finally:
        await store.close()  # checkpoints: the file alone is the whole database, ready to copy
    template.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(template) + suffix).unlink(missing_ok=True)


def _records_of(records: list[dict[str, Any]], name: str) -> dict[str, dict[str, Any]]:
    """The context, name_revision and latest revision and change records of one context."""
    context = next(r for r in records if r["type"] == "context" and r["name"] == name)
    latest = context["revision"]
    return {
        "context": context,
        "name_revision": next(r for r in records if r["type"] == "name_revision" and r["name"] == name),
        "revision": next(
            r
            for r in records
            if r["type"] == "revision" and r["context_id"] == context["id"] and r["revision"] == latest
        ),
        "change": next(
            r for r in records if r["type"] == "change" and r["context_id"] == context["id"] and r["revision"] == latest
        ),
    }


def _copy(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    # Shallow: the (large) state objects are shared between copies; the import only reads them.
    return {**record, **changes}


# -- the page cache -------------------------------------------------------------------------


def evict(path: Path) -> None:
    """Drop ``path`` (and its WAL) from the kernel's page cache: flush it, then
    ``posix_fadvise(DONTNEED)``. Per file, so no root and no effect on other work."""
    for file in (path, Path(str(path) + "-wal")):
        if not file.exists():
            continue
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages cannot be dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def resident_bytes(path: Path) -> int | None:
    """Bytes of ``path`` in the page cache (util-linux ``fincore``), or None without it."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return int(out.stdout.split()[0])
    except (IndexError, ValueError):
        return None


def history_rows(path: Path) -> dict[str, int]:
    """Snapshots kept per hot context (min and max over them) and their highest revision."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT count(h.revision), max(c.revision) FROM contexts c JOIN history h ON h.context_id = c.id"
            f" WHERE c.name IN ({', '.join('?' for _ in HOT)}) GROUP BY c.id",
            HOT,
        ).fetchall()
    finally:
        conn.close()
    return {
        "snapshots_min": min(r[0] for r in rows),
        "snapshots_max": max(r[0] for r in rows),
        "revision_max": max(r[1] for r in rows),
    }
