"""Three-way merge benchmark (issue 4): two 1 MiB states vs one json.loads + json.dumps of them.

    python benchmarks/bench_merge.py            # 21 interleaved rounds
    python benchmarks/bench_merge.py --rounds 5 --seed 7

A base state of ~1 MiB holds ``ENTRIES`` small task objects under ``data.tasks``. Each side
changes ~30 % of the entries (a different field per side, so most overlaps merge cleanly; about
one overlap in ten changes the same field on both sides and is a conflict, resolved with
``on_conflict='theirs'``) and adds and deletes a few. Measured in the same run, interleaved
round by round so machine drift hits both alike:

- merge: ``compute_merge([ours, theirs], strategy='three_way', base=base)`` (the pure merge the
  ``merge_states`` tool runs, provenance and conflict report included);
- baseline: ``json.loads`` + ``json.dumps`` of both inputs (their serialised text, ~2 MiB).

Target (DESIGN.md §11 ratios): merge <= 5 x baseline. Prints medians, the ratio and the verdict.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from typing import Any

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--seed", type=int, default=4)
    args = parser.parse_args(argv)
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
    baseline()
    merge_times: list[float] = []
    baseline_times: list[float] = []
    for round_ in range(args.rounds):
        order = [(merge, merge_times), (baseline, baseline_times)]
        for fn, times in order if round_ % 2 == 0 else reversed(order):
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)

    sizes = [len(dumps(state.to_json()).encode()) for state in states]
    merged_tasks = result.state.data["tasks"]
    merge_ms = statistics.median(merge_times) * 1000
    baseline_ms = statistics.median(baseline_times) * 1000
    ratio = merge_ms / baseline_ms
    print(
        f"inputs: 2 states of {sizes[0]:,} and {sizes[1]:,} bytes (compact JSON; "
        f"{sum(len(t.encode()) for t in texts):,} bytes as json.dumps writes them), {len(keys):,} tasks in the base"
    )
    print(
        f"changed per side: {int(len(keys) * CHANGED):,} tasks (+5 added, -5 deleted); "
        f"merged: {len(merged_tasks):,} tasks, {len(result.conflicts)} conflicts (on_conflict='theirs'), "
        f"{len(result.provenance)} provenance entries"
    )
    print(f"rounds: {args.rounds} (interleaved)")
    print(f"three-way merge          median {merge_ms:8.2f} ms  (min {min(merge_times) * 1000:.2f})")
    print(f"json.loads+dumps inputs  median {baseline_ms:8.2f} ms  (min {min(baseline_times) * 1000:.2f})")
    verdict = "ok" if ratio <= TARGET_RATIO else "OVER TARGET"
    print(f"ratio merge / baseline: {ratio:.2f}x (target <= {TARGET_RATIO:.0f}x): {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
