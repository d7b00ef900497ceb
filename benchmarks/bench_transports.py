"""update_state and get_state over stdio, streamable HTTP and legacy HTTP+SSE, each against a
no-op tool over the same transport, in one run (issue 6).

    python benchmarks/bench_transports.py            # 3,000 calls per series
    python benchmarks/bench_transports.py --quick    # 1,000 calls per series

Six server processes: for each transport, ``benchmarks/noop_server.py`` (an ``MCPServer`` with one
``async def noop() -> str`` tool: the protocol floor of that transport) and ``groundhog-mcp`` on
its own copy of a database populated by bench_core.py (ten hot contexts, 1 KB state, 10
revisions). Over HTTP both listen on 127.0.0.1 (groundhog-mcp with ``serve --transport
http|sse --port N``, no token file: loopback needs none); the clients are the SDK's
``streamable_http_client`` (``Client(url)``) and ``sse_client``, all in the legacy
(initialize) protocol era like bench_core.py. Series are bench_core.py's: ``noop``,
``get_state`` of a 1 KB state, ``update_state`` with a new 1 KB ``data`` and
``expected_revision``, plus the in-process ``fdatasync`` probe (the durability floor). Batches of
every series are interleaved round by round in a rotating order. Prints p50/p99 per series and,
per transport, the ratios to that transport's floor; writes JSON (default
benchmarks/results/transports.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_core import (
    CALL_TIMEOUT_S,
    HOT,
    HOT_REVISIONS,
    START_TIMEOUT_S,
    Series,
    Server,
    _environment,  # pyright: ignore[reportPrivateUsage]
    call,
    fsync_series,
    get_series,
    groundhog_args,
    noop_series,
    populate_hot,
    run_in_workdir,
    start_server,
    update_series,
    warn_if_loaded,
    write_results,
)
from mcp import Client
from mcp.client.sse import sse_client

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TRANSPORTS = ("stdio", "http", "sse")
# The budget's targets for stdio (DESIGN.md §11, bench_core.py), shown for reference: issue 6 sets
# none per transport.
WRITE_REFERENCE = 1.3
READ_REFERENCE = 1.15


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    batch: int
    warmup: int


FULL = Mode("full", rounds=30, batch=100, warmup=300)
QUICK = Mode("quick", rounds=10, batch=100, warmup=100)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def wait_for_port(port: int, process: asyncio.subprocess.Process, label: str) -> None:
    """Until the port accepts a connection (bounded; a process that exits first fails the run)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"{label}: exited with {process.returncode} before listening on {port}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{label}: not listening on {port} after {START_TIMEOUT_S} s")


async def stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), 5)


