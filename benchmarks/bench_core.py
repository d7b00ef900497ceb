"""Core latency, scale and memory benchmark for groundhog-mcp over real stdio (DESIGN.md §11).

    python benchmarks/bench_core.py            # full: 1,000 calls per series, 100,000 contexts (< 3 min)
    python benchmarks/bench_core.py --quick    # 400 calls per series, 10,000 contexts

Every figure is measured in the same run against a baseline measured alongside it: a no-op
``MCPServer`` tool over the same transport (the protocol floor), one ``fdatasync`` of an
appended 4 KiB block in the database's directory (the durability floor), and the same call on
a 10-context database. Batches of every series are interleaved, in a rotating order, so
machine drift hits all of them alike; every figure is also given per round (min / median /
max of the rounds' medians), with the 1-minute load average of each round.

What is measured at which size:

- ``update_state`` on 10 contexts, on N contexts (100,000; 10,000 with ``--quick``), and on
  10 contexts with 10,000 revisions each: with retention off (all 10,000+ snapshots retained)
  and, separately, with the default retention (``keep_revisions=100``: the warm-up's first
  writes prune each context to its last 100 snapshots);
- at N contexts: ``list_contexts`` (first page and a page deep in the list), the change feed
  (``wait_for_change`` from sequence 0, unfiltered and filtered to a context it never meets, so
  it scans its bound of 10,000 changes) and ``get_metrics``; warm (repeated calls) and cold:
  before each cold call another server commits a write (so the measured server's SQLite page
  cache is discarded) and the file is evicted from the kernel's page cache
  (``posix_fadvise(DONTNEED)``, checked with ``fincore``).

Prints a table and writes the same figures as JSON (default: benchmarks/results/latest.json).
Exits 0 when the run completed, whatever the figures. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters
from populate import HOT, HOT_REVISIONS, evict, filler_name, history_rows, payload, populate, resident_bytes

__all__ = [
    "CALL_TIMEOUT_S",
    "HOT",
    "HOT_REVISIONS",
    "POPULATE_TIMEOUT_S",
    "START_TIMEOUT_S",
    "Series",
    "Server",
    "bench_env",
    "call",
    "fsync_series",
    "get_series",
    "groundhog_args",
    "noop_series",
    "payload",
    "populate",
    "populate_hot",
    "run_in_workdir",
    "spread",
    "start_server",
    "update_series",
    "warn_if_loaded",
    "write_results",
]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
FSYNC_BLOCK = b"\xa5" * 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Ratio = dict[str, Any]
CALL_TIMEOUT_S = 30  # a hung server fails the run instead of stalling it
START_TIMEOUT_S = 60
POPULATE_TIMEOUT_S = 600
PAGE = 10  # list_contexts / get_metrics / wait_for_change page size: the 10-context baseline is one page


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # interleaved rounds; each runs one batch of every series
    batch: int  # sequential calls per latency series per round
    scale_batch: int  # calls per warm list / feed / metrics series per round (cold ones: one)
    warmup: int  # unrecorded calls per series before the first round
    many_contexts: int  # contexts in the "many" database
    deep_revisions: int  # revisions of the written context in the "deep" databases
    idle_s: float  # how long the servers sit idle before their RSS and idle CPU are read


FULL = Mode(
    "full", rounds=20, batch=50, scale_batch=3, warmup=200, many_contexts=100_000, deep_revisions=10_000, idle_s=3.0
)
QUICK = Mode(
    "quick", rounds=8, batch=50, scale_batch=2, warmup=100, many_contexts=10_000, deep_revisions=10_000, idle_s=1.0
)


# -- processes --------------------------------------------------------------------------------


def child_pids() -> set[int]:
    me = os.getpid()
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == me:
            found.add(int(entry))
    return found


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


@dataclass
class Server:
    label: str
    client: Client
    pid: int
    startup_ms: float
    revisions: dict[str, int] = field(default_factory=dict)  # hot context -> revision of the last write


def groundhog_args(database: Path, *extra: str) -> list[str]:
    """The command line of a measured groundhog-mcp server (stdio, warnings only, on stderr)."""
    return ["-m", "groundhog_mcp", "--database", str(database), "--log-level", "WARNING", *extra]


def bench_env(workdir: Path, **settings: str) -> dict[str, str]:
    """A server's environment: ``settings`` (``GROUNDHOG_*``) and no user config file."""
    return {"XDG_CONFIG_HOME": str(workdir / "config"), **settings}


