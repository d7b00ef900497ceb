"""``bench_peer.py --profile``: where one ``update_state`` and one ``get_state`` spend their time in
the server process, and what start-up imports.

The server runs as in bench_peer.py (stdio, ``synchronous=FULL``, history, feed and audit on).
After a warm-up, ``py-spy record --idle --threads --nonblocking`` (installed into the peer venv on
first use) samples it while the client makes ``--calls`` sequential writes, then as many reads.
Every sample of every thread is kept; a sample whose innermost frame is a blocking wait (the event
loop's ``select``, an idle worker's queue ``get``, the stdin reader's blocked ``readline``) counts
as idle, the others are attributed to a layer by their stack (``layer`` below), and per call:
samples / rate / calls. The time of a C call (SQLite, pydantic-core, a socket write) shows as the
time of the Python line that made it: read the shares, not the absolute times.

Then the same calls in a server started under cProfile (``cprofile_server.py``, on for the
measured calls only, every thread): deterministic self time per function and per layer, C
functions split by caller (so SQLite's ``BEGIN``/``COMMIT`` and its other statements come apart),
with call counts per request.

Start-up: ``python -X importtime`` (fastest of three) of the CLI module and of the stdio serve
path (the server started with stdin at EOF, so it exits once it has served nothing), against the
no-op server. Where ``strace`` is installed: system calls per call (all threads) of our write and
read and of mcpstate's, e.g. how many ``fdatasync`` a write costs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import os
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench_core import HOT, POPULATE_TIMEOUT_S, Server, call, payload
from bench_peer import KIND, REPO, RESULTS, peer_call, peer_venv, prepare_databases, specs, start
from runtime_venv import runtime_python

RATE = 500  # samples per second per thread
IMPORT_RUNS = 3  # -X importtime runs per command; the fastest counts (load only ever adds)
WARMUP = 100
STRACE_CALLS = 200
SITE = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
STDLIB = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


def source_line(file: str, line: int) -> str:
    for root in (REPO, SITE, STDLIB):
        path = root / file
        if path.exists():
            return linecache.getline(str(path), line).strip()
    return ""


def parse_frame(text: str) -> tuple[str, str, int]:
    match = FRAME.match(text)
    if match is None:
        return text, "", 0
    return match["function"], match["file"], int(match["line"])


def idle(function: str, file: str, line: int) -> bool:
    """A thread blocked waiting: the event loop's select, a worker's queue get, the stdin reader."""
    text = source_line(file, line)
    if function.endswith(".select") or function == "Condition.wait":
        return True
    if file.endswith("concurrent/futures/thread.py") and "get(" in text:
        return True
    # anyio's worker runs the stdio reader's readline (blocked on the pipe most of the time) and
    # the writer's write: a C call on this line, so the two cannot be told apart without --native.
    return function == "WorkerThread.run" and "context.run" in text


PYDANTIC_CALLS = ("model_validate", "validate_python", "validate_json", "model_dump", "to_python", "to_json", "dump_")


def layer(frames: list[tuple[str, str, int]]) -> str:
    """The layer a busy sample belongs to; ``frames`` run from the thread's root to the leaf."""
    function, file, line = frames[-1]
    text = source_line(file, line)
    files = [f for _, f, _ in frames]
    if file.startswith("groundhog_mcp/store/") and "COMMIT" in text:
        return "SQLite COMMIT (WAL append + fdatasync)"
    if any(f.endswith("security/audit.py") for f in files):
        return "audit row (HMAC chain)"
    if file.startswith("groundhog_mcp/store/") and re.search(r"\.(execute|executemany|fetchone|fetchall)\(", text):
        return "SQLite statements"
    if any(f.endswith("server/outputs.py") for f in files):
        return "output shaping (server/outputs.py)"
    if file.startswith(("json/", "zlib", "gzip")) or "zlib." in text or "compress" in text:
        return "encoding: json / zlib"
    if file.startswith(("pydantic", "jsonschema")) or any(c in text for c in PYDANTIC_CALLS):
        return "pydantic / schema validation"
    if file.startswith("groundhog_mcp/store/"):
        return "store (Python around SQLite)"
    if file.startswith("groundhog_mcp/service/") or file == "groundhog_mcp/models.py":
        return "service and models (diff, checks)"
    if file.startswith("groundhog_mcp/"):
        return "server tools (groundhog_mcp/server)"
    if file.startswith(("trace/", "context/", "propagate/", "baggage/", "opentelemetry/")):
        return "SDK: OpenTelemetry spans"  # py-spy shortens opentelemetry/trace/… to trace/…
    if file.startswith(("mcp/", "mcp_types/")):
        return "SDK: JSON-RPC framing, dispatch"
    if file.startswith(("asyncio/", "anyio/", "concurrent/", "threading", "queue", "selectors", "contextvars")):
        return "event loop, threads, task switching"
    return f"other ({file.split('/')[0] or function})"


