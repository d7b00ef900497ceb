"""find_contexts at scale (issue 18), on SQLite and PostgreSQL, through the library API.

100,000 contexts of ~1 KB (loaded through the store's import path, as ``populate.py`` does):
an equality on an indexed pointer (p50 ≤ 10 ms on both backends), an unindexed condition over
10,000 contexts (≤ 200 ms), a text search over 100,000 (≤ 50 ms on SQLite), and the database
size with and without the search indexes. Each series is measured against ``get`` of one
context by name (the store's cheapest indexed read) in the same run.

    python benchmarks/bench_search.py            # ~4 min: 100,000 and 10,000 contexts, both backends
    python benchmarks/bench_search.py --quick    # 10,000 / 2,000 contexts, fewer calls
    python benchmarks/bench_search.py --no-postgres   # or --no-sqlite

Prints figures; exits 0 whenever the run completed (a missed target prints MISSED).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store import open_store
from groundhog_mcp.store.core import StoreCore

POSTGRES_URL = os.environ.get("GROUNDHOG_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
FILLER = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor " * 9
INDEXED = "/data/owner"


def payload(i: int) -> dict[str, Any]:
    """~1 KB: an owner (500 values, indexed), a priority (1,000 values), a status, a title with
    a topic word shared by 1 in 1,000 contexts, and filler text."""
    return {
        "owner": f"user{i % 500}",
        "priority": i % 1000,
        "status": ("open", "done", "blocked")[i % 3],
        "title": f"task {i} about topic{i % 1000}",
        "tags": [f"t{i % 7}", f"t{i % 11}"],
        "body": FILLER,
    }


async def load(database: str, contexts: int) -> None:
    """``contexts`` contexts, imported in one transaction from copies of one exported template."""
    template_db = str(Path(tempfile.mkdtemp()) / "template.sqlite")
    async with StateManager.open(template_db) as manager:
        await manager.register("template", state=ContextState(data=payload(0)))
        records = [r async for r in manager.store.export_records()]
    header = records[0]
    by_type = {r["type"]: r for r in records[1:]}
    body: dict[str, list[dict[str, Any]]] = {"context": [], "revision": [], "name_revision": [], "change": []}
    for i in range(contexts):
        name, context_id = f"c{i:06d}", str(uuid.uuid4())
        state = {**by_type["context"]["state"], "data": payload(i)}
        body["context"].append({**by_type["context"], "id": context_id, "name": name, "state": state})
        body["revision"].append({**by_type["revision"], "context_id": context_id, "sequence": i + 1, "state": state})
        body["name_revision"].append({**by_type["name_revision"], "name": name})
        body["change"].append({**by_type["change"], "context_id": context_id, "name": name, "sequence": i + 1})
    store = open_store(database, synchronous="NORMAL")
    await store.open()
    try:
        await store.import_records([header, *(r for kind in body.values() for r in kind)], actor="bench")
    finally:
        await store.close()


async def timed(fn: Callable[[], Awaitable[Any]], calls: int) -> dict[str, float]:
    for _ in range(min(5, calls)):
        await fn()
    times: list[float] = []
    for _ in range(calls):
        start = time.perf_counter()
        await fn()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"p50_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(len(times) * 0.95) - 1], 3)}


async def sizes(database: str) -> dict[str, int]:
    """Bytes of the contexts table, of its search indexes, and of the whole database."""
    if database.startswith("postgresql://"):
        schema = database.split("schema=")[1]
        async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
            await conn.execute(f'SET search_path TO "{schema}"')
            cur = await conn.execute(
                "SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND (c.relname LIKE 'contexts%%')",
                (schema,),
            )
            rows = {str(r[0]): int(r[1]) for r in await cur.fetchall()}
            total = await (await conn.execute("SELECT pg_total_relation_size('contexts')")).fetchone()
        return {**rows, "contexts_total_with_indexes": int(total[0]) if total else 0}
    import sqlite3

    conn = sqlite3.connect(database)
    try:
        rows = conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name").fetchall()
        named = {str(n): int(s) for n, s in rows if str(n).startswith(("contexts", "context_text"))}
        named["context_text (FTS5, all tables)"] = sum(s for n, s in named.items() if n.startswith("context_text"))
        page = conn.execute("PRAGMA page_size").fetchone()[0] * conn.execute("PRAGMA page_count").fetchone()[0]
        return {**{k: v for k, v in named.items() if not k.startswith("context_text_")}, "file": int(page)}
    finally:
        conn.close()


async def measure(database: str, contexts: int, calls: int, *, text: bool) -> dict[str, Any]:
    started = time.perf_counter()
    await load(database, contexts)
    loaded_s = time.perf_counter() - started
    out: dict[str, Any] = {"contexts": contexts, "load_s": round(loaded_s, 1)}
    before = await sizes(database)
    manager = StateManager(open_store(database, search_budget_ms=60_000))
    await manager.start()
    try:
        store = manager.store
        assert isinstance(store, StoreCore)
        unindexed = [{"path": "/data/priority", "op": "ge", "value": 990}]
        out["baseline_get_by_name"] = await timed(lambda: manager.get("c000123"), calls)
        out["unindexed_range"] = await timed(lambda: manager.find(where=unindexed), max(10, calls // 5))
        if text:
            out["text_search"] = await timed(lambda: manager.find(text="topic417"), calls)
        started = time.perf_counter()
        store.search_indexes = ()
        from groundhog_mcp.store.search import parse_ref

        await store.ensure_search_indexes((parse_ref(INDEXED, "bench"),))
        out["index_build_s"] = round(time.perf_counter() - started, 2)
        n = iter(range(10**9))
        out["indexed_eq"] = await timed(
            lambda: manager.find(where=[{"path": INDEXED, "op": "eq", "value": f"user{next(n) % 500}"}]), calls
        )
        page = await manager.find(where=[{"path": INDEXED, "op": "eq", "value": "user17"}], limit=100)
        out["indexed_eq_found_per_page"] = len(page.contexts)
    finally:
        await manager.close()
    out["bytes_before_pointer_index"] = before
    out["bytes_after_pointer_index"] = await sizes(database)
    return out


def verdict(value: float, target: float) -> str:
    return f"{value:.2f} ms (target ≤ {target:g} ms: {'met' if value <= target else 'MISSED'})"


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "search.json")
    options = parser.parse_args()
    big, small, calls = (10_000, 2_000, 50) if options.quick else (100_000, 10_000, 200)
    workdir = Path(tempfile.mkdtemp(prefix="bench-search-"))
    results: dict[str, Any] = {"load_average": os.getloadavg()}
    schemas: list[str] = []
    backends: list[tuple[str, Callable[[str], str]]] = []
    if not options.no_sqlite:
        backends.append(("sqlite", lambda name: str(workdir / f"{name}.sqlite")))
    if not options.no_postgres:

        def pg(name: str) -> str:
            schemas.append(f"bench_search_{name}_{uuid.uuid4().hex[:8]}")
            return f"{POSTGRES_URL}?schema={schemas[-1]}"

        backends.append(("postgres", pg))
    try:
        for kind, database in backends:
            results[f"{kind}_big"] = await measure(database("big"), big, calls, text=True)
            results[f"{kind}_small"] = await measure(database("small"), small, calls, text=False)
            print(json.dumps({kind: [results[f"{kind}_big"], results[f"{kind}_small"]]}), flush=True)
    finally:
        if schemas:
            async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
                for schema in schemas:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    for kind, _ in backends:
        b, s = results[f"{kind}_big"], results[f"{kind}_small"]
        print(f"{kind}: indexed equality over {b['contexts']:,}: {verdict(b['indexed_eq']['p50_ms'], 10)}")
        print(f"{kind}: unindexed range over {s['contexts']:,}: {verdict(s['unindexed_range']['p50_ms'], 200)}")
        if kind == "sqlite":
            print(f"{kind}: text search over {b['contexts']:,}: {verdict(b['text_search']['p50_ms'], 50)}")
        print(f"{kind}: get by name (baseline, same run): {b['baseline_get_by_name']['p50_ms']:.2f} ms")
    options.output.parent.mkdir(parents=True, exist_ok=True)
    options.output.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
