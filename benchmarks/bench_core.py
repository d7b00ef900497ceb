"""Core latency, scale and memory benchmark for groundhog-mcp over real stdio (DESIGN.md §11).

    python benchmarks/bench_core.py            # full: 6,000 calls per series, 100,000 contexts
    python benchmarks/bench_core.py --quick    # < 1 minute: 1,000 calls per series, 10,000 contexts

Every figure is measured in the same run against a baseline measured alongside it: a no-op
``MCPServer`` tool over the same transport (the protocol floor) and one ``fdatasync`` of an
appended 4 KiB block in the database's directory (the durability floor). Batches of every
series are interleaved, in a rotating order, so machine drift hits all of them alike.
Prints a table and writes the same figures as JSON (default: benchmarks/results/latest.json).
See benchmarks/README.md for what each figure means.
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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from mcp import Client, StdioServerParameters

from groundhog_mcp import ContextState, StateManager

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The contexts the measurement touches. Writes rotate over them, one per round, so the
# written context's history stays short in the "small" databases (10 + a few hundred).
HOT = [f"bench-hot-{i}" for i in range(10)]
FILLER = "filler-"  # the other contexts: same 1 KB state, never touched by the measurement
HOT_REVISIONS = 10  # revisions of each hot context in the "small" databases
STATE_BYTES = 1024
FSYNC_BLOCK = b"\xa5" * 4096
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
Ratio = dict[str, Any]
CALL_TIMEOUT_S = 30  # a hung server fails the run instead of stalling it
START_TIMEOUT_S = 60
POPULATE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # interleaved rounds; each runs one batch of every series
    batch: int  # sequential calls per series per round
    warmup: int  # unrecorded calls per series before the first round
    many_contexts: int  # contexts in the "many" database
    deep_revisions: int  # revisions of the written context in the "deep" database

    idle_s: float  # how long the servers sit idle before their RSS and idle CPU are read


FULL = Mode("full", rounds=60, batch=100, warmup=300, many_contexts=100_000, deep_revisions=10_000, idle_s=3.0)
QUICK = Mode("quick", rounds=10, batch=100, warmup=100, many_contexts=10_000, deep_revisions=10_000, idle_s=1.0)


# -- payload --------------------------------------------------------------------------------


def payload(i: int) -> dict[str, Any]:
    """A ~1 KB (compact JSON) data object; each ``i`` changes a counter and one item."""
    items = [{"id": k, "title": f"task number {k} of the plan", "done": (k + i) % 3 == 0} for k in range(12)]
    data: dict[str, Any] = {"counter": i, "owner": "agent-7", "status": "in-progress", "items": items, "notes": ""}
    pad = STATE_BYTES - len(json.dumps(data, separators=(",", ":")))
    data["notes"] = "n" * max(pad, 0)
    return data


# -- populating the databases directly (MCP would take minutes for 100,000 contexts) --------


async def populate(path: Path, *, contexts: int, revisions: int) -> dict[str, Any]:
    """A database of ``contexts`` contexts with a 1 KB state; the hot ones have ``revisions`` revisions.

    The hot contexts' first revisions and one filler are written through the library; the rest
    are copies of those rows (fresh ids, names and change sequences) inserted in one transaction,
    so every row has exactly the format the store writes.
    """
    started = time.perf_counter()
    async with StateManager.open(path) as manager:
        for name in HOT:
            await manager.register(name, state=ContextState(data=payload(0)))
            for i in range(1, min(revisions, HOT_REVISIONS)):
                await manager.update(name, data=payload(i))
        if contexts > len(HOT):
            await manager.register(f"{FILLER}{0:06d}", state=ContextState(data=payload(0)))

    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        sequence = conn.execute("SELECT max(sequence) FROM changes").fetchone()[0]
        if contexts > len(HOT):
            template = _rows(conn, f"{FILLER}{0:06d}")
            for n in range(1, contexts - len(HOT)):
                sequence += 1
                context_id = str(uuid.uuid4())
                _insert_copy(conn, template, name=f"{FILLER}{n:06d}", context_id=context_id, sequence=sequence)
        for name in HOT if revisions > HOT_REVISIONS else ():
            hot = _rows(conn, name, revision=HOT_REVISIONS)
            for revision in range(HOT_REVISIONS + 1, revisions + 1):
                sequence += 1
                conn.execute(*_insert("history", hot["history"], revision=revision, sequence=sequence))
                conn.execute(*_insert("changes", hot["changes"], revision=revision, sequence=sequence))
            conn.execute("UPDATE contexts SET revision = ? WHERE id = ?", (revisions, hot["contexts"]["id"]))
            conn.execute("UPDATE name_revisions SET last_revision = ? WHERE name = ?", (revisions, name))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        counts = {
            "contexts": conn.execute("SELECT count(*) FROM contexts").fetchone()[0],
            "hot_contexts": len(HOT),
            "hot_revisions": conn.execute("SELECT revision FROM contexts WHERE name = ?", (HOT[0],)).fetchone()[0],
            "history_rows": conn.execute("SELECT count(*) FROM history").fetchone()[0],
        }
    finally:
        conn.close()
    counts["file_mb"] = round(path.stat().st_size / 2**20, 1)
    counts["populate_s"] = round(time.perf_counter() - started, 2)
    return counts


def _rows(conn: sqlite3.Connection, name: str, revision: int | None = None) -> dict[str, dict[str, Any]]:
    """The contexts / history / changes / name_revisions rows of one context (at ``revision``)."""

    def one(sql: str, *args: Any) -> dict[str, Any]:
        cursor = conn.execute(sql, args)
        columns = [d[0] for d in cursor.description]
        row = cursor.fetchone()
        assert row is not None, f"populate: no row for {sql} {args}"
        return dict(zip(columns, row, strict=True))

    ctx = one("SELECT * FROM contexts WHERE name = ?", name)
    revision = revision or ctx["revision"]
    return {
        "contexts": ctx,
        "history": one("SELECT * FROM history WHERE context_id = ? AND revision = ?", ctx["id"], revision),
        "changes": one("SELECT * FROM changes WHERE context_id = ? AND revision = ?", ctx["id"], revision),
        "name_revisions": one("SELECT * FROM name_revisions WHERE name = ?", name),
    }


def _insert(table: str, row: dict[str, Any], **changes: Any) -> tuple[str, tuple[Any, ...]]:
    values = {**row, **changes}
    columns = ", ".join(values)
    marks = ", ".join("?" for _ in values)
    return f"INSERT INTO {table} ({columns}) VALUES ({marks})", tuple(values.values())


def _insert_copy(
    conn: sqlite3.Connection, template: dict[str, dict[str, Any]], *, name: str, context_id: str, sequence: int
) -> None:
    conn.execute(*_insert("contexts", template["contexts"], id=context_id, name=name))
    conn.execute(*_insert("history", template["history"], context_id=context_id, sequence=sequence))
    conn.execute(*_insert("changes", template["changes"], context_id=context_id, name=name, sequence=sequence))
    conn.execute(*_insert("name_revisions", template["name_revisions"], name=name))


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
    batches_ms: list[list[float]] = field(default_factory=list)  # one list per round
    batches_run: int = 0  # warm-up batches included
    cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    async def batch(self, n: int, *, record: bool = True) -> None:
        cpu_before = cpu_seconds(self.pid) if self.pid else 0.0
        samples: list[float] = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await self.run_once()
            samples.append((time.perf_counter_ns() - t0) / 1e6)
        if record:
            self.batches_ms.append(samples)
            if self.pid:
                self.cpu_s += cpu_seconds(self.pid) - cpu_before
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
            **self.extra,
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


# -- run ----------------------------------------------------------------------------------------


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp core benchmark ({mode.name}) in {workdir}", flush=True)
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"  warning: load average {load_at_start[0]:.2f} on {os.cpu_count()} CPUs; expect noisy figures")
    databases = {
        "small": (workdir / "small.sqlite", 10, HOT_REVISIONS),
        "many": (workdir / "many.sqlite", mode.many_contexts, HOT_REVISIONS),
        "deep": (workdir / "deep.sqlite", 10, mode.deep_revisions),
    }
    db_info: dict[str, Any] = {}
    for key, (path, contexts, revisions) in databases.items():
        async with asyncio.timeout(POPULATE_TIMEOUT_S):
            db_info[key] = await populate(path, contexts=contexts, revisions=revisions)
        print(f"  populated {key}: {db_info[key]}", flush=True)

    # No user config file may leak into the measured server.
    env = {"XDG_CONFIG_HOME": str(workdir / "config")}
    async with contextlib.AsyncExitStack() as stack:
        noop = await start_server(stack, "noop", [str(HERE / "noop_server.py")], env)
        servers = {
            key: await start_server(
                stack,
                f"groundhog-{key}",
                ["-m", "groundhog_mcp", "--database", str(path), "--log-level", "WARNING"],
                env,
            )
            for key, (path, _, _) in databases.items()
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

        fsync, close_fsync = fsync_series(workdir)
        stack.callback(close_fsync)
        series = [
            noop_series(noop),
            get_series("get_state", "get_state, 1 KB state", servers["small"]),
            update_series("update_state", "update_state, 1 KB data (10 contexts)", servers["small"]),
            update_series("update_state_many", f"update_state, {mode.many_contexts:,} contexts", servers["many"]),
            update_series("update_state_deep", f"update_state, {mode.deep_revisions:,} revisions", servers["deep"]),
            fsync,
        ]
        for s in series:
            for _ in range(len(HOT)):  # spread over the hot contexts like the measured batches
                await s.batch(mode.warmup // len(HOT), record=False)
            if s.writes is not None:
                s.extra["revisions_at_start"] = min(s.writes.revisions.values())
        started = time.perf_counter()
        for r in range(mode.rounds):
            offset = r % len(series)  # rotate the order so no series always follows the same one
            for s in series[offset:] + series[:offset]:
                await s.batch(mode.batch)
            print(f"\r  round {r + 1}/{mode.rounds}", end="", flush=True)
        measured_s = time.perf_counter() - started
        print(flush=True)
        for s in series:
            if s.writes is not None:
                s.extra["revisions_at_end"] = max(s.writes.revisions.values())
        rss_after = {k: rss_mb(pid) for k, pid in pids.items()}
        startup_ms = {"noop": noop.startup_ms, **{f"groundhog_{k}": s.startup_ms for k, s in servers.items()}}

    by_key = {s.key: s for s in series}
    summaries = {k: s.summary() for k, s in by_key.items()}
    p50 = {k: v["p50_ms"] for k, v in summaries.items()}
    rounds = {k: s.round_p50s() for k, s in by_key.items()}

    def latency_ratio(name: str, formula: str, target: float, fn: Callable[[dict[str, float]], float]) -> Ratio:
        # The headline value uses the p50 of all calls; the spread is the same ratio per round.
        per_round = sorted(fn({k: v[r] for k, v in rounds.items()}) for r in range(mode.rounds))
        spread = [round(per_round[len(per_round) // 10], 3), round(per_round[-1 - len(per_round) // 10], 3)]
        return _ratio(name, formula, fn(p50), target) | {"round_p10_p90": spread}

    ratios = [
        latency_ratio(
            "write vs floor",
            "update_state p50 / (noop p50 + fsync p50)",
            1.3,
            lambda m: m["update_state"] / (m["noop"] + m["fsync"]),
        ),
        latency_ratio("read vs floor", "get_state p50 / noop p50", 1.15, lambda m: m["get_state"] / m["noop"]),
        latency_ratio(
            "contexts scale",
            f"update_state p50: {mode.many_contexts:,} / 10 contexts",
            1.2,
            lambda m: m["update_state_many"] / m["update_state"],
        ),
        latency_ratio(
            "history scale",
            f"update_state p50: {mode.deep_revisions:,} / {HOT_REVISIONS} revisions",
            1.2,
            lambda m: m["update_state_deep"] / m["update_state"],
        ),
        _ratio("idle memory", "groundhog RSS / noop RSS", rss_idle["groundhog_small"] / rss_idle["noop"], 1.2),
    ]
    return {
        "benchmark": "bench_core",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir) | {"loadavg_at_start": load_at_start},
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "warmup": mode.warmup,
            "calls_per_series": mode.rounds * mode.batch,
            "state_bytes": len(json.dumps(payload(0), separators=(",", ":"))),
            "measured_s": round(measured_s, 1),
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
        "all_targets_met": all(r["met"] for r in ratios),
    }


def _ratio(name: str, formula: str, value: float, target: float) -> Ratio:
    return {"name": name, "formula": formula, "value": round(value, 3), "target": target, "met": value <= target}


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
        "groundhog_mcp": metadata.version("groundhog-mcp"),
        "git_commit": commit + ("+dirty" if dirty else ""),
        "cpus": os.cpu_count(),
        "loadavg_at_end": os.getloadavg(),
        "platform": platform.platform(),
        "workdir": str(workdir),
    }


# -- report -------------------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    p = results["parameters"]
    lines = [
        f"groundhog-mcp core benchmark ({results['mode']}, {results['environment']['git_commit']}, "
        f"Python {results['environment']['python']}, mcp {results['environment']['mcp']})",
        f"{p['calls_per_series']} sequential calls per series after {p['warmup']} warm-up, "
        f"interleaved in {p['rounds']} rounds of {p['batch']}; {p['state_bytes']} B state; "
        f"measured in {p['measured_s']} s",
        "",
        f"{'series':<42}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'calls/s':>10}{'srv CPU ms':>12}",
    ]
    for s in results["series"].values():
        cpu = f"{s['server_cpu_ms_per_call']:.3f}" if s["server_cpu_ms_per_call"] is not None else "-"
        lines.append(
            f"{s['label']:<42}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}"
            f"{s['calls_per_s']:>10.0f}{cpu:>12}"
        )
    writes = [
        f"{k} {v['revisions_at_start']:,} → {v['revisions_at_end']:,}"
        for k, v in results["series"].items()
        if "revisions_at_start" in v
    ]
    lines.append(f"revisions of the written contexts (start → end): {'; '.join(writes)}")
    idle = results["rss_mb"]["idle_after_one_call"]
    after = results["rss_mb"]["after_benchmark"]
    cpu = results["idle_cpu_percent"]
    lines += ["", f"{'process':<42}{'idle RSS MB':>12}{'RSS after MB':>14}{'idle CPU %':>12}{'start-up ms':>13}"]
    for key in idle:
        lines.append(
            f"{key:<42}{idle[key]:>12.1f}{after[key]:>14.1f}{cpu[key]:>12.2f}{results['startup_ms'][key]:>13.0f}"
        )
    lines += ["", f"{'ratio (same run)':<60}{'value':>7}{'target':>8}  {'result':<7}{'per-round p10-p90':>18}"]
    for r in results["ratios"]:
        verdict = "ok" if r["met"] else "MISSED"
        spread = "{:.2f} - {:.2f}".format(*r["round_p10_p90"]) if "round_p10_p90" in r else "-"
        lines.append(
            f"{r['name'] + ': ' + r['formula']:<60}{r['value']:>7.3f}{'≤ ' + str(r['target']):>8}  {verdict:<7}"
            f"{spread:>18}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and 10,000 contexts (< 1 minute)")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "latest.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="groundhog-bench-", dir=args.dir))
    try:
        results = asyncio.run(run(mode, workdir))
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(render(results))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