def analyse(raw: Path, calls: int) -> dict[str, Any]:
    by_thread: collections.Counter[str] = collections.Counter()
    busy_by_thread: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for text in raw.read_text().splitlines():
        stack, count_text = text.rsplit(" ", 1)
        count = int(count_text)
        parts = stack.split(";")
        thread = parts[0].split(":", 1)[1].strip() if ":" in parts[0] else parts[0]
        thread = re.sub(r"_\d+$", "", thread)  # executor threads: one name
        frames = [parse_frame(p) for p in parts[1:]]
        if not frames:
            continue
        by_thread[thread] += count
        if idle(*frames[-1]):
            continue
        busy_by_thread[thread] += count
        layers[layer(frames)] += count
        function, file, _ = frames[-1]
        own[f"{function} ({file})"] += count

    def per_call_ms(n: int) -> float:
        return round(n / RATE / calls * 1000, 3)

    busy = sum(layers.values())
    return {
        "samples": sum(by_thread.values()),
        "threads": {t: {"busy_ms_per_call": per_call_ms(busy_by_thread[t])} for t in by_thread},
        "busy_ms_per_call": per_call_ms(busy),
        "layers": [
            {"layer": k, "ms_per_call": per_call_ms(v), "share": round(v / busy, 3)} for k, v in layers.most_common()
        ],
        "top_self": [
            {"function": k, "ms_per_call": per_call_ms(v), "share": round(v / busy, 3)} for k, v in own.most_common(15)
        ],
    }


def fsync_probe(directory: Path, n: int) -> dict[str, float]:
    """p50 ms of write + fdatasync of an appended 4 KiB and 48 KiB block, alternating, same file."""
    path = directory / "fsync-probe.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    samples: dict[str, list[float]] = {"4KiB": [], "48KiB": []}
    try:
        for _ in range(n):
            for key, block in (("4KiB", b"\xa5" * 4096), ("48KiB", b"\xa5" * 49152)):
                started = time.perf_counter()
                os.write(fd, block)
                os.fdatasync(fd)
                samples[key].append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return {k: round(statistics.median(v), 3) for k, v in samples.items()}


def writer(server: Server) -> Callable[[int], Awaitable[None]]:
    """update_state of the first hot context with a new 1 KB value and expected_revision."""
    pool = [payload(i) for i in range(3)]
    revision: list[int] = []

    async def write(i: int) -> None:
        if not revision:
            revision.append((await call(server, "get_state", {"name": HOT[0]}))["revision"])
        arguments = {"name": HOT[0], "data": {**pool[i % 3], "counter": i}, "expected_revision": revision[0]}
        revision[0] = (await call(server, "update_state", arguments))["revision"]

    return write


def reader(server: Server) -> Callable[[int], Awaitable[None]]:
    async def read(_: int) -> None:
        await call(server, "get_state", {"name": HOT[0]})

    return read


