"""Branches and time (issue 16): fork cost, get_state(as_of) cost, path-filtered wait latency.

    python benchmarks/bench_branches.py            # 15 rounds
    python benchmarks/bench_branches.py --quick    # 5 rounds

One groundhog-mcp server runs as a real stdio process (retention off: every revision kept) on a
copy of bench_core.py's populated database whose ten hot contexts have 10,000 revisions each
(their history timestamps spread one millisecond apart, as if written over ten seconds).
Before measuring, ``bench-hot-0``'s state is replaced by a 1 MiB one (revision 10,001).

- **fork**: ``fork_context`` of ``bench-hot-0`` (10,001 revisions, 1 MiB) into a new name, against
  one ``update_state`` of it (a one-key ``merge_patch``), interleaved call by call. Target: fork
  p50 ≤ 2 x update p50.
- **as_of**: ``get_state(as_of=T)`` of ``bench-hot-1`` at the commit time of a random revision
  among 10,000, against ``get_state(revision=n)`` of the same revision, interleaved. Target:
  p50 ratio ≤ 1.2.
- **path wait**: a ``wait_for_change(paths=["/data/target"])`` on ``bench-hot-2`` is pending while
  1,000 writes to ``/data/counter`` and then one to ``/data/target`` are made (same server); the
  latency is the waiter's return (client wall clock) minus the matching change's commit time
  (the server's clock: the same machine). Target: ≤ 50 ms.

Prints a table, writes JSON (default benchmarks/results/branches.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import random
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from bench_core import (
    HOT,
    Server,
    _environment,  # pyright: ignore[reportPrivateUsage]
    _ratio,  # pyright: ignore[reportPrivateUsage]
    bench_env,
    call,
    groundhog_args,
    populate_hot,
    run_in_workdir,
    start_server,
    write_results,
)

from groundhog_mcp.models import format_timestamp, parse_timestamp

HERE = Path(__file__).resolve().parent
REVISIONS = 10_000
STATE_MIB = 1
NON_MATCHING = 1_000
FORK_TARGET = 2.0
AS_OF_TARGET = 1.2
WAIT_TARGET_MS = 50.0


def big_state(salt: int) -> dict[str, Any]:
    """About 1 MiB of JSON: 4,000 small records."""
    return {"records": [{"id": k, "title": f"record {k} of {salt}", "tags": ["a", "b", k % 7]} for k in range(4_000)]}


def spread_history(path: Path, start: dt.datetime) -> None:
    """Give the copied revisions distinct, increasing commit times (1 ms apart)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT context_id, revision FROM history").fetchall()
        conn.executemany(
            "UPDATE history SET timestamp = ? WHERE context_id = ? AND revision = ?",
            [(format_timestamp(start + dt.timedelta(milliseconds=revision)), cid, revision) for cid, revision in rows],
        )
        conn.execute(
            "UPDATE contexts SET created_at = ?, updated_at = ?",
            (format_timestamp(start), format_timestamp(start + dt.timedelta(milliseconds=REVISIONS))),
        )
        conn.commit()
    finally:
        conn.close()


def p50(values: list[float]) -> float:
    return statistics.median(values)


