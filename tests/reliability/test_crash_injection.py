"""kill -9 at random points of a CAS write stream: nothing acknowledged is lost (tests/reliability/crash_loop.py).

``[broken-ack_before_commit]`` is the proof that the check can fail: the same loop against a
copy of the package whose writes are answered before their COMMIT must report a lost write.
Round 0 is killed right after an answer, so that build loses a write in the first round.
Replay a run with ``GROUNDHOG_CRASH_SEED=<seed>`` (printed with ``-s``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from tests.reliability.battery import scaled
from tests.reliability.broken_plugin import Build
from tests.reliability.crash_loop import AcknowledgedWriteLost, CrashLoop, after_answer_rounds

pytestmark = [pytest.mark.e2e, pytest.mark.reliability]

KILLS = scaled(15, 200)


@pytest.mark.broken_build("ack_before_commit", fails_with=AcknowledgedWriteLost)
async def test_kill_9_at_random_points_loses_no_acknowledged_write(
    database: Path, raw_env: dict[str, str], tmp_path: Path, build: Build
) -> None:
    seed = int(os.environ.get("GROUNDHOG_CRASH_SEED") or random.randrange(2**32))
    loop = CrashLoop(database, env=raw_env, workdir=tmp_path, seed=seed)
    try:
        report = await loop.run(KILLS)
    finally:
        print(f"\ncrash injection{' (' + build.defect.name + ')' if build.defect else ''}: {loop.report.summary()}")
    assert report.kills == KILLS
    # The window that loses a write answered before its COMMIT was hit as often as planned.
    assert report.after_answer_kills == after_answer_rounds(KILLS) == len(range(0, KILLS, 3))
