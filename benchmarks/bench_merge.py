"""Three-way merge benchmark (issue 4): two 1 MiB states vs one json.loads + json.dumps of them.

    python benchmarks/bench_merge.py            # 21 interleaved rounds, ~30 s
    python benchmarks/bench_merge.py --rounds 5 --seed 7

A base state of ~1 MiB holds ``ENTRIES`` small task objects under ``data.tasks``. Each side
changes ~30 % of the entries (a different field per side, so most overlaps merge cleanly; about
one overlap in ten changes the same field on both sides and is a conflict, resolved with
``on_conflict='theirs'``) and adds and deletes a few. Measured in the same run, interleaved
round by round (the order rotating) so machine drift hits all alike:

- function: ``compute_merge([ours, theirs], strategy='three_way', base=base)`` on states already
  in memory (the pure merge the ``merge_states`` tool runs, provenance and conflict report
  included);
- tool: the ``merge_states`` tool through the MCP SDK's in-memory ``Client(server)`` on a real
  SQLite file, with the three states stored as revisions 1 (base), 2 (ours) and 3 (theirs) of
  one context: ``inputs=[{context, revision: 2}, {context, revision: 3}]``, ``base={context,
  revision: 1}``, no target. What an agent waits for: reading and decompressing three
  snapshots, the merge, checking the merged state, and the 1 MiB answer (serialised, checked
  against the output schema, parsed by the client). The server runs with ``max_state_bytes``
  raised to 2 MiB, since one side is just over the default 1 MiB;
- baseline: ``json.loads`` + ``json.dumps`` of both inputs (their serialised text, ~2 MiB).

Target (DESIGN.md §11 ratios): function <= 5 x baseline. The tool / baseline ratio is printed
against the same number for information. Prints medians, the per-round min / median / max of
each figure and ratio, and the 1-minute load average; exits 0 when the run completed, whatever
the figures (non-zero only on an error).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mcp import Client

from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.models import ContextState, dumps
from groundhog_mcp.service.merge import compute_merge

TARGET_RATIO = 5.0
STATE_BYTES = 1024 * 1024
CHANGED = 0.30
SAME_FIELD = 0.10  # of the entries both sides changed: the share where they changed the same field


def base_state(rng: random.Random) -> dict[str, Any]:
    tasks: dict[str, Any] = {}
    data: dict[str, Any] = {"title": "release plan", "owner": "agent-1", "tasks": tasks}
    size = len(dumps(data))
    i = 0
    while size < STATE_BYTES - 600:
        key = f"task-{i:05d}"
        tasks[key] = {
            "title": f"step {i} of the plan: " + "".join(rng.choices("abcdefghij klmnop", k=40)),
            "status": rng.choice(["todo", "doing", "done"]),
            "estimate": rng.randint(1, 13),
            "tags": rng.sample(["api", "db", "ui", "docs", "ops", "test"], k=2),
            "note": "",
        }
        size += len(dumps({key: tasks[key]}))  # "key":{...}, and a comma: the braces' two bytes
        i += 1
    return data


def side(base: dict[str, Any], rng: random.Random, field: str, value: Any, shared: set[str]) -> dict[str, Any]:
    """A copy of ``base`` with ~30 % of the tasks changed at ``field`` (and at ``estimate`` for ``shared``)."""
    data = copy.deepcopy(base)
    tasks: dict[str, Any] = data["tasks"]
    keys = sorted(tasks)
    for key in rng.sample(keys, k=int(len(keys) * CHANGED)):
        tasks[key][field] = value(key)
    for key in shared:
        tasks[key]["estimate"] = rng.randint(20, 40)
    for key in rng.sample(keys, k=5):
        tasks.pop(key, None)
    for n in range(5):
        tasks[f"{field}-new-{n}"] = {"title": f"added by the {field} side", "status": "todo", "estimate": 1}
    return data


def spread(values: list[float], scale: float = 1.0) -> str:
    """min / median / max of per-round figures."""
    return f"{min(values) * scale:.2f} / {statistics.median(values) * scale:.2f} / {max(values) * scale:.2f}"


async def tool_client(
    stack: contextlib.AsyncExitStack, directory: Path, states: list[dict[str, Any]]
) -> Callable[[], Awaitable[Any]]:
    """An in-memory client of the application server on a SQLite file in ``directory`` holding
    ``states`` as revisions 1, 2, 3 of context ``plan``; returns the timed ``merge_states`` call."""
    settings = Settings(database=str(directory / "merge.sqlite"), max_state_bytes=2 * 1024 * 1024, tools="all")
    client = await stack.enter_async_context(Client(create_server(settings)))
    for revision, data in enumerate(states, start=1):
        if revision == 1:
            await _call(client, "register_context", {"name": "plan", "state": {"data": data}})
        else:
            await _call(client, "update_state", {"name": "plan", "data": data, "expected_revision": revision - 1})
    arguments = {
        "inputs": [{"context": "plan", "revision": 2}, {"context": "plan", "revision": 3}],
        "strategy": "three_way",
        "base": {"context": "plan", "revision": 1},
        "on_conflict": "theirs",
    }

    async def merge_tool() -> Any:
        return await _call(client, "merge_states", arguments)

    return merge_tool


async def _call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise RuntimeError(f"{tool} failed: {text}")
    return result.structured_content or {}


async def measure(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)

    base = base_state(rng)
    keys = sorted(base["tasks"])
    shared = set(rng.sample(keys, k=int(len(keys) * CHANGED * CHANGED * SAME_FIELD)))
    ours = side(base, rng, "status", lambda k: "done", shared)
    theirs = side(base, rng, "note", lambda k: f"reviewed {k}", shared)
    texts = [json.dumps({"data": d, "metadata": {}, "version": "1.0.0"}) for d in (ours, theirs)]
    states = [ContextState(data=json.loads(t)["data"]) for t in texts]
    base_state_value = ContextState(data=json.loads(json.dumps(base)))

    def baseline() -> None:
        for text in texts:
            json.dumps(json.loads(text))

    def merge() -> Any:
        return compute_merge(states, strategy="three_way", base=base_state_value, on_conflict="theirs")

    result = merge()
    times: dict[str, list[float]] = {"function": [], "tool": [], "baseline": []}
    loads: list[float] = []
    with tempfile.TemporaryDirectory(prefix="gh-bench-merge-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            merge_tool = await tool_client(stack, Path(tmp), [base, ours, theirs])
            answer = await merge_tool()  # warm-up, and a check that the tool merged what the function did
            if answer["state"]["data"] != result.state.data or answer["conflict_count"] != len(result.conflicts):
                raise RuntimeError("merge_states answered a different merge than compute_merge")
            baseline()

            async def run_function() -> None:
                merge()

            async def run_baseline() -> None:
                baseline()

            order: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
                ("function", run_function),
                ("tool", merge_tool),
                ("baseline", run_baseline),
            ]
            for round_ in range(args.rounds):
                offset = round_ % len(order)
                for key, fn in order[offset:] + order[:offset]:
                    started = time.perf_counter()
                    await fn()
                    times[key].append(time.perf_counter() - started)
                loads.append(os.getloadavg()[0])

    sizes = [len(dumps(state.to_json()).encode()) for state in states]
    merged_tasks = result.state.data["tasks"]
    ms = {key: statistics.median(values) * 1000 for key, values in times.items()}
    print(
        f"inputs: 2 states of {sizes[0]:,} and {sizes[1]:,} bytes (compact JSON; "
        f"{sum(len(t.encode()) for t in texts):,} bytes as json.dumps writes them), {len(keys):,} tasks in the base"
    )
    print(
        f"changed per side: {int(len(keys) * CHANGED):,} tasks (+5 added, -5 deleted); "
        f"merged: {len(merged_tasks):,} tasks, {len(result.conflicts)} conflicts (on_conflict='theirs'), "
        f"{len(result.provenance)} provenance entries"
    )
    print(
        f"rounds: {args.rounds} (interleaved, order rotating); 1-minute load average min / median / max {spread(loads)}"
    )
    print(f"{'':<44}{'median ms':>10}   per round min / median / max ms")
    labels = {
        "function": "compute_merge (function, states in memory)",
        "tool": "merge_states tool (in-memory Client)",
        "baseline": "json.loads+dumps of both inputs",
    }
    for key, label in labels.items():
        print(f"{label:<44}{ms[key]:>10.2f}   {spread(times[key], 1000)}")
    for key in ("function", "tool"):
        ratio = ms[key] / ms["baseline"]
        per_round = [a / b for a, b in zip(times[key], times["baseline"], strict=True)]
        met = "ok" if ratio <= TARGET_RATIO else "MISSED"
        noise = ", within noise" if min(per_round) <= TARGET_RATIO <= max(per_round) else ""
        what = "target" if key == "function" else "the function's target, for information"
        print(
            f"ratio {key} / baseline: {ratio:.2f}x ({what}: <= {TARGET_RATIO:.0f}x: {met}{noise}); "
            f"per round min / median / max {spread(per_round)}"
        )
    print(f"tool / function: {ms['tool'] / ms['function']:.2f}x (what reading, checking and answering add)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--seed", type=int, default=4)
    return asyncio.run(measure(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