async def timed(server: Server, tool: str, arguments: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    out = await call(server, tool, arguments)
    return (time.perf_counter() - started) * 1000, out


async def fork_series(server: Server, rounds: int, per_round: int, label: str) -> tuple[list[float], list[float]]:
    forks: list[float] = []
    updates: list[float] = []
    n = 0
    for _ in range(rounds):
        for _ in range(per_round):
            n += 1
            ms, _ = await timed(server, "update_state", {"name": HOT[0], "merge_patch": {"touch": n}})
            updates.append(ms)
            ms, out = await timed(server, "fork_context", {"name": HOT[0], "new_name": f"{label}-{n}"})
            assert out["forked_from"]["name"] == HOT[0], out
            forks.append(ms)
    return forks, updates


async def as_of_series(
    server: Server, rounds: int, per_round: int, start: dt.datetime
) -> tuple[list[float], list[float]]:
    rng = random.Random(16)
    by_time: list[float] = []
    by_revision: list[float] = []
    for _ in range(rounds):
        for _ in range(per_round):
            revision = rng.randrange(2, REVISIONS)
            at = format_timestamp(start + dt.timedelta(milliseconds=revision))
            ms, out = await timed(server, "get_state", {"name": HOT[1], "as_of": at})
            assert out["revision"] == revision, (revision, out["revision"])
            by_time.append(ms)
            ms, out = await timed(server, "get_state", {"name": HOT[1], "revision": revision})
            by_revision.append(ms)
    return by_time, by_revision


async def wait_latencies(server: Server, rounds: int) -> list[float]:
    latencies: list[float] = []
    for r in range(rounds):
        cursor = (await call(server, "wait_for_change", {"timeout": 0}))["cursor"]
        arguments = {"contexts": [HOT[2]], "after_sequence": cursor, "timeout": 60, "paths": ["/data/target"]}
        waiter = asyncio.create_task(server.client.call_tool("wait_for_change", arguments))
        returned_at = 0.0

        def stamp(_: object) -> None:
            nonlocal returned_at
            returned_at = time.time()

        waiter.add_done_callback(stamp)
        for i in range(NON_MATCHING):
            await call(server, "update_state", {"name": HOT[2], "merge_patch": {"counter": r * NON_MATCHING + i}})
        matching = await call(server, "update_state", {"name": HOT[2], "merge_patch": {"target": r}})
        result = await waiter
        out = result.structured_content or {}
        revisions = [c["revision"] for c in out.get("changes", [])]
        assert revisions == [matching["revision"]], f"the waiter returned {revisions}, not the matching write"
        committed = parse_timestamp(matching["timestamp"]).timestamp()
        latencies.append((returned_at - committed) * 1000)
        print(f"\r  path wait round {r + 1}/{rounds}", end="", flush=True)
    print(flush=True)
    return latencies


async def run(rounds: int, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp branches benchmark ({rounds} rounds) in {workdir}", flush=True)
    path = workdir / "branches.sqlite"
    populated = await populate_hot(path, revisions=REVISIONS)
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    spread_history(path, start)
    print(f"  populated: {populated}", flush=True)
    async with contextlib.AsyncExitStack() as stack:
        env = bench_env(workdir, GROUNDHOG_KEEP_REVISIONS="0")
        server = await start_server(stack, "branches", groundhog_args(path, "--tools", "all"), env)
        big = await call(server, "update_state", {"name": HOT[0], "data": big_state(0)})
        state_bytes = len(json.dumps(big_state(0), separators=(",", ":")))
        await fork_series(server, 1, 3, "warm")  # warm-up
        forks, updates = await fork_series(server, rounds, 4, "fork")
        await as_of_series(server, 1, 20, start)  # warm-up
        by_time, by_revision = await as_of_series(server, rounds, 40, start)
        waits = await wait_latencies(server, max(3, rounds // 3))
    fork_ratio = p50(forks) / p50(updates)
    as_of_ratio = p50(by_time) / p50(by_revision)
    ratios = [
        _ratio(
            "fork",
            f"fork_context p50 / update_state p50 ({big['revision']:,} revisions, 1 MiB)",
            fork_ratio,
            FORK_TARGET,
        ),
        _ratio(
            "as_of",
            f"get_state(as_of) p50 / get_state(revision) p50 ({REVISIONS:,} revisions)",
            as_of_ratio,
            AS_OF_TARGET,
        ),
        _ratio(
            "path wait",
            f"wait_for_change(paths) after {NON_MATCHING:,} non-matching changes: max ms after commit",
            max(waits),
            WAIT_TARGET_MS,
        ),
    ]
    return {
        "benchmark": "bench_branches",
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir),
        "database": populated | {"big_state_bytes": state_bytes},
        "series_ms": {
            "fork_context": {"p50": round(p50(forks), 3), "n": len(forks)},
            "update_state (1 MiB, merge_patch)": {"p50": round(p50(updates), 3), "n": len(updates)},
            "get_state(as_of)": {"p50": round(p50(by_time), 3), "n": len(by_time)},
            "get_state(revision)": {"p50": round(p50(by_revision), 3), "n": len(by_revision)},
            "path wait after commit": {"values": [round(w, 1) for w in waits]},
        },
        "ratios": ratios,
        "all_targets_met": all(r["met"] for r in ratios),
    }


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    lines = [
        f"groundhog-mcp branches benchmark ({env['git_commit']}, Python {env['python']}, mcp {env['mcp']}; "
        f"load average {env['loadavg_at_end'][0]:.2f} at end on {env['cpus']} CPUs)",
        "",
        f"{'series':<40}{'p50 ms':>10}{'n':>7}",
    ]
    for label, s in results["series_ms"].items():
        if "p50" in s:
            lines.append(f"{label:<40}{s['p50']:>10.3f}{s['n']:>7}")
        else:
            lines.append(f"{label:<40}{', '.join(f'{v:.1f}' for v in s['values']):>17}")
    lines += ["", f"{'ratio (same run)':<96}{'value':>8}{'target':>9}  result"]
    for r in results["ratios"]:
        verdict = "ok" if r["met"] else "MISSED"
        lines.append(f"{r['name'] + ': ' + r['formula']:<96}{r['value']:>8.3f}{'≤ ' + str(r['target']):>9}  {verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--dir", type=Path, default=None, help="where the database goes (default: a temp dir)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "branches.json")
    args = parser.parse_args()
    rounds = 5 if args.quick else 15
    results = run_in_workdir(lambda workdir: run(rounds, workdir), prefix="groundhog-bench-branches-", parent=args.dir)
    write_results(results, render, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
