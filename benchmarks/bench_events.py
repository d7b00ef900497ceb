"""Change notification latency and event handling cost, over real stdio servers.

In one run, on one SQLite file:
- in-process: a client subscribed (``resources/subscribe``) to a context's state writes to that
  context through the same server; latency = notification arrival - write acknowledged
  (the write commits before it is acknowledged, so this is an upper bound of commit → notify
  minus the reply's own transit);
- cross-process: a second server process writes; latency = notification at the first server's
  client - write acknowledged by the second;
- ``emit_event`` with a declarative handler vs ``update_state`` doing the same change.

Targets (issue 5): p50 ≤ 5 ms in-process, ≤ 50 ms cross-process, emit_event p50 ≤ 1.4 x update_state.

    python benchmarks/bench_events.py [--changes 300]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import mcp_types as types
from mcp import Client, StdioServerParameters

URI = "groundhog://contexts/bench/state"


def server(database: Path) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "groundhog_mcp", "--database", str(database), "--log-level", "WARNING", "--tools", "all"],
    )


class Arrivals:
    def __init__(self) -> None:
        self.times: list[float] = []
        self.event = asyncio.Event()

    async def __call__(self, message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification) and str(message.params.uri) == URI:
            self.times.append(time.perf_counter())
            self.event.set()

    async def next_after(self, count: int) -> float:
        while len(self.times) <= count:
            self.event.clear()
            await asyncio.wait_for(self.event.wait(), 10)
        return self.times[count]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        database = Path(tmp) / "bench.sqlite"
        arrivals = Arrivals()
        async with (
            Client(server(database), mode="legacy", message_handler=arrivals) as a,
            Client(server(database), mode="legacy") as b,
        ):
            handlers = {"set": {"action": "set", "path": "/n", "value_from": "/n"}}
            await a.call_tool("register_context", {"name": "bench", "event_handlers": handlers})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                await a.subscribe_resource(URI)
            in_process: list[float] = []
            cross_process: list[float] = []
            update: list[float] = []
            emit: list[float] = []
            for i in range(args.changes):
                seen = len(arrivals.times)
                started = time.perf_counter()
                await a.call_tool("update_state", {"name": "bench", "data": {"n": i}})
                acked = time.perf_counter()
                update.append(acked - started)
                in_process.append(max(0.0, await arrivals.next_after(seen) - acked))

                seen = len(arrivals.times)
                await b.call_tool("update_state", {"name": "bench", "data": {"n": -i}})
                acked = time.perf_counter()
                cross_process.append(max(0.0, await arrivals.next_after(seen) - acked))

                seen = len(arrivals.times)
                started = time.perf_counter()
                result = await a.call_tool("emit_event", {"name": "bench", "type": "set", "payload": {"n": i}})
                emit.append(time.perf_counter() - started)
                assert not result.is_error, result
                await arrivals.next_after(seen)
    rows = [
        ("notification, in-process (after ack)", in_process, 5.0),
        ("notification, cross-process (after ack)", cross_process, 50.0),
        ("update_state", update, None),
        ("emit_event, declarative handler", emit, None),
    ]
    print(f"{'series':42} {'p50 ms':>8} {'p99 ms':>8} {'target':>8}")
    for label, values, target in rows:
        ms = [v * 1000 for v in values]
        print(f"{label:42} {statistics.median(ms):8.2f} {pct(ms, 0.99):8.2f} {target or '':>8}")
    ratio = statistics.median(emit) / statistics.median(update)
    print(f"emit_event p50 / update_state p50 = {ratio:.2f} (target <= 1.4)")


if __name__ == "__main__":
    asyncio.run(main())
