"""kill -9 at random points of a CAS write stream: nothing acknowledged is lost (tests/reliability/crash_loop.py).

The second test is the proof that the first can fail: the same loop against a copy of the
package whose writes are acknowledged before COMMIT must report a lost write.
Replay a run with ``GROUNDHOG_CRASH_SEED=<seed>`` (printed with ``-s``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.reliability.battery import scaled
from tests.reliability.broken_build import ack_before_commit_build
from tests.reliability.crash_loop import AcknowledgedWriteLost, CrashLoop

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

KILLS = scaled(15, 200)
# The broken build loses the last acknowledged write in most rounds (not when the kill lands
# after the next write's BEGIN, which commits it); the loop stops at the first loss it finds.
BROKEN_BUILD_KILLS = 15


def _seed() -> int:
    return int(os.environ.get("GROUNDHOG_CRASH_SEED") or random.randrange(2**32))


async def test_kill_9_at_random_points_loses_no_acknowledged_write(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    loop = CrashLoop(database, env=raw_env, workdir=tmp_path, seed=_seed())
    report = await loop.run(KILLS)
    print(f"\ncrash injection: {report.summary()}")
    assert report.kills == KILLS
    assert report.lost == 0


async def test_the_crash_check_catches_an_ack_before_commit_build(
    database: Path, raw_env: dict[str, str], tmp_path: Path
) -> None:
    command = ack_before_commit_build(tmp_path / "broken")
    loop = CrashLoop(database, env=raw_env, workdir=tmp_path, seed=_seed(), command=command)
    with pytest.raises(AcknowledgedWriteLost) as caught:
        await loop.run(BROKEN_BUILD_KILLS)
    print(f"\nack-before-commit build: loss caught after {loop.report.kills} kills: {caught.value}")
