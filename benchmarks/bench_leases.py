"""Leases: what taking turns costs, and what it saves under contention (issue 17).

    python benchmarks/bench_leases.py            # 20 rounds of 50 calls; 8 agents x 40 increments
    python benchmarks/bench_leases.py --quick    # 8 rounds of 50 calls; 8 agents x 15 increments

Real stdio server processes on one SQLite file (``synchronous=FULL``), driven by the SDK client.

1. Latency, one agent: ``update_state`` alone (with ``expected_revision``, a ~1 KB ``data``)
   against ``lease take`` followed by ``update_state`` with ``lease_token`` and
   ``release_lease`` (acquire + write + release), interleaved round by round in a rotating order.
   Target (same run): acquire + write + release p50 ≤ 2 x one update p50.
2. Contention: 8 agents, each its own server process, increment one counter N times each, first
   with plain compare-and-set (``get_state``, ``update_state`` with ``expected_revision``, retry on
   ``conflict``), then taking turns with the lease (``lease take`` with ``wait_seconds``,
   ``get_state``, ``update_state`` with the token and ``release_lease``). Reported: total time,
   writes per second and retries per write (conflicts for CAS, ``leased`` refusals for leases);
   no target. The final counter must equal 8 x N in both (no lost increment).

Prints a table and writes JSON (default benchmarks/results/leases.json). Exits 0 when the run
completed, whatever the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core import (
    Series,
    Server,
    _environment,  # pyright: ignore[reportPrivateUsage]
    _ratio,  # pyright: ignore[reportPrivateUsage]
    bench_env,
    call,
    groundhog_args,
    payload,
    ratio_lines,
    run_in_workdir,
    spread,
    start_server,
    warn_if_loaded,
    write_results,
)

HERE = Path(__file__).resolve().parent
TARGET = 2.0
AGENTS = 8


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    batch: int
    warmup: int
    increments: int


FULL = Mode("full", rounds=20, batch=50, warmup=50, increments=40)
QUICK = Mode("quick", rounds=8, batch=50, warmup=30, increments=15)


async def _latency(mode: Mode, workdir: Path, env: dict[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    database = workdir / "latency.sqlite"
    async with contextlib.AsyncExitStack() as stack:
        server = await start_server(stack, "latency", groundhog_args(database), env)
        pool = [payload(i) for i in range(3)]
        revision = {"update": 0, "leased": 0}
        for name in revision:
            revision[name] = (await call(server, "register_context", {"name": name, "state": {"data": pool[0]}}))[
                "revision"
            ]
        counter = iter(range(1, 10**9))

        async def update_once() -> None:
            i = next(counter)
            arguments = {
                "name": "update",
                "data": {**pool[i % 3], "counter": i},
                "expected_revision": revision["update"],
            }
            revision["update"] = (await call(server, "update_state", arguments))["revision"]

        async def leased_once() -> None:
            i = next(counter)
            token = (await call(server, "lease", {"name": "leased", "action": "take", "ttl_seconds": 30}))["token"]
            arguments = {
                "name": "leased",
                "data": {**pool[i % 3], "counter": i},
                "expected_revision": revision["leased"],
                "lease_token": token,
                "release_lease": True,
            }
            revision["leased"] = (await call(server, "update_state", arguments))["revision"]

        series = [
            Series("update", "update_state", update_once, server.pid),
            Series("leased", "lease take + update_state (lease_token, release_lease)", leased_once, server.pid),
        ]
        for s in series:
            await s.batch(mode.warmup, record=False)
        for r in range(mode.rounds):
            offset = r % len(series)
            for s in series[offset:] + series[:offset]:
                await s.batch(mode.batch)
            print(f"\r  latency round {r + 1}/{mode.rounds}", end="", flush=True)
        print(flush=True)
    summaries = {s.key: s.summary() for s in series}
    per_round = [a / b for a, b in zip(series[1].round_p50s(), series[0].round_p50s(), strict=True)]
    value = summaries["leased"]["p50_ms"] / summaries["update"]["p50_ms"]
    ratio = _ratio("acquire + write + release", "p50 / one update_state p50", value, TARGET)
    return summaries, ratio | {"rounds": spread(per_round)}


async def _contention(mode: Mode, workdir: Path, env: dict[str, str], how: str) -> dict[str, Any]:
    database = workdir / f"contention-{how}.sqlite"
    async with contextlib.AsyncExitStack() as stack:
        agents: list[Server] = [
            await start_server(stack, f"{how}-{i}", groundhog_args(database), env) for i in range(AGENTS)
        ]
        await call(agents[0], "register_context", {"name": "counter", "state": {"data": {"n": 0}}})
        retries = [0] * AGENTS

        async def cas(i: int, server: Server) -> None:
            for _ in range(mode.increments):
                while True:
                    state = await call(server, "get_state", {"name": "counter"})
                    n = state["state"]["data"]["n"]
                    result = await server.client.call_tool(
                        "update_state",
                        {"name": "counter", "data": {"n": n + 1}, "expected_revision": state["revision"]},
                    )
                    if not result.is_error:
                        break
                    assert (result.structured_content or {})["error"]["code"] == "conflict", result
                    retries[i] += 1

        async def leased(i: int, server: Server) -> None:
            for _ in range(mode.increments):
                while True:
                    taken = await server.client.call_tool(
                        "lease", {"name": "counter", "action": "take", "ttl_seconds": 30, "wait_seconds": 60}
                    )
                    if not taken.is_error:
                        break
                    assert (taken.structured_content or {})["error"]["code"] == "leased", taken
                    retries[i] += 1
                token = (taken.structured_content or {})["token"]
                n = (await call(server, "get_state", {"name": "counter"}))["state"]["data"]["n"]
                arguments = {"name": "counter", "data": {"n": n + 1}, "lease_token": token, "release_lease": True}
                await call(server, "update_state", arguments)

        work = cas if how == "cas" else leased
        started = time.perf_counter()
        await asyncio.gather(*(work(i, s) for i, s in enumerate(agents)))
        total_s = time.perf_counter() - started
        final = (await call(agents[0], "get_state", {"name": "counter"}))["state"]["data"]["n"]
    writes = AGENTS * mode.increments
    if final != writes:
        raise RuntimeError(f"{how}: the counter is {final} after {writes} increments: increments were lost")
    return {
        "label": "compare-and-set, retry on conflict" if how == "cas" else "leases (take with wait_seconds)",
        "agents": AGENTS,
        "writes": writes,
        "total_s": round(total_s, 3),
        "writes_per_s": round(writes / total_s, 1),
        "retries": sum(retries),
        "retries_per_write": round(sum(retries) / writes, 3),
    }


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp lease benchmark ({mode.name}) in {workdir}", flush=True)
    env = bench_env(workdir, GROUNDHOG_TOOLS="all")
    load_at_start = warn_if_loaded()
    series, ratio = await _latency(mode, workdir, env)
    contention = {}
    for how in ("cas", "leases"):
        contention[how] = await _contention(mode, workdir, env, how)
        print(f"  contention {how}: {contention[how]}", flush=True)
    return {
        "benchmark": "bench_leases",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir) | {"loadavg_at_start": load_at_start},
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "warmup": mode.warmup,
            "agents": AGENTS,
            "increments_per_agent": mode.increments,
        },
        "series": series,
        "ratios": [ratio],
        "contention": contention,
        "all_targets_met": bool(ratio["met"]),
    }


def render(results: dict[str, Any]) -> str:
    env = results["environment"]
    p = results["parameters"]
    lines = [
        f"groundhog-mcp lease benchmark ({results['mode']}, {env['git_commit']}, Python {env['python']}, "
        f"mcp {env['mcp']}; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{env['loadavg_at_end'][0]:.2f} at end on {env['cpus']} CPUs)",
        f"{p['rounds']} rounds of {p['batch']} calls per series after {p['warmup']} warm-up",
        "",
        f"{'series':<60}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU ms':>12}",
    ]
    for s in results["series"].values():
        lines.append(f"{s['label']:<60}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['server_cpu_ms_per_call']:>12.3f}")
    lines += ratio_lines(results["ratios"])
    lines += [
        "",
        f"{p['agents']} agents (server processes) incrementing one counter, {p['increments_per_agent']} each:",
        f"{'':<40}{'total s':>9}{'writes/s':>10}{'retries':>9}{'retries/write':>15}",
    ]
    for c in results["contention"].values():
        lines.append(
            f"{c['label']:<40}{c['total_s']:>9.2f}{c['writes_per_s']:>10.1f}{c['retries']:>9}{c['retries_per_write']:>15.3f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and increments")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "leases.json", help="JSON results file")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    # With --dir the databases stay there afterwards.
    results = run_in_workdir(
        lambda workdir: run(mode, workdir), prefix="gh-bench-leases-", parent=args.dir, keep=args.dir is not None
    )
    write_results(results, render, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