async def populate_hot(path: Path, *, revisions: int, contexts: int = len(HOT)) -> dict[str, Any]:
    """``populate`` a database (``contexts``, the hot ones with ``revisions`` each), bounded in time."""
    async with asyncio.timeout(POPULATE_TIMEOUT_S):
        return await populate(path, contexts=contexts, revisions=revisions)


def warn_if_loaded() -> tuple[float, float, float]:
    """The load average now, with a warning when the machine is already busy."""
    load = os.getloadavg()
    if load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"  warning: load average {load[0]:.2f} on {os.cpu_count()} CPUs; expect noisy figures")
    return load


def run_in_workdir(
    run: Callable[[Path], Coroutine[Any, Any, dict[str, Any]]], *, prefix: str, parent: Path | None, keep: bool = False
) -> dict[str, Any]:
    """Run a benchmark in a new directory under ``parent`` (default: the temporary one), removed
    afterwards unless ``keep``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        return asyncio.run(run(workdir))
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def write_results(results: dict[str, Any], render: Callable[[dict[str, Any]], str], output: Path) -> None:
    """Print the report's table and write its JSON to ``output``."""
    print()
    print(render(results))
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {output}")


async def start_server(stack: contextlib.AsyncExitStack, label: str, args: list[str], env: dict[str, str]) -> Server:
    before = child_pids()
    started = time.perf_counter()
    params = StdioServerParameters(command=sys.executable, args=args, env=env, cwd=str(REPO))
    async with asyncio.timeout(START_TIMEOUT_S):
        client = await stack.enter_async_context(Client(params, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S))
    startup_ms = (time.perf_counter() - started) * 1000
    new = child_pids() - before
    if len(new) != 1:
        raise RuntimeError(f"{label}: expected one new child process, found {sorted(new)}")
    return Server(label, client, new.pop(), startup_ms)


