"""In-process write path, no MCP: CPU per ``update_state`` and writes per ``COMMIT``.

    python benchmarks/bench_write_path.py [--writes-per-task N] [--in-flight K] [--pages M]

``K`` tasks each make ``N`` compare-and-set updates of their own context (a 1.3 KB state) through
``StateManager.update`` on a SQLite file (``synchronous=FULL``, audit on, the change feed's poll
off), after a warm-up of the same size. Prints CPU seconds per write (``time.process_time``:
every thread of the process, so it moves less with machine load than wall time), writes/s, writes
per ``COMMIT`` (group commit) and traced statements per write (a trigger's run counts as its
statement again; FTS5's own statements on its shadow tables are not counted). The updates change
a number only, as most agent updates do. To compare with another version of the package, run it
with ``PYTHONPATH`` pointing at an extracted copy (``git archive REV groundhog_mcp | tar -x -C
DIR``), alternating the two, and read the medians.

``--pages M``: then M single updates of one context, each alone in the WAL (after ``PRAGMA
wal_checkpoint(TRUNCATE)``), first changing a number only, then also a string; the WAL frames of
each (one per page it changed) are mapped to their table or index with ``dbstat`` and averaged.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from pathlib import Path

import groundhog_mcp
from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.store import SQLiteStore

PAYLOAD = {"items": [{"id": i, "text": f"lorem ipsum dolor sit amet {i}"} for i in range(25)]}


async def run(per_task: int, in_flight: int, pages: int) -> str:
    path = Path(tempfile.mkdtemp()) / "groundhog.sqlite"
    store = SQLiteStore(path, audit_signer=AuditKey("k" * 32))
    manager = StateManager(store, poll_interval=3600.0)
    await manager.start()
    try:
        for k in range(in_flight):
            await manager.register(f"c{k}", state=ContextState(data=PAYLOAD))

        async def task(k: int, first: int) -> None:
            revision = first
            for j in range(per_task):
                data = {**PAYLOAD, "n": first + j}
                revision = (await manager.update(f"c{k}", data=data, expected_revision=revision)).context.revision

        await asyncio.gather(*(task(k, 1) for k in range(in_flight)))  # warm-up
        statements: list[str] = []
        conn = store._conn  # pyright: ignore[reportPrivateUsage]
        assert conn is not None
        await store._call(  # pyright: ignore[reportPrivateUsage]
            conn.set_trace_callback, lambda sql: None if sql.startswith("--") else statements.append(sql)
        )
        commits = store.commit_stats.commits
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(task(k, per_task + 1) for k in range(in_flight)))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writes = in_flight * per_task
        commits = store.commit_stats.commits - commits
        await store._call(conn.set_trace_callback, None)  # pyright: ignore[reportPrivateUsage]
        report = [
            f"{Path(groundhog_mcp.__file__).parent.parent}: {in_flight} in flight, CPU {cpu / writes * 1000:.3f} "
            f"ms/write, {writes / wall:.0f} writes/s, {writes / commits:.2f} writes/commit, "
            f"{len(statements) / writes:.2f} traced statements/write"
        ]
        for label, extra in (("a number", {}), ("a number and a string", {"note": "word"})):
            if pages:
                counts = await page_counts(manager, store, path, pages, extra)
                listed = ", ".join(f"{name} {n / pages:.1f}" for name, n in counts.most_common())
                report.append(f"pages per update of {label}: {sum(counts.values()) / pages:.1f} ({listed})")
    finally:
        await manager.close()
    return "\n".join(report)


async def page_counts(
    manager: StateManager, store: SQLiteStore, path: Path, count: int, extra: dict[str, str]
) -> Counter[str]:
    """The WAL frames of ``count`` updates of ``c0``, each alone in the WAL, by table or index."""
    conn = store._conn  # pyright: ignore[reportPrivateUsage]
    assert conn is not None
    counts: Counter[str] = Counter()
    for i in range(count):
        await store._call(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())  # pyright: ignore[reportPrivateUsage]
        data = {**PAYLOAD, "n": -i, **{k: f"{v}{i}" for k, v in extra.items()}}
        await manager.update("c0", data=data)
        tables = dict(await store._call(lambda: conn.execute("SELECT pageno, name FROM dbstat").fetchall()))  # pyright: ignore[reportPrivateUsage]
        counts.update(tables.get(page, "(other)") for page in wal_pages(path))
    return counts


def wal_pages(path: Path) -> list[int]:
    """The page number of each frame in the database's WAL file (32-byte header, then frames of a
    24-byte header and one page; the header's first field is the page number)."""
    wal = path.with_name(path.name + "-wal").read_bytes()
    if len(wal) < 32:
        return []
    size = int.from_bytes(wal[8:12], "big")
    return [int.from_bytes(wal[at : at + 4], "big") for at in range(32, len(wal) - size - 23, size + 24)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes-per-task", type=int, default=120)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--pages", type=int, default=0, help="then M single updates: pages each changes")
    args = parser.parse_args()
    print(asyncio.run(run(args.writes_per_task, args.in_flight, args.pages)))


if __name__ == "__main__":
    main()
