"""groundhog-mcp against its closest peer, mcpstate 0.2.0, over real stdio, in one run (issue 14).

    python benchmarks/bench_peer.py              # 20 rounds, ~2.5-3.5 min (the first run also builds the peer venv)
    python benchmarks/bench_peer.py --quick      # 6 rounds
    python benchmarks/bench_peer.py --profile    # instead: where one write's and one read's time goes (py-spy)

mcpstate (SQLite WAL, ``synchronous=FULL`` by SQLite's default, compare-and-set by version, no
history, feed or audit) runs from its own venv, ``benchmarks/results/peer-venv-mcpstate<v>-mcp<v>-py<v>/``
(git-ignored; built with ``pip install "mcpstate[fastmcp]==0.2.0" mcp==<our mcp version>`` on the
first run and reused), as its users start it: ``mcpstate serve --backend sqlite:///…``. Its
server is a FastMCP app over the same MCP SDK version as ours.

Processes, all stdio subprocesses of the SDK's ``Client(..., mode="legacy")``:
``benchmarks/noop_server.py`` (an ``MCPServer`` whose ``noop_dict`` tool returns a small dict: the
floor), ``python -m groundhog_mcp`` on a database with ten 1 KB contexts
(``synchronous=FULL``, history kept (100), change feed, audit log on: the defaults, set explicitly),
``mcpstate serve`` on ten 1 KB handles, and ``benchmarks/noop_fastmcp_server.py`` (the peer venv's
FastMCP with one no-op tool: mcpstate's framework floor, information only). The no-op server and
ours run from the runtime venv (``runtime_venv.py``: the runtime install only, as a user has it,
at this venv's versions); for start-up and idle RSS both are also started from this (test) venv,
whose test extras bring ``rich`` and ``pygments``, which structlog imports when installed
(information: the ``(test venv)`` ratios).

Series, interleaved in rounds in a rotating order, one call in flight:
``update_state(name, data=<1 KB>, expected_revision)`` vs mcpstate's
``state_save(kind, handle, state=<1 KB>, expect_version)``; ``get_state(name)`` vs
``state_load(handle)``; the no-op tools; an in-process ``fdatasync`` of an appended 4 KiB block
in the databases' directory. And with 8 calls in flight from one client (8 tasks, each calling
in turn; the SDK pipelines them on the one stdio stream): ``noop_dict``; ``update_state`` on 8
contexts (one each, with ``expected_revision``); ``update_state`` on one context (no
``expected_revision``: 8 compare-and-set writes of one context in flight would conflict);
mcpstate's ``state_save`` on 8 handles (information). Per round the throughput is calls / wall
time of the round's batch.

Also: idle RSS after start-up and one call; start-up (spawn to the ``tools/list`` answer)
measured ``--startups`` times per server, interleaved. Ratios are against baselines of the same
run, with the per-round min / median / max. Exits 0 when the run completed, whatever the figures.
See benchmarks/README.md, "Peer comparison (mcpstate)".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench_core import (
    CALL_TIMEOUT_S,
    HOT,
    HOT_REVISIONS,
    POPULATE_TIMEOUT_S,
    START_TIMEOUT_S,
    Ratio,
    Series,
    Server,
    _environment,  # pyright: ignore[reportPrivateUsage]
    call,
    child_pids,
    fsync_series,
    get_series,
    payload,
    populate,
    ratio_lines,
    rss_mb,
    spread,
    update_series,
)
from mcp import Client, StdioServerParameters
from runtime_venv import RUNTIME_ABSENT, runtime_python

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
MCPSTATE_VERSION = "0.2.0"
INFLIGHT = 8
KIND = "bench"
PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int
    batch: int  # sequential calls per latency series per round
    per_task: int  # calls per task per round in the 8-in-flight series (8 times this per round)
    warmup: int
    startups: int  # start-up measurements per server
    idle_s: float


FULL = Mode("full", rounds=20, batch=50, per_task=10, warmup=100, startups=5, idle_s=2.0)
QUICK = Mode("quick", rounds=6, batch=40, per_task=6, warmup=60, startups=3, idle_s=1.0)


# -- the peer's venv ------------------------------------------------------------------------------


def peer_venv(extra: tuple[str, ...] = ()) -> tuple[Path, dict[str, str]]:
    """The venv with mcpstate and our MCP SDK version (built once, then reused) and the versions in it."""
    mcp_version = metadata.version("mcp")
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = RESULTS / f"peer-venv-mcpstate{MCPSTATE_VERSION}-mcp{mcp_version}-py{py}"
    python = venv / "bin" / "python"
    probe = (
        "import importlib.metadata as m, json\n"
        "print(json.dumps({p: m.version(p) for p in ('mcpstate', 'mcp', 'fastmcp')}))"
    )
    versions: dict[str, str] = {}
    if python.exists():
        found = subprocess.run([python, "-c", probe], capture_output=True, text=True, check=False)
        if found.returncode == 0:
            versions = json.loads(found.stdout)
    if versions.get("mcpstate") != MCPSTATE_VERSION or versions.get("mcp") != mcp_version:
        print(f"  building {venv.relative_to(REPO)} (once) …", flush=True)
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pins = [f"mcpstate[fastmcp]=={MCPSTATE_VERSION}", f"mcp=={mcp_version}"]
        _pip(python, pins)
        versions = json.loads(subprocess.run([python, "-c", probe], capture_output=True, text=True, check=True).stdout)
    missing = [p for p in extra if not (venv / "bin" / p).exists()]
    if missing:
        _pip(python, missing)
    return venv, versions


def _pip(python: Path, requirements: list[str]) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
        check=True,
        timeout=PIP_TIMEOUT_S,
        stderr=subprocess.DEVNULL,  # pip's index warnings; a failure still fails the run (check)
    )


# -- servers --------------------------------------------------------------------------------------


@dataclass
class Spec:
    """How to start one server: command, arguments, environment."""

    label: str
    command: str
    args: list[str]
    env: dict[str, str]


async def start(stack: contextlib.AsyncExitStack, spec: Spec) -> Server:
    """Start ``spec`` under an SDK client; start-up is spawn to the ``tools/list`` answer."""
    before = child_pids()
    started = time.perf_counter()
    params = StdioServerParameters(command=spec.command, args=spec.args, env=spec.env, cwd=str(REPO))
    async with asyncio.timeout(START_TIMEOUT_S):
        client = await stack.enter_async_context(Client(params, mode="legacy", read_timeout_seconds=CALL_TIMEOUT_S))
        await client.list_tools()
    startup_ms = (time.perf_counter() - started) * 1000
    new = child_pids() - before
    if len(new) != 1:
        raise RuntimeError(f"{spec.label}: expected one new child process, found {sorted(new)}")
    return Server(spec.label, client, new.pop(), startup_ms)


def specs(workdir: Path, venv: Path, ours: Path | str = sys.executable, *, test_venv: bool = False) -> dict[str, Spec]:
    """The servers: the no-op floor and groundhog-mcp run by the interpreter ``ours`` (also by
    this venv's with ``test_venv``, as ``noop_testvenv`` and ``groundhog_testvenv``)."""
    config = {"XDG_CONFIG_HOME": str(workdir / "config")}  # no user config file reaches a server
    groundhog_env = config | {
        # The defaults, spelled out: durable commits, history, audit chain (the feed is always on).
        "GROUNDHOG_SYNCHRONOUS": "FULL",
        "GROUNDHOG_KEEP_REVISIONS": "100",
        "GROUNDHOG_AUDIT": "true",
    }
    fastmcp_env = config | {
        "FASTMCP_SHOW_SERVER_BANNER": "false",
        "FASTMCP_CHECK_FOR_UPDATES": "off",  # no network at start-up
        "FASTMCP_LOG_LEVEL": "WARNING",
    }
    peer_python = str(venv / "bin" / "python")
    noop_args = [str(HERE / "noop_server.py")]
    groundhog_args = ["-m", "groundhog_mcp", "--database", str(workdir / "groundhog.sqlite"), "--log-level", "WARNING"]
    found = {
        "noop": Spec("noop", str(ours), noop_args, config),
        "groundhog": Spec("groundhog", str(ours), groundhog_args, groundhog_env),
        "mcpstate": Spec(
            "mcpstate",
            str(venv / "bin" / "mcpstate"),
            ["serve", "--backend", f"sqlite:///{workdir / 'mcpstate.sqlite'}"],
            fastmcp_env | {"MCPSTATE_WRITER": "bench"},
        ),
        "noop_fastmcp": Spec("noop_fastmcp", peer_python, [str(HERE / "noop_fastmcp_server.py")], fastmcp_env),
    }
    if test_venv:
        found["noop_testvenv"] = Spec("noop_testvenv", sys.executable, noop_args, config)
        found["groundhog_testvenv"] = Spec("groundhog_testvenv", sys.executable, groundhog_args, groundhog_env)
    return found


async def peer_call(server: Server, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A call to mcpstate, which answers failures as ``{"ok": false, "error": …}``."""
    result = await server.client.call_tool(tool, arguments)
    body = result.structured_content
    if body is None:
        body = json.loads(getattr(result.content[0], "text", "{}"))
    if "ok" not in body and isinstance(body.get("result"), dict):  # a wrapped structured result
        body = body["result"]
    if result.is_error or body.get("ok") is not True:
        raise RuntimeError(f"{server.label}: {tool} failed: {json.dumps(body.get('error'))[:300]}")
    return body


# -- series ---------------------------------------------------------------------------------------


async def _nothing() -> None:
    pass


def tool_series(key: str, label: str, server: Server, tool: str) -> Series:
    async def once() -> None:
        await call(server, tool, {})

    return Series(key, label, once, server.pid)


async def _peer_save(server: Server, handle: str, state: dict[str, Any]) -> None:
    """One mcpstate CAS write of ``handle`` at the version last seen; remembers the new version."""
    arguments = {"kind": KIND, "handle": handle, "state": state, "expect_version": server.revisions[handle]}
    server.revisions[handle] = (await peer_call(server, "state_save", arguments))["version"]


def peer_save_series(server: Server) -> Series:
    """mcpstate's CAS write: a new 1 KB state with the version read, one handle per batch in turn."""
    counter = iter(range(1, 10**9))
    pool = [payload(i) for i in range(3)]
    handles = list(server.revisions)
    series = Series("mcpstate_save", "mcpstate state_save (CAS), 1 KB", _nothing, server.pid)

    async def once() -> None:
        handle = handles[series.batches_run % len(handles)]
        i = next(counter)
        await _peer_save(server, handle, {**pool[i % 3], "counter": i})

    series.run_once = once
    return series


def peer_load_series(server: Server) -> Series:
    handle = next(iter(server.revisions))

    async def once() -> None:
        await peer_call(server, "state_load", {"handle": handle})

    return Series("mcpstate_load", "mcpstate state_load, 1 KB", once, server.pid)


@dataclass
class Inflight:
    """``INFLIGHT`` tasks calling in turn over one client; one figure per round: calls/s."""

    key: str
    label: str
    call_as: Callable[[int], Awaitable[None]]  # task index -> one call
    rates: list[float] = field(default_factory=list[float])

    async def batch(self, per_task: int, *, record: bool = True) -> None:
        async def task(k: int) -> None:
            for _ in range(per_task):
                await self.call_as(k)

        started = time.perf_counter()
        async with asyncio.TaskGroup() as group:
            for k in range(INFLIGHT):
                group.create_task(task(k))
        if record:
            self.rates.append(INFLIGHT * per_task / (time.perf_counter() - started))

    def summary(self) -> dict[str, Any]:
        return {"label": self.label, "calls_per_s": spread(self.rates, 1)}


def inflight_noop(server: Server) -> Inflight:
    async def once(_: int) -> None:
        await call(server, "noop_dict", {})

    return Inflight("noop_x8", f"noop_dict, {INFLIGHT} in flight", once)


def inflight_updates(server: Server, *, one_context: bool) -> Inflight:
    counter = iter(range(1, 10**9))
    pool = [payload(i) for i in range(3)]

    async def once(k: int) -> None:
        i = next(counter)
        data = {**pool[i % 3], "counter": i}
        if one_context:
            name = HOT[-1]
            written = await call(server, "update_state", {"name": name, "data": data})
            # Keep the sequential series' expected_revision current for this context.
            server.revisions[name] = max(server.revisions[name], written["revision"])
        else:
            name = HOT[k]
            arguments = {"name": name, "data": data, "expected_revision": server.revisions[name]}
            server.revisions[name] = (await call(server, "update_state", arguments))["revision"]

    if one_context:
        return Inflight("update_x8_one", f"update_state, {INFLIGHT} in flight, one context", once)
    return Inflight("update_x8", f"update_state, {INFLIGHT} in flight, {INFLIGHT} contexts", once)


def inflight_peer_saves(server: Server) -> Inflight:
    counter = iter(range(1, 10**9))
    pool = [payload(i) for i in range(3)]
    handles = list(server.revisions)

    async def once(k: int) -> None:
        i = next(counter)
        handle = handles[k]
        await _peer_save(server, handle, {**pool[i % 3], "counter": i})

    return Inflight("mcpstate_save_x8", f"mcpstate state_save, {INFLIGHT} in flight, {INFLIGHT} handles", once)


# -- run ------------------------------------------------------------------------------------------


async def prepare_databases(workdir: Path, venv: Path) -> dict[str, Any]:
    async with asyncio.timeout(POPULATE_TIMEOUT_S):
        info = await populate(workdir / "groundhog.sqlite", contexts=len(HOT), revisions=HOT_REVISIONS)
    # mcpstate: ten handles with the same 1 KB state, minted through its library in its venv.
    mint = (
        "import json, sys; from mcpstate import HandleStore\n"
        "store = HandleStore.from_url(sys.argv[1]); state = json.loads(sys.stdin.read())\n"
        "print(json.dumps([store.mint(sys.argv[2], state, user='local') for _ in range(int(sys.argv[3]))]))"
    )
    process = await asyncio.create_subprocess_exec(
        str(venv / "bin" / "python"),
        "-c",
        mint,
        f"sqlite:///{workdir / 'mcpstate.sqlite'}",
        KIND,
        str(len(HOT)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await process.communicate(json.dumps(payload(0)).encode())
    if process.returncode != 0:
        raise RuntimeError(f"minting mcpstate handles failed ({process.returncode})")
    return {"groundhog": info, "mcpstate_handles": json.loads(out)}


async def measure_startups(servers: dict[str, Spec], n: int) -> dict[str, list[float]]:
    """Spawn to ``tools/list`` answer, ``n`` times per server, interleaved; each closed at once."""
    found: dict[str, list[float]] = {}
    for i in range(n):
        order = list(servers.values())
        order = order[i % len(order) :] + order[: i % len(order)]
        for spec in order:
            async with contextlib.AsyncExitStack() as stack:
                server = await start(stack, spec)
            found.setdefault(spec.label, []).append(server.startup_ms)
    return found


async def run(mode: Mode, workdir: Path) -> dict[str, Any]:
    print(f"groundhog-mcp vs mcpstate {MCPSTATE_VERSION} ({mode.name}) in {workdir}", flush=True)
    load_at_start = os.getloadavg()
    if load_at_start[0] > 0.5 * (os.cpu_count() or 1):
        print(f"  warning: load average {load_at_start[0]:.2f} on {os.cpu_count()} CPUs; expect noisy figures")
    venv, versions = peer_venv()
    print(f"  peer venv: {venv.relative_to(REPO)} {versions}", flush=True)
    ours = runtime_python()
    print(f"  runtime venv: {ours.parent.parent.relative_to(REPO)}", flush=True)
    servers_to_start = specs(workdir, venv, ours, test_venv=True)
    databases = await prepare_databases(workdir, venv)
    startups = await measure_startups(servers_to_start, mode.startups)
    print(f"  start-up: { {k: round(statistics.median(v)) for k, v in startups.items()} } ms", flush=True)

    loads: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        servers = {key: await start(stack, spec) for key, spec in servers_to_start.items()}
        gh, peer, fastmcp = servers["groundhog"], servers["mcpstate"], servers["noop_fastmcp"]
        for name in HOT:
            gh.revisions[name] = (await call(gh, "get_state", {"name": name}))["revision"]
            await call(servers["groundhog_testvenv"], "get_state", {"name": name})
        for handle in databases["mcpstate_handles"]:
            peer.revisions[handle] = (await peer_call(peer, "state_load", {"handle": handle}))["version"]
        for key in ("noop", "noop_fastmcp", "noop_testvenv"):
            await call(servers[key], "noop_dict", {})
        await asyncio.sleep(mode.idle_s)  # idle after one call: what a client's idle server holds
        rss_idle = {k: rss_mb(s.pid) for k, s in servers.items()}

        fsync, close_fsync = fsync_series(workdir)
        stack.callback(close_fsync)
        series = [
            tool_series("noop_dict", "noop_dict (MCPServer floor)", servers["noop"], "noop_dict"),
            tool_series("noop_str", "noop, str result (bench_core's floor)", servers["noop"], "noop"),
            tool_series("noop_state", "noop_state, a get_state-shaped 1 KB dict", servers["noop"], "noop_state"),
            fsync,
            update_series("update_state", "groundhog update_state (expected_revision), 1 KB", gh),
            get_series("get_state", "groundhog get_state, 1 KB", gh),
            peer_save_series(peer),
            peer_load_series(peer),
            tool_series("noop_fastmcp", "FastMCP noop_dict (mcpstate's framework)", fastmcp, "noop_dict"),
        ]
        inflight = [
            inflight_noop(servers["noop"]),
            inflight_updates(gh, one_context=False),
            inflight_updates(gh, one_context=True),
            inflight_peer_saves(peer),
        ]
        for s in series:
            for _ in range(len(HOT)):
                await s.batch(mode.warmup // len(HOT), record=False)
        for f in inflight:
            await f.batch(mode.per_task, record=False)
        both: list[Series | Inflight] = [*series, *inflight]
        started = time.perf_counter()
        for r in range(mode.rounds):
            offset = r % len(both)
            for s in both[offset:] + both[:offset]:
                if isinstance(s, Series):
                    await s.batch(mode.batch)
                else:
                    await s.batch(mode.per_task)
            loads.append(os.getloadavg()[0])
            print(f"\r  round {r + 1}/{mode.rounds}", end="", flush=True)
        measured_s = time.perf_counter() - started
        print(flush=True)
        rss_after = {k: rss_mb(s.pid) for k, s in servers.items()}

    summaries = {s.key: s.summary() for s in series}
    p50 = {k: v["p50_ms"] for k, v in summaries.items()}
    rounds = {s.key: s.round_p50s() for s in series}
    rates = {f.key: f.rates for f in inflight}
    cpu = {k: v["server_cpu_ms_per_call"] for k, v in summaries.items() if v["server_cpu_ms_per_call"]}

    def latency(name: str, formula: str, target: float | None, fn: Callable[[dict[str, float]], float]) -> Ratio:
        per_round = [fn({k: v[r] for k, v in rounds.items()}) for r in range(mode.rounds)]
        return ratio(name, formula, fn(p50), target, "<=", spread(per_round))

    def throughput(name: str, formula: str, target: float | None, a: str, b: str) -> Ratio:
        # Same round, same conditions: the ratio of the rounds' rates, and its median as the value.
        per_round = [x / y for x, y in zip(rates[a], rates[b], strict=True)]
        return ratio(name, formula, statistics.median(per_round), target, ">=", spread(per_round))

    def median_of(key: str, values: dict[str, list[float]]) -> float:
        return statistics.median(values[key])

    ratios = [
        latency(
            "update vs mcpstate write", "update_state p50 / state_save p50", 1.0, over("update_state", "mcpstate_save")
        ),
        latency("get vs mcpstate read", "get_state p50 / state_load p50", 1.0, over("get_state", "mcpstate_load")),
        latency(
            "update vs floor",
            "update_state p50 / (noop_dict p50 + fsync p50)",
            1.3,
            lambda m: m["update_state"] / (m["noop_dict"] + m["fsync"]),
        ),
        latency("get vs floor", "get_state p50 / noop_dict p50", None, over("get_state", "noop_dict")),
        latency("get vs its shape's floor", "get_state p50 / noop_state p50", None, over("get_state", "noop_state")),
        throughput(
            f"writes/s, {INFLIGHT} in flight, {INFLIGHT} contexts",
            f"update_state/s / noop_dict calls/s, both {INFLIGHT} in flight",
            0.8,
            "update_x8",
            "noop_x8",
        ),
        throughput(
            f"writes/s, {INFLIGHT} in flight, one context",
            f"update_state/s (one context) / noop_dict calls/s, {INFLIGHT} in flight",
            0.8,
            "update_x8_one",
            "noop_x8",
        ),
        throughput(
            f"mcpstate writes/s, {INFLIGHT} in flight",
            f"state_save/s / noop_dict calls/s, {INFLIGHT} in flight",
            None,
            "mcpstate_save_x8",
            "noop_x8",
        ),
        throughput(
            f"writes/s vs mcpstate, {INFLIGHT} in flight",
            f"update_state/s ({INFLIGHT} contexts) / state_save/s ({INFLIGHT} handles)",
            None,
            "update_x8",
            "mcpstate_save_x8",
        ),
        # Server CPU per call (/proc, all threads) moves less with the machine's load than latency.
        ratio(
            "CPU per write vs mcpstate",
            "server CPU per update_state / per state_save",
            cpu["update_state"] / cpu["mcpstate_save"],
            None,
            "<=",
        ),
        ratio(
            "CPU per read vs mcpstate",
            "server CPU per get_state / per state_load",
            cpu["get_state"] / cpu["mcpstate_load"],
            None,
            "<=",
        ),
        ratio("idle RSS", "groundhog RSS / noop RSS", rss_idle["groundhog"] / rss_idle["noop"], 1.2, "<="),
        ratio("mcpstate idle RSS", "mcpstate RSS / noop RSS", rss_idle["mcpstate"] / rss_idle["noop"], None, "<="),
        ratio(
            "idle RSS (test venv)",
            f"the same, both from the test venv (with {', '.join(RUNTIME_ABSENT)})",
            rss_idle["groundhog_testvenv"] / rss_idle["noop_testvenv"],
            None,
            "<=",
        ),
        ratio(
            "start-up",
            "groundhog / noop, spawn to tools/list (median of the starts)",
            median_of("groundhog", startups) / median_of("noop", startups),
            1.1,
            "<=",
            spread([g / n for g, n in zip(startups["groundhog"], startups["noop"], strict=True)]),
        ),
        ratio(
            "start-up (test venv)",
            "the same, both from the test venv",
            median_of("groundhog_testvenv", startups) / median_of("noop_testvenv", startups),
            None,
            "<=",
            spread([g / n for g, n in zip(startups["groundhog_testvenv"], startups["noop_testvenv"], strict=True)]),
        ),
        ratio(
            "mcpstate start-up",
            "mcpstate / noop, spawn to tools/list",
            median_of("mcpstate", startups) / median_of("noop", startups),
            None,
            "<=",
        ),
    ]
    return {
        "benchmark": "bench_peer",
        "mode": mode.name,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "environment": _environment(workdir)
        | {
            "peer": versions,
            "runtime_venv": str(ours.parent.parent.relative_to(REPO)),
            "loadavg_at_start": load_at_start,
            "loadavg_1min_rounds": spread(loads, 2),
        },
        "parameters": {
            "rounds": mode.rounds,
            "batch": mode.batch,
            "inflight": INFLIGHT,
            "inflight_calls_per_round": INFLIGHT * mode.per_task,
            "warmup": mode.warmup,
            "state_bytes": len(json.dumps(payload(0), separators=(",", ":"))),
            "measured_s": round(measured_s, 1),
        },
        "series": summaries,
        "inflight": {f.key: f.summary() for f in inflight},
        "rss_mb": {
            "idle_after_one_call": {k: round(v, 1) for k, v in rss_idle.items()},
            "after_benchmark": {k: round(v, 1) for k, v in rss_after.items()},
        },
        "startup_ms": {k: spread(v, 1) for k, v in startups.items()},
        "ratios": ratios,
        "all_targets_met": all(r["met"] for r in ratios if r["target"] is not None),
    }


def over(a: str, b: str) -> Callable[[dict[str, float]], float]:
    return lambda m: m[a] / m[b]


def ratio(
    name: str, formula: str, value: float, target: float | None, sense: str, rounds: dict[str, float] | None = None
) -> Ratio:
    met = None if target is None else (value <= target if sense == "<=" else value >= target)
    out: Ratio = {"name": name, "formula": formula, "value": round(value, 3), "target": target, "sense": sense}
    out["met"] = met
    if rounds is not None:
        out["rounds"] = rounds
    return out


def render(results: dict[str, Any]) -> str:
    p = results["parameters"]
    env = results["environment"]
    load = env["loadavg_1min_rounds"]
    peer = env["peer"]
    lines = [
        f"groundhog-mcp {env['groundhog_mcp']} ({env['git_commit']}) vs mcpstate {peer['mcpstate']} "
        f"(FastMCP {peer['fastmcp']}), mcp {env['mcp']}, Python {env['python']}, {env['cpus']} CPUs, {results['mode']}",
        f"{p['rounds']} rounds of {p['batch']} sequential calls per series and {p['inflight_calls_per_round']} calls "
        f"with {p['inflight']} in flight; {p['state_bytes']} B state; measured in {p['measured_s']} s",
        f"1-minute load average: {env['loadavg_at_start'][0]:.2f} at start; over the rounds min {load['min']:.2f} / "
        f"median {load['median']:.2f} / max {load['max']:.2f}",
        "",
        f"{'series (one in flight)':<52}{'p50 ms':>9}{'p99 ms':>9}{'srv CPU':>9}   {'round p50s min / med / max':>28}",
    ]
    for s in results["series"].values():
        cpu = f"{s['server_cpu_ms_per_call']:.2f}" if s["server_cpu_ms_per_call"] is not None else "-"
        r = s["round_p50_ms"]
        lines.append(
            f"{s['label'][:51]:<52}{s['p50_ms']:>9.3f}{s['p99_ms']:>9.3f}{cpu:>9}   "
            f"{r['min']:>8.3f} / {r['median']:>7.3f} / {r['max']:>7.3f}"
        )
    lines += ["", f"{'series (calls/s per round)':<52}{'min / median / max':>28}"]
    for f in results["inflight"].values():
        c = f["calls_per_s"]
        lines.append(f"{f['label'][:51]:<52}{c['min']:>10.1f} / {c['median']:>6.1f} / {c['max']:>6.1f}")
    idle = results["rss_mb"]["idle_after_one_call"]
    after = results["rss_mb"]["after_benchmark"]
    lines += ["", f"{'process':<20}{'idle RSS MB':>12}{'RSS after MB':>14}{'start-up ms min / med / max':>32}"]
    for key in idle:
        s = results["startup_ms"][key]
        lines.append(
            f"{key:<20}{idle[key]:>12.1f}{after[key]:>14.1f}{s['min']:>14.0f} / {s['median']:>5.0f} / {s['max']:>5.0f}"
        )
    lines += ratio_lines(results["ratios"])
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 rounds")
    parser.add_argument("--rounds", type=int, help="override the mode's rounds")
    parser.add_argument("--profile", action="store_true", help="profile one write and one read instead (py-spy)")
    parser.add_argument("--calls", type=int, default=600, help="--profile: calls profiled per tool")
    parser.add_argument("--dir", type=Path, help="directory for the databases (default: a new temporary one)")
    parser.add_argument("--output", type=Path, help="JSON file (default: results/peer[-profile].json)")
    parser.add_argument("--keep", action="store_true", help="keep the databases afterwards")
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    if args.rounds:
        mode = Mode(**{**mode.__dict__, "rounds": args.rounds})
    if args.dir is not None:
        args.dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="groundhog-peer-", dir=args.dir))
    try:
        if args.profile:
            from profile_peer import profile, render_profile

            results = asyncio.run(profile(workdir, args.calls))
            text = render_profile(results)
        else:
            results = asyncio.run(run(mode, workdir))
            text = render(results)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(text)
    output = args.output or RESULTS / ("peer-profile.json" if args.profile else "peer.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
