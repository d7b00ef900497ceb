"""Several groundhog-mcp instances on one PostgreSQL database, over real stdio (issue 7).

    python benchmarks/bench_postgres.py            # ~1 minute
    python benchmarks/bench_postgres.py --quick    # ~20 s
    python benchmarks/bench_postgres.py --url postgresql://user@host/db

Three measurements, every instance a real ``groundhog-mcp`` process driven by the MCP SDK
client (``--url`` default: ``GROUNDHOG_TEST_POSTGRES_URL`` or the local test server; every
run works in a fresh schema, dropped at the end):

1. One instance: ``get_state`` and ``update_state`` p50/p99 on PostgreSQL, and on SQLite
   alongside it (same machine, same run) for the ratio.
2. Scale-out: 1, 2 and 4 instances, each driven by one client writing its own context
   (``update_state`` back to back, no conflicts): aggregate writes/s and per-call p50/p99.
3. Cross-instance notification: a client of instance A subscribed to a context (legacy
   ``resources/subscribe``), a client of instance B writes it, one write at a time. Latency
   is from the commit (the change's timestamp, taken in the write transaction: same clock)
   to the ``notifications/resources/updated`` arriving at A's client, through B's NOTIFY,
   A's LISTEN session, A's change feed and A's notifier.

It prints a table and exits 0; it asserts nothing (tests never assert on wall-clock time).
Shared machines drift: compare figures from one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import mcp_types as types
import psycopg
from mcp import Client, StdioServerParameters
from mcp.client.session import IncomingMessage
from mcp.client.stdio import stdio_client

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_URL = os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CALL_TIMEOUT_S = 30.0
NOTIFY_TIMEOUT_S = 10.0
# A small but realistic state: a ~1 KB data object, one field changing per write.
PAD = "x" * 900


@dataclass(frozen=True)
class Mode:
    latency_calls: int  # per series, per backend
    scale_seconds: float  # per instance count
    notifications: int
    warmup: int


FULL = Mode(latency_calls=1000, scale_seconds=8.0, notifications=500, warmup=100)
QUICK = Mode(latency_calls=300, scale_seconds=3.0, notifications=150, warmup=30)


def data(i: int) -> dict[str, Any]:
    return {"counter": i, "owner": "bench", "notes": PAD}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def server_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")}
    for name in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME"):
        path = home / name.lower()
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    env["GROUNDHOG_LOG_LEVEL"] = "WARNING"
    return env


@contextlib.asynccontextmanager
async def instance(
    database: str, home: Path, handler: Callable[[IncomingMessage], Any] | None = None
) -> AsyncIterator[Client]:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "groundhog_mcp", "--database", database],
        env=server_env(home),
        cwd=str(REPO),
    )
    with (home / "stderr.log").open("a") as errlog:
        client = Client(
            stdio_client(params, errlog=errlog),
            mode="legacy",
            message_handler=handler,
            read_timeout_seconds=CALL_TIMEOUT_S,
        )
        async with client:
            yield client


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{tool} failed: {text}")
    return result.structured_content or {}


async def timed(client: Client, tool: str, arguments: dict[str, Any]) -> float:
    started = time.perf_counter()
    await call(client, tool, arguments)
    return (time.perf_counter() - started) * 1000


# -- 1. one instance: PostgreSQL vs SQLite ---------------------------------------------------


async def single_instance(database: str, home: Path, mode: Mode) -> dict[str, list[float]]:
    async with instance(database, home) as client:
        await call(client, "register_context", {"name": "solo", "state": {"data": data(0)}})
        for i in range(mode.warmup):
            await call(client, "update_state", {"name": "solo", "data": data(i)})
            await call(client, "get_state", {"name": "solo"})
        reads: list[float] = []
        writes: list[float] = []
        for i in range(mode.latency_calls):  # interleaved, so drift hits both alike
            writes.append(await timed(client, "update_state", {"name": "solo", "data": data(i)}))
            reads.append(await timed(client, "get_state", {"name": "solo"}))
    return {"get_state": reads, "update_state": writes}


# -- 2. scale-out: writes/s with N instances -------------------------------------------------


async def scale_out(database: str, home: Path, instances: int, mode: Mode) -> tuple[float, list[float]]:
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(instance(database, home / f"i{instances}-{k}")) for k in range(instances)
        ]
        for k, client in enumerate(clients):
            await call(client, "register_context", {"name": f"w{instances}-{k}", "state": {"data": data(0)}})
            for i in range(mode.warmup // 2):
                await call(client, "update_state", {"name": f"w{instances}-{k}", "data": data(i)})
        latencies: list[float] = []
        deadline = 0.0

        async def writer(client: Client, name: str) -> int:
            n = 0
            while time.perf_counter() < deadline:
                latencies.append(await timed(client, "update_state", {"name": name, "data": data(n)}))
                n += 1
            return n

        started = time.perf_counter()
        deadline = started + mode.scale_seconds
        counts = await asyncio.gather(*(writer(c, f"w{instances}-{k}") for k, c in enumerate(clients)))
        elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, latencies


# -- 3. notification latency across instances ------------------------------------------------


class Arrivals:
    """When each ``resources/updated`` reached the subscriber (wall clock, for the server's timestamps)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.changed = asyncio.Event()

    async def __call__(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            self.times.append(time.time())
            self.changed.set()

    async def next(self, count: int) -> float:
        async with asyncio.timeout(NOTIFY_TIMEOUT_S):
            while len(self.times) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.times[count - 1]


async def notification_latency(database: str, home: Path, mode: Mode) -> tuple[list[float], list[float]]:
    arrivals = Arrivals()
    async with (
        instance(database, home / "a", arrivals) as a,
        instance(database, home / "b") as b,
    ):
        await call(b, "register_context", {"name": "watched", "state": {"data": data(0)}})
        await call(a, "get_state", {"name": "watched"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            await a.subscribe_resource("groundhog://contexts/watched/state")
        from_commit: list[float] = []
        from_ack: list[float] = []
        for i in range(mode.warmup // 2 + mode.notifications):
            written = await call(b, "update_state", {"name": "watched", "data": data(i)})
            acknowledged = time.time()
            arrived = await arrivals.next(i + 1)
            if i >= mode.warmup // 2:
                committed = datetime.fromisoformat(written["timestamp"].replace("Z", "+00:00")).timestamp()
                from_commit.append((arrived - committed) * 1000)
                from_ack.append((arrived - acknowledged) * 1000)
    return from_commit, from_ack


# -- running it ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def fresh_schema(url: str) -> AsyncIterator[str]:
    schema = f"gh_bench_{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in url else "?"
    try:
        yield f"{url}{separator}schema={schema}"
    finally:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
            await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def row(label: str, values: list[float]) -> str:
    return f"  {label:<34} p50 {statistics.median(values):7.2f} ms   p99 {pct(values, 99):7.2f} ms   (n={len(values)})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL database (a schema is created in it)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    load = os.getloadavg()[0]
    print(
        f"groundhog-mcp on PostgreSQL: {os.cpu_count()} CPUs, load {load:.1f}, mode {'quick' if args.quick else 'full'}"
    )
    if load > (os.cpu_count() or 1) / 2:
        print("  warning: the machine is busy; figures will be noisy")
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as admin:
        version = (await (await admin.execute("SHOW server_version")).fetchone() or ("?",))[0]
    print(f"  PostgreSQL {version} at {args.url.split('@')[-1]}\n")

    with tempfile.TemporaryDirectory(prefix="gh-bench-pg-") as tmp:
        home = Path(tmp)
        print("1. One instance, sequential calls (~1 KB state)")
        async with fresh_schema(args.url) as database:
            postgres = await single_instance(database, home / "pg", mode)
        sqlite = await single_instance(str(home / "sqlite" / "bench.sqlite"), home / "sqlite", mode)
        for tool in ("get_state", "update_state"):
            print(row(f"{tool}  PostgreSQL", postgres[tool]))
            print(row(f"{tool}  SQLite", sqlite[tool]))
            ratio = statistics.median(postgres[tool]) / statistics.median(sqlite[tool])
            print(f"  {tool}  PostgreSQL / SQLite p50: {ratio:.2f}x (target <= 1.5x)")

        print("\n2. Scale-out: N instances, one writer each on its own context, update_state back to back")
        single = 0.0
        for count in (1, 2, 4):
            async with fresh_schema(args.url) as database:
                throughput, latencies = await scale_out(database, home / "scale", count, mode)
            single = single or throughput
            label = f"{count} instance{'s' if count > 1 else ''}"
            print(
                f"  {label:<12} {throughput:7.0f} writes/s ({throughput / single:.2f}x)"
                f"   p50 {statistics.median(latencies):6.2f} ms   p99 {pct(latencies, 99):6.2f} ms"
            )

        print("\n3. Cross-instance notification: write through B -> resources/updated at a client of A")
        async with fresh_schema(args.url) as database:
            from_commit, from_ack = await notification_latency(database, home / "notify", mode)
        print(row("from commit (change timestamp)", from_commit))
        print(row("from B's acknowledgement", from_ack))


if __name__ == "__main__":
    asyncio.run(main())
