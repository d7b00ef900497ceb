"""What the audit log costs a write: ``StateManager.update`` p50 with the audit log on vs off,
on SQLite and PostgreSQL, measured in the same run, interleaved in rounds.

    python benchmarks/bench_audit.py [--writes 2000] [--postgres postgresql://postgres@127.0.0.1:5432/test]

The library call (no MCP transport) isolates the store's share: over stdio the ratio is smaller,
since the protocol floor is added to both sides (bench_core.py measures that).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from groundhog_mcp import StateManager
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.store import open_store

KEY = AuditKey("benchmark-audit-key-0123456789abcdef0123")
ROUNDS = 10


async def measure(manager: StateManager, name: str, writes: int) -> list[float]:
    samples: list[float] = []
    for i in range(writes):
        started = time.perf_counter()
        await manager.update(name, data={"i": i, "text": "x" * 900})
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def run(database_for: dict[str, str], writes: int) -> None:
    print(f"update (library call, 1 KB state) p50 ms, {writes} writes per series in {ROUNDS} rounds")
    print(f"{'backend':10} {'audit off':>10} {'audit on':>10} {'on/off':>8}")
    for backend, database in database_for.items():
        managers = {
            audit: StateManager(open_store(database, audit_signer=KEY if audit else None)) for audit in (False, True)
        }
        for manager in managers.values():
            await manager.start()
        try:
            samples: dict[bool, list[float]] = {False: [], True: []}
            for audit, manager in managers.items():
                await manager.register(f"bench-{audit}")
                await measure(manager, f"bench-{audit}", 100)  # warm-up
            for _ in range(ROUNDS):
                for audit, manager in managers.items():
                    samples[audit] += await measure(manager, f"bench-{audit}", writes // ROUNDS)
            off, on = statistics.median(samples[False]), statistics.median(samples[True])
            print(f"{backend:10} {off:10.3f} {on:10.3f} {on / off:8.3f}")
        finally:
            for manager in managers.values():
                await manager.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--writes", type=int, default=2000)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    schema = f"gh_bench_audit_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        # Both series write one database (each its own context), so they share its size and cache.
        databases = {"sqlite": str(Path(tmp) / "bench.sqlite")}
        if args.postgres:
            databases["postgres"] = f"{args.postgres}?schema={schema}"
        try:
            await run(databases, args.writes)
        finally:
            if args.postgres:
                async with await psycopg.AsyncConnection.connect(args.postgres, autocommit=True) as conn:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    asyncio.run(main())
