"""groundhog-mcp's command line under cProfile, switched on by SIGUSR1 and written out by SIGUSR2,
for ``bench_peer.py --profile``:

    python benchmarks/cprofile_server.py OUT [groundhog-mcp arguments …]

The main thread (the event loop) is profiled from SIGUSR1 to SIGUSR2, and so is every work item
that a ``concurrent.futures`` worker thread (the SQLite store's executor) runs in that window, each
thread with its own profiler; SIGUSR2 merges them into ``OUT.1`` (``pstats`` format), the next
window into ``OUT.2``, and so on. cProfile slows
Python code (about 2x here): read the shares and the call counts, not the absolute times.
"""

import cProfile
import pstats
import signal
import sys
import threading
from concurrent.futures import thread as futures_thread
from typing import Any

OUT = sys.argv[1]
sys.argv = ["groundhog-mcp", *sys.argv[2:]]
main_profiler = cProfile.Profile()
worker_profilers: list[cProfile.Profile] = []
windows = 0
local = threading.local()
active = threading.Event()
run_work_item = futures_thread._WorkItem.run  # pyright: ignore[reportPrivateUsage]


def profiled_run(self: Any) -> None:
    if not active.is_set():
        return run_work_item(self)
    profiler = getattr(local, "profiler", None)
    if profiler is None:
        profiler = local.profiler = cProfile.Profile()
        worker_profilers.append(profiler)
    profiler.enable()
    try:
        return run_work_item(self)
    finally:
        profiler.disable()


def start(*_: object) -> None:
    for profiler in (main_profiler, *worker_profilers):
        profiler.clear()
    active.set()
    main_profiler.enable()


def stop(*_: object) -> None:
    global windows
    main_profiler.disable()
    active.clear()
    stats = pstats.Stats(main_profiler)
    for profiler in worker_profilers:
        stats.add(profiler)
    windows += 1
    stats.dump_stats(f"{OUT}.{windows}")


futures_thread._WorkItem.run = profiled_run  # pyright: ignore[reportPrivateUsage, reportAttributeAccessIssue]
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)

from groundhog_mcp.cli import main  # noqa: E402  (after the hooks, as a server command would run)

sys.exit(main())
