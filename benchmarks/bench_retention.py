"""Storage under history retention: 10,000 writes of a ~10 KB state to one context.

Prints the database file size after every 1,000 writes, with the default retention
(keep_revisions=100) and, as the baseline in the same run, with retention off. Usage:

    python benchmarks/bench_retention.py [--writes 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import string
import tempfile
from pathlib import Path

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.store import Retention, SQLiteStore

WORDS = [
    "".join(random.Random(i).choices(string.ascii_lowercase, k=random.Random(i).randint(3, 9))) for i in range(2000)
]


def state_of(i: int, rng: random.Random) -> dict[str, object]:
    """~10 KB of JSON that compresses like real notes do (words, numbers, nesting), different each write."""
    return {
        "write": i,
        "notes": [" ".join(rng.choices(WORDS, k=12)) for _ in range(104)],
        "scores": {f"k{j}": rng.random() for j in range(40)},
    }


async def run(path: Path, writes: int, retention: Retention) -> list[tuple[int, int]]:
    manager = StateManager(SQLiteStore(path, retention=retention))
    await manager.start()
    rng = random.Random(7)
    sizes: list[tuple[int, int]] = []
    try:
        await manager.register("c", state=ContextState(data=state_of(0, rng)))
        for i in range(1, writes + 1):
            await manager.update("c", data=state_of(i, rng))
            if i % 1000 == 0:
                sizes.append((i, (await manager.store.status()).size_bytes or 0))
        state_bytes = (await manager.get("c")).state_size
    finally:
        await manager.close()
    print(f"  state size {state_bytes} bytes; file after close {path.stat().st_size / 1e6:.2f} MB")
    return sizes


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writes", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print("default retention (keep_revisions=100):")
        kept = await run(Path(tmp) / "kept.sqlite", args.writes, Retention())
        print("retention off (keep_revisions=0), baseline:")
        off = await run(Path(tmp) / "off.sqlite", args.writes, Retention(keep_revisions=0))
    print(f"{'writes':>8} {'retention MB':>13} {'no retention MB':>16}")
    for (n, a), (_, b) in zip(kept, off, strict=True):
        print(f"{n:>8} {a / 1e6:>13.2f} {b / 1e6:>16.2f}")


if __name__ == "__main__":
    asyncio.run(main())
