"""PostgreSQL: the rate of audited writes from several namespaces at once (issue 14 item 5).

    python benchmarks/bench_audit_namespaces.py [--writers 4] [--seconds 5] [--rounds 4]
    python benchmarks/bench_audit_namespaces.py --baseline /path/to/an/older/checkout

``--writers`` store instances (each its own connection pool, as separate server processes
would be) write back to back for ``--seconds``, each its own context, audit log on; library
calls (``StateManager.update``, ~1 KB state), no MCP transport. Two series: every writer in a
namespace of its own, and every writer in one namespace (the audit chain of one namespace takes
one writer at a time, so that series is the control). Each round measures both in a fresh
schema.

``--baseline DIR`` runs every round twice, in a child process per code tree (this checkout and
``DIR``, their order alternating round by round), and prints the ratio of this checkout's rate
to the baseline's, per series. The figures depend on the machine's load: compare within one run.
It prints a table and exits 0 whatever the figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg

from groundhog_mcp import StateManager
from groundhog_mcp.models import Principal
from groundhog_mcp.security.audit import AuditKey
from groundhog_mcp.store import open_store

KEY = AuditKey("benchmark-audit-key-0123456789abcdef0123")
HERE = Path(__file__).resolve()
SERIES = ("namespaces", "one namespace")


async def rate(url: str, writers: int, seconds: float, *, shared: bool) -> float:
    """Aggregate writes/s of ``writers`` instances writing back to back for ``seconds``."""
    schema = f"gh_bench_ns_{uuid.uuid4().hex[:8]}"
    database = f"{url}?schema={schema}&pool_max_size=2"
    managers = [StateManager(open_store(database, audit_signer=KEY)) for _ in range(writers)]
    try:
        for manager in managers:
            await manager.start()
        views = [m.with_principal(Principal("bench", "shared" if shared else f"ns{k}")) for k, m in enumerate(managers)]
        for k, view in enumerate(views):
            await view.register(f"c{k}")
            for i in range(20):  # warm-up: pools filled, statements parsed
                await view.update(f"c{k}", data={"i": i, "text": "x" * 900})
        stop = time.perf_counter() + seconds
        counts = [0] * writers

        async def write(k: int) -> None:
            while time.perf_counter() < stop:
                await views[k].update(f"c{k}", data={"i": counts[k], "text": "x" * 900})
                counts[k] += 1

        started = time.perf_counter()
        await asyncio.gather(*(write(k) for k in range(writers)))
        return sum(counts) / (time.perf_counter() - started)
    finally:
        for manager in managers:
            await manager.close()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def once(url: str, writers: int, seconds: float) -> dict[str, float]:
    return {
        "namespaces": await rate(url, writers, seconds, shared=False),
        "one namespace": await rate(url, writers, seconds, shared=True),
    }


def child(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One round measured by the code in ``tree`` (a checkout: its ``groundhog_mcp`` first on the path)."""
    command = [sys.executable, str(HERE), "--once", "--postgres", args.postgres]
    command += ["--writers", str(args.writers), "--seconds", str(args.seconds)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True, cwd=tree).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--baseline", type=Path, default=None, help="an older checkout to compare with")
    parser.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.once:
        print(json.dumps(asyncio.run(once(args.postgres, args.writers, args.seconds))))
        return
    trees = {"this": HERE.parent.parent}
    if args.baseline is not None:
        trees["baseline"] = args.baseline.resolve()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for round_ in range(args.rounds):
        names = list(trees) if round_ % 2 == 0 else list(reversed(trees))
        for name in names:
            results[name].append(child(trees[name], args))
    print(f"audited writes/s, {args.writers} writers, {args.seconds:g} s each, median of {args.rounds} rounds")
    print(f"{'code':10} " + " ".join(f"{s:>14}" for s in SERIES))
    medians = {name: {s: statistics.median(r[s] for r in rounds) for s in SERIES} for name, rounds in results.items()}
    for name, values in medians.items():
        print(f"{name:10} " + " ".join(f"{values[s]:14.0f}" for s in SERIES))
    if "baseline" in medians:
        ratios = [medians["this"][s] / medians["baseline"][s] for s in SERIES]
        print(f"{'this/base':10} " + " ".join(f"{r:14.2f}" for r in ratios))
        # Round by round (each pair measured back to back): min / median / max of the ratios.
        for s in SERIES:
            pairs = sorted(t[s] / b[s] for t, b in zip(results["this"], results["baseline"], strict=True))
            print(f"  {s}: per-round ratio {pairs[0]:.2f} / {statistics.median(pairs):.2f} / {pairs[-1]:.2f}")
    print("load average (1 min) at the end:", f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
