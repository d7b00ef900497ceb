"""Several groundhog-mcp instances on one PostgreSQL database, over real stdio (issue 7).

    python benchmarks/bench_postgres.py            # ~1.5 minutes on a busy 2-CPU machine
    python benchmarks/bench_postgres.py --quick    # ~1 minute there
    python benchmarks/bench_postgres.py --url postgresql://user@host/db
    python benchmarks/bench_postgres.py --audit off   # instances run with audit = false

Three measurements, every instance a real ``groundhog-mcp`` process driven by the MCP SDK
client (``--url`` default: ``GROUNDHOG_TEST_POSTGRES_URL`` or the local test server; every
run works in a fresh schema, dropped at the end):

1. One instance: ``get_state`` and ``update_state`` p50/p99 on PostgreSQL, and on SQLite
   alongside it (both instances running, batches interleaved round by round, the order
   alternating) for the ratio, with its per-round min / median / max; and PostgreSQL's commit
   floor (a one-row INSERT and COMMIT), which every write pays once.
2. Scale-out: 1, 2 and 4 instances, each driven by one client writing its own context
   (``update_state`` back to back, no conflicts): aggregate writes/s and per-call p50/p99.
   All seven instances run throughout; each round gives each group a time slice, in a
   rotating order.
3. Cross-instance notification: a client of instance A subscribed to a context (legacy
   ``resources/subscribe``), a client of instance B writes it, one write at a time. Latency
   is from the commit (the change's timestamp, taken in the write transaction: same clock)
   to the ``notifications/resources/updated`` arriving at A's client, through B's NOTIFY,
   A's LISTEN session, A's change feed and A's notifier.

Instances keep the audit log (the default) unless ``--audit off``: with it on, every write
locks its namespace's audit chain head from its first round trip to its commit (every instance here
writes the local principal's namespace, so they share that row; docs/scaling.md, "The write
path on PostgreSQL", and bench_audit_namespaces.py for several namespaces); 2. with
``--audit off`` shows the write rate without it.

It prints a table and exits 0 when the run completed, whatever the figures (non-zero only on
an error); it asserts nothing (tests never assert on wall-clock time). Shared machines drift:
compare figures from one run, not across runs.
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
    scale_seconds: float  # per instance count, over all rounds
    notifications: int
    warmup: int
    rounds: int  # the interleaved rounds of 1. and 2.


FULL = Mode(latency_calls=1000, scale_seconds=8.0, notifications=500, warmup=100, rounds=10)
QUICK = Mode(latency_calls=300, scale_seconds=3.0, notifications=150, warmup=30, rounds=6)
RATIO_TARGET = 1.5  # PostgreSQL / SQLite p50, one instance (issue 7)
AUDIT = True  # --audit on|off


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
    env["GROUNDHOG_AUDIT"] = "true" if AUDIT else "false"
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


# -- rounds -----------------------------------------------------------------------------------


def spread(values: list[float]) -> str:
    """min / median / max of per-round figures."""
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


# -- 1. one instance: PostgreSQL vs SQLite, interleaved -------------------------------------


class Solo:
    """One instance's ``update_state`` / ``get_state`` samples, per round."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.rounds: dict[str, list[list[float]]] = {"get_state": [], "update_state": []}
        self.i = 0

    async def prepare(self, warmup: int) -> None:
        await call(self.client, "register_context", {"name": "solo", "state": {"data": data(0)}})
        for _ in range(warmup):
            await self.batch(1, record=False)

    async def batch(self, calls: int, *, record: bool = True) -> None:
        reads: list[float] = []
        writes: list[float] = []
        for _ in range(calls):  # alternating, so drift hits both alike
            self.i += 1
            writes.append(await timed(self.client, "update_state", {"name": "solo", "data": data(self.i)}))
            reads.append(await timed(self.client, "get_state", {"name": "solo"}))
        if record:
            self.rounds["update_state"].append(writes)
            self.rounds["get_state"].append(reads)

    def samples(self, tool: str) -> list[float]:
        return [x for batch in self.rounds[tool] for x in batch]

    def round_p50s(self, tool: str) -> list[float]:
        return [statistics.median(batch) for batch in self.rounds[tool]]


