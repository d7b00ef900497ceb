"""``bench_peer.py --profile``: where one ``update_state`` and one ``get_state`` spend their time in
the server process, and what start-up imports.

The server runs as in bench_peer.py (stdio, ``synchronous=FULL``, history, feed and audit on).
After a warm-up, ``py-spy record --idle --threads --nonblocking`` (installed into the peer venv on
first use) samples it while the client makes ``--calls`` sequential writes, then as many reads.
Every sample of every thread is kept; a sample whose innermost frame is a blocking wait (the event
loop's ``select``, an idle worker's queue ``get``, the stdin reader's blocked ``readline``) counts
as idle, the others are attributed to a layer by their stack (``layer`` below), and per call:
samples / rate / calls. Sampling slows the calls and the time of a C call (SQLite, pydantic-core,
a socket write) shows as the time of the Python line that made it: read the shares, not the
absolute times. Start-up: ``python -X importtime`` (fastest of three) of the CLI module and of
the stdio serve path (the server started with stdin at EOF, so it exits once it has served
nothing), against the no-op server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import linecache
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench_core import HOT, HOT_REVISIONS, POPULATE_TIMEOUT_S, call, fsync_series, payload, populate
from bench_peer import REPO, RESULTS, peer_venv, specs, start

RATE = 500  # samples per second per thread
IMPORT_RUNS = 3  # -X importtime runs per command; the fastest counts (load only ever adds)
WARMUP = 100
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


def import_times(args: list[str]) -> dict[str, Any]:
    """``-X importtime`` (the fastest of ``IMPORT_RUNS``): total, per package, slowest modules (self)."""
    return min((import_time(args) for _ in range(IMPORT_RUNS)), key=lambda r: r["total_ms"])


def import_time(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
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
        await populate(workdir / "groundhog.sqlite", contexts=len(HOT), revisions=HOT_REVISIONS)
    out = RESULTS / "peer-profile"
    out.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        server = await start(stack, specs(workdir, venv)["groundhog"])
        revision = (await call(server, "get_state", {"name": HOT[0]}))["revision"]
        pool = [payload(i) for i in range(3)]

        async def write(i: int) -> None:
            nonlocal revision
            data = {**pool[i % 3], "counter": i}
            arguments = {"name": HOT[0], "data": data, "expected_revision": revision}
            revision = (await call(server, "update_state", arguments))["revision"]

        async def read(_: int) -> None:
            await call(server, "get_state", {"name": HOT[0]})

        for i in range(WARMUP):
            await write(i)
            await read(i)
        print(f"  profiling {calls} writes and {calls} reads (py-spy, {RATE}/s) …", flush=True)
        writes = await record(py_spy, server.pid, out / "write.txt", write, calls)
        reads = await record(py_spy, server.pid, out / "read.txt", read, calls)
    # What one durable commit can cost on this disk right now: the COMMIT line's share compares with it.
    fsync, close_fsync = fsync_series(workdir)
    await fsync.batch(calls)
    close_fsync()
    database = str(workdir / "startup.sqlite")
    serve = ["-m", "groundhog_mcp", "--database", database, "--log-level", "WARNING"]
    results: dict[str, Any] = {
        "benchmark": "bench_peer --profile",
        "peer_venv": versions,
        "rate_hz": RATE,
        "raw_files": str(out.relative_to(REPO)),
        "fdatasync_p50_ms": round(statistics.median(fsync.batches_ms[0]), 3),
        "update_state": writes,
        "get_state": reads,
        "import_cli": import_times(["-c", "import groundhog_mcp.cli"]),
        "import_serve": import_times(serve),
        "import_noop": import_times([str(Path(__file__).parent / "noop_server.py")]),
    }
    results["import_serve_extra"] = extra_imports(results["import_serve"], results["import_noop"])
    for key in ("import_cli", "import_serve", "import_noop"):
        del results[key]["self_us"]
    return results


def render_profile(results: dict[str, Any]) -> str:
    lines = [f"fdatasync of an appended 4 KiB block, same disk, after the calls: p50 {results['fdatasync_p50_ms']} ms"]
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
    for key in ("import_cli", "import_serve", "import_noop"):
        r = results[key]
        lines.append(f"-X importtime {r['command']}: {r['total_ms']} ms, {r['modules_imported']} modules")
        lines.append("  by package: " + ", ".join(f"{k} {v}" for k, v in r["by_package_ms"].items()))
        lines.append("  slowest modules: " + ", ".join(f"{k} {v}" for k, v in r["slowest_modules_ms"].items()))
    extra = results["import_serve_extra"]
    lines.append(
        f"serve path imports {extra['modules']} modules the no-op server does not ({extra['ms']} ms self): "
        + ", ".join(f"{k} {v['modules']}/{v['ms']} ms" for k, v in extra["by_package"].items())
    )
    return "\n".join(lines)