async def call(server: Server, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await server.client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{server.label}: {tool} failed: {text}")
    return result.structured_content or {}


# -- series -----------------------------------------------------------------------------------


@dataclass
class Series:
    key: str
    label: str
    run_once: Callable[[], Awaitable[None]]
    pid: int | None = None  # server process whose CPU time is charged to this series
    writes: Server | None = None  # for writes: the server whose hot contexts' revisions grow
    # Untimed, before every timed call (the cold series: invalidate and evict the caches).
    prepare: Callable[[], Awaitable[None]] | None = None
    batches_ms: list[list[float]] = field(default_factory=list)  # one list per round
    batches_run: int = 0  # warm-up batches included
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    async def batch(self, n: int, *, record: bool = True) -> None:
        samples: list[float] = []
        cpu_s = 0.0  # the server's CPU time during the timed calls only
        for _ in range(n):
            if self.prepare is not None:
                await self.prepare()
            cpu_before = cpu_seconds(self.pid) if self.pid else 0.0
            t0 = time.perf_counter_ns()
            await self.run_once()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if self.pid:
                cpu_s += cpu_seconds(self.pid) - cpu_before
        if record:
            self.batches_ms.append(samples)
            self.cpu_s += cpu_s
        self.batches_run += 1

    def round_p50s(self) -> list[float]:
        return [statistics.median(b) for b in self.batches_ms]

    def summary(self) -> dict[str, Any]:
        s = sorted(x for b in self.batches_ms for x in b)
        total_ms = sum(s)
        return {
            "label": self.label,
            "calls": len(s),
            "p50_ms": round(statistics.median(s), 4),
            "p99_ms": round(s[max(0, -(-99 * len(s) // 100) - 1)], 4),  # nearest rank
            "mean_ms": round(total_ms / len(s), 4),
            "calls_per_s": round(len(s) / (total_ms / 1000), 1),
            "server_cpu_ms_per_call": round(self.cpu_s * 1000 / len(s), 4) if self.pid else None,
            "round_p50_ms": spread(self.round_p50s(), 3),
            **self.extra,
        }


def spread(values: list[float], digits: int = 3) -> dict[str, float]:
    """min / median / max of per-round figures."""
    return {
        "min": round(min(values), digits),
        "median": round(statistics.median(values), digits),
        "max": round(max(values), digits),
    }


async def _nothing() -> None:
    pass


def noop_series(server: Server) -> Series:
    async def once() -> None:
        await call(server, "noop", {})

    return Series("noop", "noop tool (MCPServer floor)", once, server.pid)


def get_series(key: str, label: str, server: Server) -> Series:
    async def once() -> None:
        await call(server, "get_state", {"name": HOT[0]})

    return Series(key, label, once, server.pid)


def update_series(key: str, label: str, server: Server) -> Series:
    counter = iter(range(1, 10**9))
    pool = [payload(i) for i in range(3)]  # built once: the client's own work stays out of the timing

    series = Series(key, label, _nothing, server.pid, writes=server)

    async def once() -> None:
        name = HOT[series.batches_run % len(HOT)]  # one hot context per batch, in turn
        i = next(counter)
        data = {**pool[i % 3], "counter": i}  # a new value every write (1,020-1,030 bytes)
        arguments = {"name": name, "data": data, "expected_revision": server.revisions[name]}
        server.revisions[name] = (await call(server, "update_state", arguments))["revision"]

    series.run_once = once
    return series


def fsync_series(directory: Path) -> tuple[Series, Callable[[], None]]:
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    async def once() -> None:
        os.write(fd, FSYNC_BLOCK)
        os.fdatasync(fd)

    def close() -> None:
        os.close(fd)
        path.unlink(missing_ok=True)

    return Series("fsync", "fdatasync of an appended 4 KiB block", once), close


def tool_series(key: str, label: str, server: Server, tool: str, arguments: dict[str, Any]) -> Series:
    """Repeated calls of one read-only tool (list, feed, metrics)."""

    async def once() -> None:
        await call(server, tool, arguments)

    return Series(key, label, once, server.pid)


def cold_series(
    key: str, label: str, server: Server, tool: str, arguments: dict[str, Any], *, writer: Server, database: Path
) -> Series:
    """One call of ``tool`` on ``server`` with both caches cold: before it, ``writer`` (another
    process on the same file) commits a write, which makes ``server``'s SQLite connection discard
    its page cache at its next read; once ``server``'s change feed has read that write, the file
    is evicted from the kernel's page cache. ``extra['resident_after_evict_bytes']`` keeps the
    largest resident size seen just before a timed call (``fincore``), the evidence."""
    series = tool_series(key, label, server, tool, arguments)
    counter = iter(range(10**9))
    resident: list[int] = []

    async def prepare() -> None:
        written = await call(writer, "update_state", {"name": filler_name(0), "data": payload(next(counter))})
        seen = await call(
            server, "wait_for_change", {"after_sequence": written["sequence"] - 1, "timeout": 10, "limit": 1}
        )
        if seen["timed_out"]:
            raise RuntimeError(f"{key}: {server.label} did not see {writer.label}'s write within 10 s")
        evict(database)
        left = resident_bytes(database)
        if left is not None:
            resident.append(left)
            series.extra["resident_after_evict_bytes"] = max(resident)

    series.prepare = prepare
    return series


# -- run ----------------------------------------------------------------------------------------


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp core benchmark ({mode.name}) in {workdir}", flush=True)
    load_at_start = warn_if_loaded()
    n, deep = mode.many_contexts, mode.deep_revisions
    built = {  # database -> (contexts, revisions of the hot contexts)
        "small": (10, HOT_REVISIONS),
        "many": (n, HOT_REVISIONS),
        "deep_keep_all": (10, deep),
        "deep_kept_100": (10, deep),
    }
    paths = {key: workdir / f"{key}.sqlite" for key in built}
    db_info: dict[str, Any] = {}
    for key, (contexts, revisions) in built.items():
        db_info[key] = await populate_hot(paths[key], contexts=contexts, revisions=revisions)
        print(f"  populated {key}: {db_info[key]}", flush=True)
    # server -> (database, GROUNDHOG_KEEP_REVISIONS); many_cold serves the cold-cache calls only
    serving = {
        "small": ("small", "100"),
        "many": ("many", "100"),
        "many_cold": ("many", "100"),
        "deep_keep_all": ("deep_keep_all", "0"),
        "deep_kept_100": ("deep_kept_100", "100"),
    }

    # No user config file may leak into the measured server.
    env = bench_env(workdir, GROUNDHOG_TOOLS="all")
    loads: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        noop = await start_server(stack, "noop", [str(HERE / "noop_server.py")], env)
        servers = {
            key: await start_server(
                stack,
                f"groundhog-{key}",
                groundhog_args(paths[database]),
                env | {"GROUNDHOG_KEEP_REVISIONS": keep},
            )
            for key, (database, keep) in serving.items()
        }

        # Idle RSS and CPU: after start-up and one call each.
        await call(noop, "noop", {})
        for server in servers.values():
            await call(server, "get_state", {"name": HOT[0]})
        pids = {"noop": noop.pid, **{f"groundhog_{k}": s.pid for k, s in servers.items()}}
        cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
        await asyncio.sleep(mode.idle_s)
        idle_cpu = {k: (cpu_seconds(pid) - cpu_before[k]) / mode.idle_s * 100 for k, pid in pids.items()}
        rss_idle = {k: rss_mb(pid) for k, pid in pids.items()}
        for server in servers.values():
            for name in HOT:
                server.revisions[name] = (await call(server, "get_state", {"name": name}))["revision"]

        deep_cursor, deep_first = await _deep_cursor(servers["many"], n)
        # A context whose only change lies beyond the feed scan's bound (the last filler): a
        # filtered wait_for_change from sequence 0 reads up to that bound and returns nothing.
        unreached = [filler_name(n - len(HOT) - 1)]
        reads = {
            "list_first": ("list_contexts", {"limit": PAGE}, "list_contexts, first page"),
            "list_deep": (
                "list_contexts",
                {"limit": PAGE, "cursor": deep_cursor},
                f"list_contexts, page at {deep_first}",
            ),
            "feed": ("wait_for_change", {"after_sequence": 0, "limit": PAGE, "timeout": 0}, "wait_for_change from 0"),
            "feed_scan": (
                "wait_for_change",
                {"contexts": unreached, "after_sequence": 0, "limit": PAGE, "timeout": 0},
                "wait_for_change from 0, filtered",
            ),
            "metrics": ("get_metrics", {"limit": PAGE}, "get_metrics"),
        }
        fsync, close_fsync = fsync_series(workdir)
        stack.callback(close_fsync)
        latency = [
            noop_series(noop),
            get_series("get_state", "get_state, 1 KB state", servers["small"]),
            update_series("update_state", "update_state, 1 KB data (10 contexts)", servers["small"]),
            update_series("update_state_many", f"update_state, {n:,} contexts", servers["many"]),
            update_series(
                "update_state_deep_keep_all",
                f"update_state, {deep:,} revisions retained (keep all)",
                servers["deep_keep_all"],
            ),
            update_series(
                "update_state_deep_kept_100", f"update_state, {deep:,} revisions, keep 100", servers["deep_kept_100"]
            ),
            fsync,
        ]
        scale = [
            tool_series(f"{kind}_10", f"{label} (10 contexts)", servers["small"], tool, args)
            for kind, (tool, args, label) in reads.items()
            if kind not in ("list_deep", "feed_scan")  # a scan's bound, not the size, sets its cost
        ] + [
            tool_series(f"{kind}_many", f"{label} ({n:,}, warm)", servers["many"], tool, args)
            for kind, (tool, args, label) in reads.items()
        ]
        cold = [
            cold_series(
                f"{kind}_cold",
                f"{label} ({n:,}, cold)",
                servers["many_cold"],
                tool,
                args,
                writer=servers["many"],
                database=paths["many"],
            )
            for kind, (tool, args, label) in reads.items()
        ]
        scanned = (await call(servers["many"], "wait_for_change", reads["feed_scan"][1]))["cursor"]
        for s in latency:
            for _ in range(len(HOT)):  # spread over the hot contexts like the measured batches
                await s.batch(mode.warmup // len(HOT), record=False)
            if s.writes is not None:
                s.extra["revisions_at_start"] = min(s.writes.revisions.values())
        for s in scale + cold:
            await s.batch(1, record=False)
        series = latency + scale + cold
        batch = (
            {s.key: mode.batch for s in latency} | {s.key: mode.scale_batch for s in scale} | {s.key: 1 for s in cold}
        )
        started = time.perf_counter()
        for r in range(mode.rounds):
            offset = r % len(series)  # rotate the order so no series always follows the same one
            for s in series[offset:] + series[:offset]:
                await s.batch(batch[s.key])
            loads.append(os.getloadavg()[0])
            print(f"\r  round {r + 1}/{mode.rounds}", end="", flush=True)
        measured_s = time.perf_counter() - started
        print(flush=True)
        for s in latency:
            if s.writes is not None:
                s.extra["revisions_at_end"] = max(s.writes.revisions.values())
        rss_after = {k: rss_mb(pid) for k, pid in pids.items()}
        startup_ms = {"noop": noop.startup_ms, **{f"groundhog_{k}": s.startup_ms for k, s in servers.items()}}
    by_key = {s.key: s for s in series}
    # Read after the servers closed (they fold their WAL back): what each write series left.
    for key, database in (
        ("update_state", "small"),
        ("update_state_deep_keep_all", "deep_keep_all"),
        ("update_state_deep_kept_100", "deep_kept_100"),
    ):
        by_key[key].extra["history"] = history_rows(paths[database])
    summaries = {k: s.summary() for k, s in by_key.items()}
    p50 = {k: v["p50_ms"] for k, v in summaries.items()}
    rounds = {k: s.round_p50s() for k, s in by_key.items()}

    def latency_ratio(name: str, formula: str, target: float | None, fn: Callable[[dict[str, float]], float]) -> Ratio:
        # The headline value uses the p50 of all calls; the spread is the same ratio per round.
        per_round = [fn({k: v[r] for k, v in rounds.items()}) for r in range(mode.rounds)]
        return _ratio(name, formula, fn(p50), target) | {"rounds": spread(per_round)}

    def over(a: str, b: str) -> Callable[[dict[str, float]], float]:
        return lambda m: m[a] / m[b]

    ratios = [
        latency_ratio(
            "write vs floor",
            "update_state p50 / (noop p50 + fsync p50)",
            1.3,
            lambda m: m["update_state"] / (m["noop"] + m["fsync"]),
        ),
        latency_ratio("read vs floor", "get_state p50 / noop p50", 1.15, over("get_state", "noop")),
        latency_ratio(
            "contexts scale", f"update_state p50: {n:,} / 10 contexts", 1.2, over("update_state_many", "update_state")
        ),
        latency_ratio(
            "history scale, retention off",
            f"update_state p50: {deep:,}+ snapshots kept (keep all) / 10 contexts (keep 100)",
            1.2,
            over("update_state_deep_keep_all", "update_state"),
        ),
        latency_ratio(
            "history scale, retention on",
            f"update_state p50: {deep:,}+ revisions, 100 kept / 10 contexts (keep 100)",
            1.2,
            over("update_state_deep_kept_100", "update_state"),
        ),
        _ratio("idle memory", "groundhog RSS / noop RSS", rss_idle["groundhog_small"] / rss_idle["noop"], 1.2),
    ]
    for kind, (_, _, label) in reads.items():
        if kind == "feed_scan":
            continue
        base = "list_first_10" if kind == "list_deep" else f"{kind}_10"
        ratios.append(latency_ratio(f"{kind} scale", f"{label}: {n:,} / 10 contexts", None, over(f"{kind}_many", base)))
    for kind, (_, _, label) in reads.items():
        ratios.append(
            latency_ratio(f"{kind} cold", f"{label}, {n:,}: cold / warm", None, over(f"{kind}_cold", f"{kind}_many"))
        )
    return {
        "benchmark": "bench_core",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir)
        | {"loadavg_at_start": load_at_start, "loadavg_1min_rounds": spread(loads, 2)},
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "scale_batch": mode.scale_batch,
            "warmup": mode.warmup,
            "calls_per_series": mode.rounds * mode.batch,
            "state_bytes": len(json.dumps(payload(0), separators=(",", ":"))),
            "measured_s": round(measured_s, 1),
            "feed_changes_scanned": scanned,
            "cache_eviction": "posix_fadvise(DONTNEED) per file after fsync; checked with fincore",
        },
        "databases": db_info,
        "series": summaries,
        "rss_mb": {
            "idle_after_one_call": {k: round(v, 1) for k, v in rss_idle.items()},
            "after_benchmark": {k: round(v, 1) for k, v in rss_after.items()},
        },
        "idle_cpu_percent": {k: round(v, 2) for k, v in idle_cpu.items()},
        "startup_ms": {k: round(v, 1) for k, v in startup_ms.items()},
        "ratios": ratios,
        "all_targets_met": all(r["met"] for r in ratios if r["target"] is not None),
    }


async def _deep_cursor(server: Server, contexts: int) -> tuple[str, str]:
    """A ``next_cursor`` the server issued, 99 % of the way down the list, and the first name of
    the page it opens: the page of the ten fillers ``filler-0NNNN0`` … ``-9`` ends with one
    ``limit=5`` call and its cursor works without the prefix."""
    n = (contexts - len(HOT)) * 99 // 100
    n -= n % 10
    page = await call(server, "list_contexts", {"prefix": filler_name(n)[:-1], "limit": 5})
    cursor = page["next_cursor"]
    if not cursor:
        raise RuntimeError(f"list_contexts under {filler_name(n)[:-1]!r} returned no next_cursor")
    deep = await call(server, "list_contexts", {"cursor": cursor, "limit": PAGE})
    return cursor, deep["contexts"][0]["name"]


def _ratio(name: str, formula: str, value: float, target: float | None) -> Ratio:
    met = None if target is None else value <= target
    return {"name": name, "formula": formula, "value": round(value, 3), "target": target, "met": met}


def _environment(workdir: Path) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", "groundhog_mcp"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "mcp": metadata.version("mcp"),
        "groundhog_mcp": metadata.version("groundhog-context-mcp"),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "workdir": str(workdir),
    }


# -- report -------------------------------------------------------------------------------------


def verdict(ratio: Ratio) -> str:
    """ok / MISSED against the target, and "within noise" when the target lies inside the
    rounds' spread (some rounds meet it, some do not)."""
    if ratio["target"] is None:
        return "(info)"
    text = "ok" if ratio["met"] else "MISSED"
    rounds = ratio.get("rounds")
    if rounds is not None and rounds["min"] <= ratio["target"] <= rounds["max"]:
        text += ", within noise"
    return text


def render(results: dict[str, Any]) -> str:
    p = results["parameters"]
    env = results["environment"]
    load = env["loadavg_1min_rounds"]
    lines = [
        f"groundhog-mcp core benchmark ({results['mode']}, {env['git_commit']}, "
        f"Python {env['python']}, mcp {env['mcp']}, {env['cpus']} CPUs)",
        f"{p['calls_per_series']} calls per latency series ({p['scale_batch']} per round for list/feed/metrics, "
        f"1 per round cold) after warm-up, interleaved in {p['rounds']} rounds; {p['state_bytes']} B state; "
        f"measured in {p['measured_s']} s",
        f"1-minute load average: {env['loadavg_at_start'][0]:.2f} at start; over the rounds min {load['min']:.2f} / "
        f"median {load['median']:.2f} / max {load['max']:.2f}",
        "",
        f"{'series':<52}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU':>9}   {'round p50s min / med / max':>28}",
    ]
    for s in results["series"].values():
        cpu = f"{s['server_cpu_ms_per_call']:.2f}" if s["server_cpu_ms_per_call"] is not None else "-"
        r = s["round_p50_ms"]
        lines.append(
            f"{s['label'][:51]:<52}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{cpu:>9}   "
            f"{r['min']:>8.3f} / {r['median']:>7.3f} / {r['max']:>7.3f}"
        )
    writes = [
        f"{k} {v['revisions_at_start']:,} → {v['revisions_at_end']:,}"
        + (f" ({v['history']['snapshots_min']:,}-{v['history']['snapshots_max']:,} kept)" if "history" in v else "")
        for k, v in results["series"].items()
        if "revisions_at_start" in v
    ]
    lines.append(f"revisions of the written contexts (start → end, snapshots kept at the end): {'; '.join(writes)}")
    lines.append(f"changes the filtered wait_for_change from 0 scans (its bound): {p['feed_changes_scanned']:,}")
    evicted = [v["resident_after_evict_bytes"] for v in results["series"].values() if "resident_after_evict_bytes" in v]
    if evicted:
        lines.append(f"cold calls: at most {max(evicted):,} bytes of the file resident after eviction (fincore)")
    idle = results["rss_mb"]["idle_after_one_call"]
    after = results["rss_mb"]["after_benchmark"]
    cpu = results["idle_cpu_percent"]
    lines += ["", f"{'process':<42}{'idle RSS MB':>12}{'RSS after MB':>14}{'idle CPU %':>12}{'start-up ms':>13}"]
    for key in idle:
        lines.append(
            f"{key:<42}{idle[key]:>12.1f}{after[key]:>14.1f}{cpu[key]:>12.2f}{results['startup_ms'][key]:>13.0f}"
        )
    lines += ratio_lines(results["ratios"])
    return "\n".join(lines)


def ratio_lines(ratios: list[Ratio]) -> list[str]:
    """The ratio table of a report: value, target (``≤``, or ``≥`` for a ``"sense": ">="``
    ratio), the rounds' spread and the verdict."""
    lines = ["", f"{'ratio (same run)':<78}{'value':>7}{'target':>8}  {'rounds min / med / max':>24}  result"]
    for r in ratios:
        sign = "≥" if r.get("sense") == ">=" else "≤"
        target = "-" if r["target"] is None else f"{sign} {r['target']}"
        rounds = r.get("rounds")
        spread_text = "{min:.2f} / {median:.2f} / {max:.2f}".format(**rounds) if rounds else "-"
        name = (r["name"] + ": " + r["formula"])[:77]
        lines.append(f"{name:<78}{r['value']:>7.3f}{target:>8}  {spread_text:>24}  {verdict(r)}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and 10,000 contexts")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    results = run_in_workdir(
        lambda workdir: run(mode, workdir), prefix="groundhog-bench-", parent=args.dir, keep=args.keep
    )
    write_results(results, render, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
