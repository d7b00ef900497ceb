"""One agent of the lease model test (tests/e2e/test_lease_model.py), in a process of its own.

``python -m tests.e2e.lease_worker DATABASE NAME SEED ITERATIONS`` takes the lease of context
NAME in turns with the other workers, reads the counter, sometimes stalls past its lease's
expiry (a paused agent), writes ``{"n": n + 1, "token": its token}`` *without* compare-and-set
(only the lease keeps the increments apart), sometimes renews, and releases. Every outcome is
one JSON line on stdout: ``{"op", "token", "ok", ...}`` with the server's times.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys

from groundhog_mcp import StateManager
from groundhog_mcp.errors import LeasedError
from groundhog_mcp.models import format_timestamp
from groundhog_mcp.store import open_store


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


async def main(database: str, name: str, seed: int, iterations: int) -> None:
    rng = random.Random(seed)
    manager = StateManager(open_store(database))
    await manager.start()
    try:
        for _ in range(iterations):
            ttl = rng.choice((0.3, 0.5, 1.0))
            try:
                grant = await manager.take_lease(name, ttl_seconds=ttl, wait_seconds=30, holder=f"w{seed}")
            except LeasedError:
                emit(op="take", ok=False)
                continue
            token = grant.lease.token
            assert grant.change is not None and grant.lease.expires_at is not None
            emit(
                op="take",
                ok=True,
                token=token,
                sequence=grant.change.sequence,
                expires_at=format_timestamp(grant.lease.expires_at),
            )
            current = (await manager.get(name)).state.data
            pause = rng.random()
            if pause < 0.15:
                await asyncio.sleep(ttl + 0.2)  # stalls past its expiry: its write must be refused
            elif pause < 0.5:
                await asyncio.sleep(rng.random() * ttl / 3)
            if rng.random() < 0.3:
                try:
                    renewed = await manager.renew_lease(name, token, ttl_seconds=ttl)
                    assert renewed.change is not None and renewed.lease.expires_at is not None
                    emit(
                        op="renew",
                        ok=True,
                        token=token,
                        sequence=renewed.change.sequence,
                        expires_at=format_timestamp(renewed.lease.expires_at),
                    )
                except LeasedError:
                    emit(op="renew", ok=False, token=token)
            try:
                data = {"n": int(current.get("n", 0)) + 1, "token": token}
                written = await manager.with_lease(token).update(name, data=data)
                emit(
                    op="write",
                    ok=True,
                    token=token,
                    revision=written.context.revision,
                    sequence=written.change.sequence,
                )
            except LeasedError as refused:
                emit(op="write", ok=False, token=token, stale=not refused.retryable)
            try:
                released = await manager.release_lease(name, token)
                emit(
                    op="release",
                    ok=True,
                    token=token,
                    sequence=released.change.sequence if released.change is not None else None,
                )
            except LeasedError:
                emit(op="release", ok=False, token=token)
    finally:
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
