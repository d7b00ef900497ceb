"""Encryption at rest: update_state and get_state with a key vs without, over real stdio servers.

In one run: a no-op ``MCPServer`` tool (the protocol floor), a server on a plaintext SQLite file
and a server on an encrypted one (``GROUNDHOG_ENCRYPTION_KEY``), each a subprocess driven by the
SDK client. Batches of every series are interleaved in a rotating order, so drift hits all alike.
States of 1 KB and 64 KB; every write sends a new value (a real revision with a small diff).

Target (issue 6): update_state p50 with encryption ≤ 1.15 x without.

    python benchmarks/bench_encryption.py [--rounds 20 --batch 50] [--output FILE]
    python benchmarks/bench_encryption.py --postgres [URL]   # the same on PostgreSQL (two fresh schemas)
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET = 1.15


def payload(i: int, size: int) -> dict[str, Any]:
    """About ``size`` bytes of compact JSON; each ``i`` changes a counter and one item."""
    items = [{"id": k, "title": f"task number {k} of the plan", "done": (k + i) % 3 == 0} for k in range(12)]
    data: dict[str, Any] = {"counter": i, "owner": "agent-7", "items": items, "notes": ""}
    data["notes"] = "n" * max(size - len(json.dumps(data, separators=(",", ":"))), 0)
    return data


def server(args: list[str], env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(REPO))


def database(args: argparse.Namespace, tmp: str, label: str, schema: str) -> str:
    if args.postgres:
        separator = "&" if "?" in args.postgres else "?"
        return f"{args.postgres}{separator}schema={schema}"
    return str(Path(tmp) / f"{label}.sqlite")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument(
        "--postgres",
        nargs="?",
        const=os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        default=None,
        help="run on PostgreSQL at this URL (default: the local test server) instead of SQLite files",
    )
    args = parser.parse_args()
    if args.output is None:
        args.output = HERE / "results" / ("encryption_postgres.json" if args.postgres else "encryption.json")
    schemas = [f"bench_enc_{label}_{os.getpid()}" for label in ("plain", "encrypted")]
    try:
        await run(args, schemas)
    finally:
        if args.postgres:
            import psycopg

            async with await psycopg.AsyncConnection.connect(args.postgres, autocommit=True) as conn:
                for schema in schemas:
                    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def run(args: argparse.Namespace, schemas: list[str]) -> None:
    sys.path.insert(0, str(REPO))
    from groundhog_mcp.security.crypto import generate_key

    with tempfile.TemporaryDirectory() as tmp:
        base = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
        base["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")  # no user config file reaches the servers
        keyed = {**base, "GROUNDHOG_ENCRYPTION_KEY": generate_key()}
        serve = ["-m", "groundhog_mcp", "--log-level", "WARNING", "--database"]
        async with (
            Client(server([str(HERE / "noop_server.py")], base), mode="legacy") as noop,
            Client(server([*serve, database(args, tmp, "plain", schemas[0])], base), mode="legacy") as plain,
            Client(server([*serve, database(args, tmp, "encrypted", schemas[1])], keyed), mode="legacy") as encrypted,
        ):
            servers = {"plain": plain, "encrypted": encrypted}
            revisions: dict[tuple[str, int], int] = {}
            counter = 0

            def writer(client: Client, label: str, size: int) -> Callable[[], Awaitable[None]]:
                async def write() -> None:
                    nonlocal counter
                    counter += 1
                    result = await client.call_tool(
                        "update_state",
                        {
                            "name": f"bench-{size}",
                            "data": payload(counter, size),
                            "expected_revision": revisions[(label, size)],
                        },
                    )
                    assert not result.is_error, result.content
                    assert result.structured_content is not None
                    revisions[(label, size)] = result.structured_content["revision"]

                return write

            def reader(client: Client, size: int) -> Callable[[], Awaitable[None]]:
                async def read() -> None:
                    result = await client.call_tool("get_state", {"name": f"bench-{size}"})
                    assert not result.is_error, result.content

                return read

            async def call_noop() -> None:
                await noop.call_tool("noop", {})

            series: dict[str, Callable[[], Awaitable[None]]] = {"noop": call_noop}
            for label, client in servers.items():
                for size in (1024, 65536):
                    registered = await client.call_tool(
                        "register_context",
                        {"name": f"bench-{size}", "state": {"data": payload(0, size)}, "settings": {}},
                    )
                    assert not registered.is_error, registered.content
                    revisions[(label, size)] = 1
                    series[f"update_state {size // 1024}K {label}"] = writer(client, label, size)
                    series[f"get_state {size // 1024}K {label}"] = reader(client, size)

            for call in series.values():
                for _ in range(args.warmup):
                    await call()
            samples: dict[str, list[float]] = {name: [] for name in series}
            names = list(series)
            for round_number in range(args.rounds):
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    call = series[name]
                    for _ in range(args.batch):
                        started = time.perf_counter()
                        await call()
                        samples[name].append((time.perf_counter() - started) * 1000)

    results: dict[str, Any] = {"series": {}, "ratios": {}}
    print(f"{'series':<26}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}   n")
    for name, values in samples.items():
        figures = {"p50": pct(values, 0.5), "p95": pct(values, 0.95), "mean": statistics.fmean(values)}
        results["series"][name] = {k: round(v, 4) for k, v in figures.items()} | {"n": len(values)}
        print(f"{name:<26}{figures['p50']:>9.3f}{figures['p95']:>9.3f}{figures['mean']:>9.3f}   {len(values)}")
    print()
    for operation in ("update_state", "get_state"):
        for size in ("1K", "64K"):
            on = results["series"][f"{operation} {size} encrypted"]["p50"]
            off = results["series"][f"{operation} {size} plain"]["p50"]
            ratio = on / off
            verdict = ("met" if ratio <= TARGET else "MISSED") if operation == "update_state" else ""
            results["ratios"][f"{operation} {size}"] = {"encrypted_p50": on, "plain_p50": off, "ratio": round(ratio, 3)}
            target = f"(target <= {TARGET}: {verdict})" if verdict else ""
            print(f"{operation} {size}: encrypted/plain p50 = {on:.3f}/{off:.3f} ms = {ratio:.3f}x {target}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    asyncio.run(main())
