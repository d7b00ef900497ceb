"""Start-up cost: a server imports only what its transport and its contexts need.

Clients that start a process per call pay the import time on every call (issue 14's start-up
target is measured by benchmarks/bench_peer.py; this holds the parts of it a test can see).
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from pathlib import Path

from groundhog_mcp.profiles import PROFILES

SCRIPT = """
import sys, anyio
from mcp import Client
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.service import StateManager
import groundhog_mcp.cli.commands, groundhog_mcp.server.stdio

async def main():
    async with Client(create_server(Settings(database=sys.argv[1]))) as client:
        await client.list_tools()  # (the SDK's client imports jsonschema on its first call_tool)
    async with StateManager.open(sys.argv[1]) as manager:
        await manager.update("plan", data={"a": 1}, expected_revision=0)
        await manager.read("plan")
    print(sorted({m.split(".")[0] for m in sys.modules} & {"jsonschema", "referencing", "re2", "rpds"}))
    print(len(create_server(Settings(database=sys.argv[1]))._tool_manager.list_tools()))

anyio.run(main)
"""


def test_a_server_without_schemas_never_imports_jsonschema_and_builds_only_its_profile(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "s.sqlite")], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    # Before these two lines: log lines (logging is not set up here).
    assert out.stdout.splitlines()[-2:] == ["[]", str(len(PROFILES["default"]))]


# Loaded by the CLI's stdio serve only through something it does not use: the dashboard package
# (the timeline app's assets live in its folder). structlog's rich-based tracebacks stay: hiding
# rich from it changed what a logged traceback shows, and the broken build that logs frame locals
# was no longer caught (tests/reliability/test_faults.py).
# The encryption key handling: a server without encryption at rest configured never parses a key.
NOT_AT_SERVE = ("groundhog_mcp.dashboard", "groundhog_mcp.security.crypto")


# `python -m groundhog_mcp` (stdin at its end: serve answers nothing and stops), then the modules loaded.
SERVE = """
import atexit, json, runpy, sys
out = sys.argv.pop(1)
atexit.register(lambda: open(out, "w").write(json.dumps([m for m, v in sys.modules.items() if v is not None])))
sys.argv[0] = "groundhog-mcp"
runpy.run_module("groundhog_mcp", run_name="__main__", alter_sys=True)
"""


def _serve(script: str, report: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``python -m groundhog_mcp`` serving stdio until its stdin (empty) ends, run by ``script``,
    which writes what it observed to ``report`` at exit."""
    out = subprocess.run(
        [sys.executable, "-c", script, str(report), "--database", str(tmp_path / "s.sqlite")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def test_stdio_serve_does_not_import_what_answering_tools_list_does_not_need(tmp_path: Path) -> None:
    listed = tmp_path / "modules.json"
    out = _serve(SERVE, listed, tmp_path)
    imported = set(json.loads(listed.read_text()))
    assert "groundhog_mcp.server.stdio" in imported  # the serve path ran
    assert sorted(m for m in imported if any(m == n or m.startswith(n + ".") for n in NOT_AT_SERVE)) == []
    # The logs are still JSON lines on stderr.
    logs = out.stderr.splitlines()
    assert logs and all(json.loads(line)["event"] for line in logs), logs[:3]


# `python -m groundhog_mcp` as above; at exit, the cyclic collector's state and its work so far:
# also the most objects a young collection (generation 0 or 1) had to walk, and how many objects
# the young generations hold at exit.
COLLECTOR = """
import atexit, gc, json, runpy, sys
out = sys.argv.pop(1)
walked = [0]
def young(gen):
    return sum(len(gc.get_objects(generation=g)) for g in range(gen + 1))
def watch(phase, info):
    if phase == "start" and info["generation"] < 2:
        walked[0] = max(walked[0], young(info["generation"]))
gc.callbacks.append(watch)
atexit.register(lambda: open(out, "w").write(json.dumps(
    {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count(), "runs": [s["collections"] for s in gc.get_stats()],
     "young_walk_max": walked[0], "young_at_exit": young(1)})))
sys.argv[0] = "groundhog-mcp"
runpy.run_module("groundhog_mcp", run_name="__main__", alter_sys=True)
"""


def test_stdio_serve_starts_without_cyclic_collection(tmp_path: Path) -> None:
    # groundhog_mcp/cli/startup.py: about 240 collections (~55 ms) over start-up's objects otherwise.
    report = tmp_path / "gc.json"
    _serve(COLLECTOR, report, tmp_path)
    state = json.loads(report.read_text())
    assert state["enabled"] is True  # collecting again once serving
    assert state["frozen"] == 0  # frozen objects slowed every call (see startup.py)
    # ~30 young-generation runs while `python -m` imports the package (before the pause) and a few
    # once serving; without the pause about 240.
    assert sum(state["runs"]) < 100, state["runs"]
    # Start-up's objects (~160,000) went to the oldest generation untraversed when collection
    # resumed: no young collection walks them (the first two did, ~60 ms each, on the first calls).
    assert state["young_walk_max"] < 40_000, state
    assert state["young_at_exit"] < 40_000, state


def test_main_called_by_a_program_leaves_its_collector_alone() -> None:
    from groundhog_mcp.cli import main

    frozen = gc.get_freeze_count()
    assert main(["--version"]) == 0
    assert gc.isenabled() and gc.get_freeze_count() == frozen