class CommitFloor:
    """What one durable commit costs on this server: a one-row INSERT and its COMMIT, one round
    trip (autocommit), into a table of the benchmark's schema. A write cannot beat it."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self.samples: list[float] = []

    async def batch(self, calls: int) -> None:
        for _ in range(calls):
            started = time.perf_counter()
            await self.conn.execute("INSERT INTO commit_floor (at) VALUES (now())")
            self.samples.append((time.perf_counter() - started) * 1000)


async def single_instance(
    postgres: str, sqlite: str, home: Path, mode: Mode
) -> tuple[Solo, Solo, list[float], list[float]]:
    """Both instances run side by side; each round runs a batch on one then the other, the
    order alternating, so machine drift and load hit both backends alike. Each round also
    measures PostgreSQL's commit floor."""
    loads: list[float] = []
    url, schema = postgres.rsplit("schema=", 1)
    url = url.rstrip("?&")
    async with (
        instance(postgres, home / "pg") as pg_client,
        instance(sqlite, home / "sqlite") as sqlite_client,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
    ):
        await conn.execute(f'CREATE TABLE "{schema}".commit_floor (at timestamptz)')
        await conn.execute(f'SET search_path TO "{schema}"')
        floor = CommitFloor(conn)
        pg, lite = Solo(pg_client), Solo(sqlite_client)
        for solo in (pg, lite):
            await solo.prepare(mode.warmup)
        per_round = max(1, mode.latency_calls // mode.rounds)
        for r in range(mode.rounds):
            for solo in (pg, lite) if r % 2 == 0 else (lite, pg):
                await solo.batch(per_round)
            await floor.batch(per_round)
            loads.append(os.getloadavg()[0])
    return pg, lite, floor.samples, loads


# -- 2. scale-out: writes/s with N instances, interleaved -----------------------------------


@dataclass
class Group:
    """N instances on one schema, one writer each on its own context."""

    count: int
    clients: list[Client]
    latencies: list[float]
    round_rates: list[float]  # writes/s per round
    n: int = 0

    async def slice(self, seconds: float) -> None:
        deadline = time.perf_counter() + seconds

        async def writer(client: Client, name: str) -> int:
            done = 0
            while time.perf_counter() < deadline:
                self.n += 1
                self.latencies.append(await timed(client, "update_state", {"name": name, "data": data(self.n)}))
                done += 1
            return done

        started = time.perf_counter()
        counts = await asyncio.gather(*(writer(c, f"w{self.count}-{k}") for k, c in enumerate(self.clients)))
        self.round_rates.append(sum(counts) / (time.perf_counter() - started))


async def scale_out(databases: dict[int, str], home: Path, mode: Mode) -> tuple[list[Group], list[float]]:
    """Every group's instances run for the whole measurement; each round gives each group a
    slice of ``scale_seconds / rounds``, in an order that rotates, so no group gets the quiet
    or the busy minute alone."""
    loads: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        groups: list[Group] = []
        for count, database in databases.items():
            clients = [
                await stack.enter_async_context(instance(database, home / f"i{count}-{k}")) for k in range(count)
            ]
            groups.append(Group(count, clients, [], []))
            for k, client in enumerate(clients):
                await call(client, "register_context", {"name": f"w{count}-{k}", "state": {"data": data(0)}})
                for i in range(mode.warmup // 2):
                    await call(client, "update_state", {"name": f"w{count}-{k}", "data": data(i)})
        for group in groups:
            group.latencies.clear()
        seconds = mode.scale_seconds / mode.rounds
        for r in range(mode.rounds):
            offset = r % len(groups)
            for group in groups[offset:] + groups[:offset]:
                await group.slice(seconds)
            loads.append(os.getloadavg()[0])
    return groups, loads


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
    parser.add_argument("--audit", choices=["on", "off"], default="on", help="the instances' audit log")
    args = parser.parse_args()
    global AUDIT  # one setting for every instance of the run
    AUDIT = args.audit == "on"
    mode = QUICK if args.quick else FULL
    load = os.getloadavg()[0]
    print(
        f"groundhog-mcp on PostgreSQL: {os.cpu_count()} CPUs, load {load:.1f},"
        f" mode {'quick' if args.quick else 'full'}, audit {args.audit}"
    )
    if load > (os.cpu_count() or 1) / 2:
        print("  warning: the machine is busy; figures will be noisy")
    async with await psycopg.AsyncConnection.connect(args.url, autocommit=True) as admin:
        version = (await (await admin.execute("SHOW server_version")).fetchone() or ("?",))[0]
    print(f"  PostgreSQL {version} at {args.url.split('@')[-1]}\n")

    with tempfile.TemporaryDirectory(prefix="gh-bench-pg-") as tmp:
        home = Path(tmp)
        print(
            f"1. One instance, sequential calls (~1 KB state), PostgreSQL and SQLite interleaved, {mode.rounds} rounds"
        )
        async with fresh_schema(args.url) as database:
            pg, lite, floor, loads = await single_instance(database, str(home / "sqlite" / "bench.sqlite"), home, mode)
        for tool in ("get_state", "update_state"):
            print(row(f"{tool}  PostgreSQL", pg.samples(tool)) + f"   round p50s {spread(pg.round_p50s(tool))}")
            print(row(f"{tool}  SQLite", lite.samples(tool)) + f"   round p50s {spread(lite.round_p50s(tool))}")
            ratio = statistics.median(pg.samples(tool)) / statistics.median(lite.samples(tool))
            per_round = [a / b for a, b in zip(pg.round_p50s(tool), lite.round_p50s(tool), strict=True)]
            noise = ", within noise" if min(per_round) <= RATIO_TARGET <= max(per_round) else ""
            verdict = ("ok" if ratio <= RATIO_TARGET else "MISSED") + noise
            print(
                f"  {tool}  PostgreSQL / SQLite p50: {ratio:.2f}x (target <= {RATIO_TARGET}x: {verdict}); "
                f"per round min / median / max {spread(per_round)}"
            )
        print(row("PostgreSQL commit floor", floor) + "   (INSERT one row + COMMIT, one round trip)")
        print(
            "  a PostgreSQL update_state is 2 round trips (lock, reserve and read | write, audit row + COMMIT;"
            " 3 when the instance's guess of the context is stale); get_state is 1 (counted through the MCP"
            " tool, audit on: tests/store/test_postgres_sequence.py)"
        )
        print(f"  1-minute load average over the rounds: min / median / max {spread(loads)}")

        print(
            f"\n2. Scale-out: N instances, one writer each on its own context, update_state back to back;"
            f" 1, 2 and 4 instances interleaved in {mode.rounds} rounds of {mode.scale_seconds / mode.rounds:.1f} s"
        )
        async with contextlib.AsyncExitStack() as schemas:
            databases = {count: await schemas.enter_async_context(fresh_schema(args.url)) for count in (1, 2, 4)}
            groups, loads = await scale_out(databases, home / "scale", mode)
        single = statistics.median(groups[0].round_rates)
        for group in groups:
            label = f"{group.count} instance{'s' if group.count > 1 else ''}"
            rate = statistics.median(group.round_rates)
            per_round = [a / b for a, b in zip(group.round_rates, groups[0].round_rates, strict=True)]
            print(
                f"  {label:<12} {rate:7.0f} writes/s ({rate / single:.2f}x; per round {spread(per_round)})"
                f"   p50 {statistics.median(group.latencies):6.2f} ms   p99 {pct(group.latencies, 99):6.2f} ms"
            )
        print(f"  writes/s are the median over rounds; 1-minute load average min / median / max {spread(loads)}")

        print("\n3. Cross-instance notification: write through B -> resources/updated at a client of A")
        async with fresh_schema(args.url) as database:
            from_commit, from_ack = await notification_latency(database, home / "notify", mode)
        print(row("from commit (change timestamp)", from_commit))
        print(row("from B's acknowledgement", from_ack))
        print(f"  1-minute load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