async def start_http_server(
    stack: contextlib.AsyncExitStack, label: str, transport: str, args: list[str], env: dict[str, str], log: Path
) -> Server:
    """A server process on a free loopback port, and an SDK client connected to it."""
    port = free_port()
    started = time.perf_counter()
    with log.open("ab") as errlog:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            "--port",
            str(port),
            cwd=REPO,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=errlog,
        )
    stack.push_async_callback(stop_process, process)
    await wait_for_port(port, process, label)
    if transport == "http":
        client = Client(f"http://127.0.0.1:{port}/mcp", mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S)
    else:
        client = Client(sse_client(f"http://127.0.0.1:{port}/sse"), mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S)
    async with asyncio.timeout(START_TIMEOUT_S):
        await stack.enter_async_context(client)
    return Server(label, client, process.pid, (time.perf_counter() - started) * 1000)


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp transport benchmark ({mode.name}) in {workdir}", flush=True)
    load_at_start = warn_if_loaded()
    populated = await populate_hot(workdir / "populated.sqlite", revisions=HOT_REVISIONS)
    print(f"  populated: {populated}", flush=True)

    # No user config file, token file or GROUNDHOG_* variable may reach the measured servers.
    config_home = str(workdir / "config")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("GROUNDHOG_")} | {
        "XDG_CONFIG_HOME": config_home
    }
    async with contextlib.AsyncExitStack() as stack:
        noops: dict[str, Server] = {}
        groundhogs: dict[str, Server] = {}
        for transport in TRANSPORTS:
            database = workdir / f"{transport}.sqlite"
            shutil.copyfile(workdir / "populated.sqlite", database)
            command = groundhog_args(database)
            if transport == "stdio":
                noops[transport] = await start_server(
                    stack, "noop-stdio", [str(HERE / "noop_server.py")], {"XDG_CONFIG_HOME": config_home}
                )
                groundhogs[transport] = await start_server(
                    stack, "groundhog-stdio", command, {"XDG_CONFIG_HOME": config_home}
                )
            else:
                log = workdir / f"{transport}.stderr"
                noops[transport] = await start_http_server(
                    stack,
                    f"noop-{transport}",
                    transport,
                    [str(HERE / "noop_server.py"), "--transport", transport],
                    base_env,
                    log,
                )
                serve_args = ["-m", "groundhog_mcp", "serve", "--transport", transport, *command[2:]]
                groundhogs[transport] = await start_http_server(
                    stack, f"groundhog-{transport}", transport, serve_args, base_env, log
                )
            server = groundhogs[transport]
            for name in HOT:
                server.revisions[name] = (await call(server, "get_state", {"name": name}))["revision"]
            print(f"  started {transport}: noop pid {noops[transport].pid}, groundhog pid {server.pid}", flush=True)

        fsync, close_fsync = fsync_series(workdir)
        stack.callback(close_fsync)
        series: list[Series] = []
        for transport in TRANSPORTS:
            noop = noop_series(noops[transport])
            noop.key, noop.label = f"noop_{transport}", f"{transport}: noop tool (floor)"
            series += [
                noop,
                get_series(f"get_state_{transport}", f"{transport}: get_state, 1 KB", groundhogs[transport]),
                update_series(f"update_state_{transport}", f"{transport}: update_state, 1 KB", groundhogs[transport]),
            ]
        series.append(fsync)
        for s in series:
            for _ in range(len(HOT)):
                await s.batch(mode.warmup // len(HOT), record=False)
        started = time.perf_counter()
        for r in range(mode.rounds):
            offset = r % len(series)
            for s in series[offset:] + series[:offset]:
                await s.batch(mode.batch)
            print(f"\r  round {r + 1}/{mode.rounds}", end="", flush=True)
        measured_s = time.perf_counter() - started
        print(flush=True)
        startup_ms = {
            **{f"noop_{t}": round(s.startup_ms, 1) for t, s in noops.items()},
            **{f"groundhog_{t}": round(s.startup_ms, 1) for t, s in groundhogs.items()},
        }

    by_key = {s.key: s for s in series}
    summaries = {k: s.summary() for k, s in by_key.items()}
    rounds = {k: s.round_p50s() for k, s in by_key.items()}

    def ratio(name: str, formula: str, numerator: str, floor: list[str], reference: float | None) -> dict[str, Any]:
        def of(values: dict[str, float]) -> float:
            return values[numerator] / sum(values[k] for k in floor)

        p50 = {k: v["p50_ms"] for k, v in summaries.items()}
        p99 = {k: v["p99_ms"] for k, v in summaries.items()}
        per_round = sorted(of({k: v[r] for k, v in rounds.items()}) for r in range(mode.rounds))
        return {
            "name": name,
            "formula": formula,
            "p50": round(of(p50), 3),
            "p99": round(of(p99), 3),
            "round_p10_p90": [
                round(per_round[len(per_round) // 10], 3),
                round(per_round[-1 - len(per_round) // 10], 3),
            ],
            "reference_target": reference,
        }

    ratios: list[dict[str, Any]] = []
    for t in TRANSPORTS:
        ratios += [
            ratio(
                f"{t}: write vs floor",
                f"update_state_{t} / (noop_{t} + fsync)",
                f"update_state_{t}",
                [f"noop_{t}", "fsync"],
                WRITE_REFERENCE,
            ),
            ratio(f"{t}: read vs floor", f"get_state_{t} / noop_{t}", f"get_state_{t}", [f"noop_{t}"], READ_REFERENCE),
            ratio(f"{t}: write vs no-op", f"update_state_{t} / noop_{t}", f"update_state_{t}", [f"noop_{t}"], None),
        ]
    for t in TRANSPORTS[1:]:
        for what in ("noop", "get_state", "update_state"):
            ratios.append(
                ratio(f"{t} vs stdio: {what}", f"{what}_{t} / {what}_stdio", f"{what}_{t}", [f"{what}_stdio"], None)
            )
    return {
        "benchmark": "bench_transports",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir) | {"loadavg_at_start": load_at_start},
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "warmup": mode.warmup,
            "calls_per_series": mode.rounds * mode.batch,
            "measured_s": round(measured_s, 1),
        },
        "database": populated,
        "series": summaries,
        "startup_ms": startup_ms,
        "ratios": ratios,
    }


def render(results: dict[str, Any]) -> str:
    p = results["parameters"]
    env = results["environment"]
    lines = [
        f"groundhog-mcp transport benchmark ({results['mode']}, {env['git_commit']}, Python {env['python']}, "
        f"mcp {env['mcp']}; load average {env['loadavg_at_start'][0]:.2f} at start, "
        f"{env['loadavg_at_end'][0]:.2f} at end on {env['cpus']} CPUs)",
        f"{p['calls_per_series']} sequential calls per series after {p['warmup']} warm-up, interleaved in "
        f"{p['rounds']} rounds of {p['batch']}; measured in {p['measured_s']} s",
        "",
        f"{'series':<38}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'calls/s':>9}{'srv CPU ms':>12}",
    ]
    for s in results["series"].values():
        cpu = f"{s['server_cpu_ms_per_call']:.3f}" if s["server_cpu_ms_per_call"] is not None else "-"
        lines.append(
            f"{s['label']:<38}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{s['mean_ms']:>9.3f}{s['calls_per_s']:>9.0f}"
            f"{cpu:>12}"
        )
    lines += [
        "",
        f"{'ratio (same run)':<70}{'p50':>7}{'p99':>7}{'per-round p10-p90':>19}  {'ref. target (p50)':<18}",
    ]
    for r in results["ratios"]:
        spread = "{:.2f} - {:.2f}".format(*r["round_p10_p90"])
        reference = ""
        if r["reference_target"] is not None:
            reference = f"≤ {r['reference_target']} {'ok' if r['p50'] <= r['reference_target'] else 'over'}"
        lines.append(
            f"{r['name'] + ': ' + r['formula']:<70}{r['p50']:>7.3f}{r['p99']:>7.3f}{spread:>19}  {reference:<18}"
        )
    startup = ", ".join(f"{k} {v:.0f}" for k, v in results["startup_ms"].items())
    lines += ["", f"start-up ms (spawn to initialized): {startup}"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 calls per series instead of 3,000")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "transports.json", help="JSON results file")
    parser.add_argument("--keep", action="store_true", help="keep the databases and server logs afterwards")
    parser.add_argument("--rounds", type=int, help="override the mode's number of rounds")
    parser.add_argument("--batch", type=int, help="override the mode's calls per series per round")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    mode = dataclasses.replace(mode, rounds=args.rounds or mode.rounds, batch=args.batch or mode.batch)
    results = run_in_workdir(
        lambda workdir: run(mode, workdir), prefix="groundhog-bench-transports-", parent=args.dir, keep=args.keep
    )
    write_results(results, render, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
