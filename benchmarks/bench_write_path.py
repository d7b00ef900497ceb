"""In-process write path, no MCP: CPU per ``update_state`` and writes per ``COMMIT``.

    python benchmarks/bench_write_path.py [--writes-per-task N] [--in-flight K]

``K`` tasks each make ``N`` compare-and-set updates of their own context (a 1.3 KB state) through
``StateManager.update`` on a SQLite file (``synchronous=FULL``, audit on, the change feed's poll
off), after a warm-up of the same size. Prints CPU seconds per write (``time.process_time``:
every thread of the process, so it moves less with machine load than wall time), writes/s, writes
per ``COMMIT`` (group commit) and traced statements per write (a trigger's run counts as its
statement again; full-text index statements are not counted). To compare with another version of
the package, run it with ``PYTHONPATH`` pointing at an extracted copy (``git archive REV
groundhog_mcp | tar -x -C DIR``), alternating the two, and read the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import groundhog_mcp
from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.store import SQLiteStore

PAYLOAD = {"items": [{"id": i, "text": f"lorem ipsum dolor sit amet {i}"} for i in range(25)]}


async def run(per_task: int, in_flight: int) -> str:
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
    finally:
        await manager.close()
    where = Path(groundhog_mcp.__file__).parent.parent
    return (
        f"{where}: {in_flight} in flight, CPU {cpu / writes * 1000:.3f} ms/write, {writes / wall:.0f} writes/s, "
        f"{writes / commits:.2f} writes/commit, {len(statements) / writes:.2f} traced statements/write"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes-per-task", type=int, default=120)
    parser.add_argument("--in-flight", type=int, default=8)
    args = parser.parse_args()
    print(asyncio.run(run(args.writes_per_task, args.in_flight)))


if __name__ == "__main__":
    main()