async def record(py_spy: Path, pid: int, raw: Path, drive: Any, calls: int) -> dict[str, Any]:
    """py-spy on ``pid`` while ``drive`` makes ``calls`` calls; the analysed samples."""
    process = await asyncio.create_subprocess_exec(
        str(py_spy),
        *("record", "--pid", str(pid), "--rate", str(RATE), "--idle", "--threads", "--nonblocking", "--format", "raw"),
        *("--output", str(raw)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):  # its first line says it samples
        first = await process.stdout.readline()
    if b"Sampling" not in first:
        raise RuntimeError(f"py-spy did not start: {first.decode(errors='replace')}")
    started = time.perf_counter()
    for i in range(calls):
        await drive(i)
    elapsed = time.perf_counter() - started
    process.send_signal(2)  # SIGINT: py-spy writes its file and exits
    async with asyncio.timeout(60):
        await process.communicate()
    return {"calls": calls, "wall_ms_per_call_under_py_spy": round(elapsed / calls * 1000, 3)} | analyse(raw, calls)


async def syscalls(pid: int, drive: Any, calls: int) -> dict[str, float]:
    """System calls per call of ``pid`` (all threads) while ``drive`` makes ``calls`` calls (strace -c)."""
    process = await asyncio.create_subprocess_exec(
        "strace", "-f", "-c", "-p", str(pid), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert process.stderr is not None
    async with asyncio.timeout(30):  # strace says when it has attached to each thread
        first = await process.stderr.readline()
    if b"attached" not in first:
        raise RuntimeError(f"strace did not attach: {first.decode(errors='replace')}")
    for i in range(calls):
        await drive(i)
    process.send_signal(2)
    async with asyncio.timeout(60):
        _, err = await process.communicate()
    found: dict[str, float] = {}
    for text in err.decode(errors="replace").splitlines():
        fields = text.split()
        # "% time  seconds  usecs/call  calls  [errors]  syscall"
        if len(fields) >= 5 and fields[0].replace(".", "").isdigit() and fields[-1] != "total":
            found[fields[-1]] = round(int(fields[3]) / calls, 2)
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


IDLE_BUILTINS = ("select.epoll", "select.poll", "select.select")


HAND_OFF = (
    "'release' of '_thread.lock'",
    "'acquire' of '_thread.lock'",
    "of '_queue.SimpleQueue'",
    "'send' of '_socket",
)


def builtin_layer(function: str, caller: str) -> str:
    """The layer of a C function (cProfile: ``<method 'x' of 'y' objects>``) called by ``caller``."""
    if "sqlite3" in function:
        if caller.endswith((":_run_batch", ":_commit")):  # store/sqlite_writer.py
            return "SQLite BEGIN IMMEDIATE / COMMIT (WAL append + fdatasync)"
        return "SQLite statements"
    if any(h in function for h in HAND_OFF):
        # Waking another thread (the store's executor, the event loop through its self-pipe): the
        # wall time includes giving up and getting back the GIL.
        return "thread hand-offs (lock release, queue put, self-pipe send)"
    if "json" in function or "zlib" in function:
        return "encoding: json / zlib"
    if "hash" in function or "hmac" in function:
        return "audit row (HMAC chain)" if "audit" in caller else "hashing"
    if "pydantic_core" in function:
        return "pydantic / schema validation"
    file = caller.rsplit(":", 1)[0]
    return layer([("", file, 0)])


def relative(path: str) -> str:
    for root in (f"{SITE}/", f"{REPO}/", f"{STDLIB}/"):
        if path.startswith(root):
            return path[len(root) :]
    return path


def analyse_pstats(path: Path, calls: int) -> dict[str, Any]:
    """Self time per layer and the top 15 functions by self time, per call, from cProfile."""
    stats: dict[tuple[str, int, str], Any] = pstats.Stats(str(path)).stats  # pyright: ignore[reportAttributeAccessIssue]
    layers: collections.Counter[str] = collections.Counter()
    own: list[tuple[float, int, str]] = []
    idle_s = 0.0
    for (file, line, function), (_, ncalls, tottime, _, callers) in stats.items():
        if any(b in function for b in IDLE_BUILTINS):
            idle_s += tottime
            continue
        rel = relative(file)
        if file == "~":  # a C function: its time goes to the layer of each caller, by caller
            for (caller_file, _, caller_function), timing in callers.items():
                layers[builtin_layer(function, f"{relative(caller_file)}:{caller_function}")] += timing[2]
        else:
            layers[layer([(function, rel, line)])] += tottime
        own.append((tottime, ncalls, function if file == "~" else f"{function} ({rel}:{line})"))
    busy = sum(layers.values())

    def per_call_ms(seconds: float) -> float:
        return round(seconds / calls * 1000, 4)

    own.sort(reverse=True)
    return {
        "busy_ms_per_call": per_call_ms(busy),
        "epoll_wait_ms_per_call": per_call_ms(idle_s),
        "layers": [
            {"layer": k, "ms_per_call": per_call_ms(v), "share": round(v / busy, 3)} for k, v in layers.most_common()
        ],
        "top_self": [
            {
                "function": n,
                "ms_per_call": per_call_ms(t),
                "calls_per_call": round(c / calls, 2),
                "share": round(t / busy, 3),
            }
            for t, c, n in own[:15]
        ],
    }


async def cprofiled(workdir: Path, venv: Path, calls: int, drive_write: Any, drive_read: Any) -> dict[str, Any]:
    """update_state and get_state under cProfile in the server process (cprofile_server.py)."""
    out = RESULTS / "peer-profile" / "cprofile"
    for old in out.parent.glob("cprofile.*"):
        old.unlink()
    spec = specs(workdir, venv)["groundhog"]
    spec.args = [str(Path(__file__).parent / "cprofile_server.py"), str(out), *spec.args[2:]]
    found: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as stack:
        server = await start(stack, spec)
        write, read = drive_write(server), drive_read(server)
        for i in range(WARMUP):
            await write(i)
            await read(i)
        for n, (tool, drive) in enumerate((("update_state", write), ("get_state", read)), start=1):
            os.kill(server.pid, signal.SIGUSR1)
            for i in range(calls):
                await drive(i)
            os.kill(server.pid, signal.SIGUSR2)
            await read(0)  # answered after the handler has written the file
            found[tool] = analyse_pstats(Path(f"{out}.{n}"), calls)
    return found


def import_times(args: list[str]) -> dict[str, Any]:
    """``-X importtime`` (the fastest of ``IMPORT_RUNS``): total, per package, slowest modules (self)."""
    return min((import_time(args) for _ in range(IMPORT_RUNS)), key=lambda r: r["total_ms"])


def import_time(args: list[str]) -> dict[str, Any]:
    """In the runtime venv (runtime_venv.py), as a user's install imports."""
    done = subprocess.run(
        [str(runtime_python()), "-X", "importtime", *args],
        cwd=REPO,
        stdin=subprocess.DEVNULL,  # the stdio server reads EOF and exits
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    packages: collections.Counter[str] = collections.Counter()
    modules: collections.Counter[str] = collections.Counter()
    for text in done.stderr.splitlines():
        if not text.startswith("import time:") or "self [us]" in text:
            continue
        self_us, _cumulative, name = (p.strip() for p in text[len("import time:") :].split("|"))
        top = name.split(".")[0]
        key = ".".join(name.split(".")[:2]) if top == "groundhog_mcp" else top
        packages[key] += int(self_us)
        modules[name] += int(self_us)
    total = sum(packages.values())
    return {
        "command": " ".join(args),
        "total_ms": round(total / 1000, 1),
        "modules_imported": len(modules),
        "by_package_ms": {k: round(v / 1000, 1) for k, v in packages.most_common(14)},
        "slowest_modules_ms": {k: round(v / 1000, 1) for k, v in modules.most_common(10)},
        "self_us": dict(modules),
    }


def extra_imports(ours: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The modules our serve path imports that the no-op server does not, per package."""
    extra = {m: us for m, us in ours["self_us"].items() if m not in floor["self_us"]}
    packages: collections.Counter[str] = collections.Counter()
    counts: collections.Counter[str] = collections.Counter()
    for name, us in extra.items():
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "groundhog_mcp" else parts[0]
        packages[key] += us
        counts[key] += 1
    return {
        "modules": len(extra),
        "ms": round(sum(extra.values()) / 1000, 1),
        "by_package": {k: {"modules": counts[k], "ms": round(v / 1000, 1)} for k, v in packages.most_common(14)},
    }


async def profile(workdir: Path, calls: int) -> dict[str, Any]:
    venv, versions = peer_venv(extra=("py-spy",))
    py_spy = venv / "bin" / "py-spy"
    async with asyncio.timeout(POPULATE_TIMEOUT_S):
        handles = (await prepare_databases(workdir, venv))["mcpstate_handles"]
    per_call: dict[str, dict[str, float]] = {}
    out = RESULTS / "peer-profile"
    out.mkdir(parents=True, exist_ok=True)
    pool = [payload(i) for i in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        server = await start(stack, specs(workdir, venv)["groundhog"])
        write, read = writer(server), reader(server)
        for i in range(WARMUP):
            await write(i)
            await read(i)
        print(f"  profiling {calls} writes and {calls} reads (py-spy, {RATE}/s) …", flush=True)
        writes = await record(py_spy, server.pid, out / "write.txt", write, calls)
        reads = await record(py_spy, server.pid, out / "read.txt", read, calls)
        if shutil.which("strace"):
            per_call["update_state"] = await syscalls(server.pid, write, STRACE_CALLS)
            per_call["get_state"] = await syscalls(server.pid, read, STRACE_CALLS)
            peer = await start(stack, specs(workdir, venv)["mcpstate"])
            version = (await peer_call(peer, "state_load", {"handle": handles[0]}))["version"]

            async def save(i: int) -> None:
                nonlocal version
                arguments = {"kind": KIND, "handle": handles[0], "state": {**pool[i % 3], "counter": i}}
                version = (await peer_call(peer, "state_save", arguments | {"expect_version": version}))["version"]

            async def load(_: int) -> None:
                await peer_call(peer, "state_load", {"handle": handles[0]})

            for i in range(WARMUP):
                await save(i)
                await load(i)
            per_call["mcpstate_save"] = await syscalls(peer.pid, save, STRACE_CALLS)
            per_call["mcpstate_load"] = await syscalls(peer.pid, load, STRACE_CALLS)
    print(f"  the same under cProfile ({calls} each) …", flush=True)
    deterministic = await cprofiled(workdir, venv, calls, writer, reader)
    # What a durable commit can cost on this disk now: one fdatasync after appending 4 KiB (one WAL
    # frame, mcpstate's write) and after appending 48 KiB (12 frames, about what our write appends).
    fsync_ms = fsync_probe(workdir, calls)
    database = str(workdir / "startup.sqlite")
    serve = ["-m", "groundhog_mcp", "--database", database, "--log-level", "WARNING"]
    results: dict[str, Any] = {
        "benchmark": "bench_peer --profile",
        "peer_venv": versions,
        "rate_hz": RATE,
        "raw_files": str(out.relative_to(REPO)),
        "fdatasync_p50_ms": fsync_ms,
        "syscalls_per_call": per_call,
        "update_state": writes,
        "get_state": reads,
        "cprofile": deterministic,
        "import_cli": import_times(["-c", "import groundhog_mcp.cli"]),
        "import_serve": import_times(serve),
        "import_noop": import_times([str(Path(__file__).parent / "noop_server.py")]),
    }
    results["import_serve_extra"] = extra_imports(results["import_serve"], results["import_noop"])
    for key in ("import_cli", "import_serve", "import_noop"):
        del results[key]["self_us"]
    return results


def render_profile(results: dict[str, Any]) -> str:
    fsync = results["fdatasync_p50_ms"]
    lines = [
        f"fdatasync after appending, same disk, after the calls: p50 4 KiB {fsync['4KiB']} / 48 KiB {fsync['48KiB']} ms"
    ]
    lines.append("")
    for tool in ("update_state", "get_state"):
        r = results[tool]
        threads = ", ".join(f"{t} {v['busy_ms_per_call']:.2f}" for t, v in r["threads"].items())
        lines += [
            f"{tool}: {r['calls']} calls, {r['wall_ms_per_call_under_py_spy']:.2f} ms each under py-spy; "
            f"busy {r['busy_ms_per_call']:.2f} ms per call in the server ({threads})",
            f"  {'layer':<50}{'ms/call':>9}{'share':>8}",
        ]
        lines += [f"  {x['layer'][:49]:<50}{x['ms_per_call']:>9.3f}{x['share']:>8.1%}" for x in r["layers"]]
        lines.append(f"  {'top 15 self time (innermost Python frame)':<78}{'ms/call':>9}{'share':>8}")
        lines += [f"  {x['function'][:77]:<78}{x['ms_per_call']:>9.3f}{x['share']:>8.1%}" for x in r["top_self"]]
        lines.append("")
    for tool, r in results["cprofile"].items():
        lines += [
            f"{tool} under cProfile (self time; C calls by name): busy {r['busy_ms_per_call']:.3f} ms per call, "
            f"epoll wait {r['epoll_wait_ms_per_call']:.3f} ms",
            f"  {'layer':<60}{'ms/call':>9}{'share':>8}",
        ]
        lines += [f"  {x['layer'][:59]:<60}{x['ms_per_call']:>9.3f}{x['share']:>8.1%}" for x in r["layers"]]
        lines.append(f"  {'top 15 self time':<84}{'ms/call':>9}{'n/call':>8}{'share':>8}")
        lines += [
            f"  {x['function'][:83]:<84}{x['ms_per_call']:>9.3f}{x['calls_per_call']:>8.2f}{x['share']:>8.1%}"
            for x in r["top_self"]
        ]
        lines.append("")
    for key in ("import_cli", "import_serve", "import_noop"):
        r = results[key]
        lines.append(f"-X importtime {r['command']}: {r['total_ms']} ms, {r['modules_imported']} modules")
        lines.append("  by package: " + ", ".join(f"{k} {v}" for k, v in r["by_package_ms"].items()))
        lines.append("  slowest modules: " + ", ".join(f"{k} {v}" for k, v in r["slowest_modules_ms"].items()))
    for tool, counts in results["syscalls_per_call"].items():
        lines.append(f"system calls per {tool} (strace -f -c): " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    extra = results["import_serve_extra"]
    lines.append(
        f"serve path imports {extra['modules']} modules the no-op server does not ({extra['ms']} ms self): "
        + ", ".join(f"{k} {v['modules']}/{v['ms']} ms" for k, v in extra["by_package"].items())
    )
    return "\n".join(lines)
