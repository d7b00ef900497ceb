"""kill -9 at random points of a stream of CAS writes, then prove nothing acknowledged was lost.

One :class:`CrashLoop` drives the real server over raw JSON-RPC (``RawServer`` from the e2e
harness: the SDK client cannot be SIGKILLed mid-request). Each round restarts the server,
checks everything the earlier rounds acknowledged, streams compare-and-set writes to two
contexts (whole-data replace, RFC 7396 merge patch and RFC 6902 patch, so every write path
is crossed) and SIGKILLs the server:

- every third round (0, 3, 6, ...), right after an answer was read and before the next write is
  sent: the window in which a write acknowledged before its ``COMMIT`` is lost. These kills are
  counted (``CrashReport.after_answer_kills``) and the tests assert the count;
- the other rounds at a random fraction of a write's latency after a write was sent — before
  the server reads it, while it commits, after the commit but before the answer, or after it.

After every restart:

- every acknowledged revision reads back with its exact data (within history retention);
- the current revision of each context is the last acknowledged one, or the write that was
  in flight at the kill, whole;
- on disk: ``PRAGMA integrity_check`` is ok; per context one change row per revision,
  revisions 1..current without gap or duplicate (history retention may remove the oldest
  updates' rows, never later ones), sequences strictly increasing with the revision; the
  store-wide sequence (``sqlite_sequence``) never decreases, and every acknowledged sequence
  is the one on disk;
- the next acknowledged sequence is above every sequence seen before.

An acknowledged write missing after a restart raises :class:`AcknowledgedWriteLost`; any
other broken promise an ``AssertionError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import random
import sqlite3
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import RawServer, raw_result_text
from tests.reliability.battery import start_raw

__all__ = ["AFTER_ANSWER_EVERY", "AcknowledgedWriteLost", "CrashLoop", "CrashReport", "after_answer_rounds"]

CONTEXTS = ("crash-a", "crash-b")
MAX_ACKS_BEFORE_KILL = 5
# Rounds 0, AFTER_ANSWER_EVERY, 2 * AFTER_ANSWER_EVERY, ... are killed right after an answer.
AFTER_ANSWER_EVERY = 3
# Writes allowed after the one the kill was aimed at, while the kill timer runs.
WRITES_AFTER_AIMED = 2
# Acknowledged revisions older than this (counted back from the current one) may have been
# pruned by history retention (keep_revisions, default 100); they were checked in earlier rounds.
RETENTION_WINDOW = 90


def after_answer_rounds(kills: int) -> int:
    """How many of ``kills`` rounds are killed right after an answer."""
    return len(range(0, kills, AFTER_ANSWER_EVERY))


class AcknowledgedWriteLost(AssertionError):
    """A write the server acknowledged is not there (or not as acknowledged) after a restart."""


@dataclass(frozen=True)
class Ack:
    context: str
    revision: int
    sequence: int
    data: dict[str, Any]


@dataclass(frozen=True)
class PendingWrite:
    context: str
    revision: int
    data: dict[str, Any]


@dataclass
class CrashReport:
    """What one run saw; printed by the tests, quoted in docs/reliability.md."""

    seed: int
    kills: int = 0
    acknowledged: int = 0
    after_answer_kills: int = 0
    in_flight_committed: int = 0
    in_flight_not_committed: int = 0
    acknowledged_after_aim: int = 0

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.kills} kills, {self.acknowledged} acknowledged writes, none lost; "
            f"at the kill: {self.after_answer_kills} right after an answer, "
            f"{self.in_flight_committed} in-flight committed, "
            f"{self.in_flight_not_committed} in-flight not committed, "
            f"{self.acknowledged_after_aim} answered before the kill landed"
        )


@dataclass
class _Model:
    """The client's record: what was acknowledged, per context, and what was in flight."""

    acks: dict[str, list[Ack]] = field(default_factory=lambda: {name: [] for name in CONTEXTS})
    in_flight: PendingWrite | None = None
    max_sequence: int = 0
    disk_sequence: int = 0

    def current(self, context: str) -> Ack:
        return self.acks[context][-1]

    def record(self, ack: Ack) -> None:
        assert ack.sequence > self.max_sequence, (
            f"sequence went back: {ack.context} revision {ack.revision} got sequence {ack.sequence}, "
            f"but {self.max_sequence} was seen before"
        )
        previous = self.acks[ack.context][-1].revision if self.acks[ack.context] else 0
        assert ack.revision == previous + 1, (
            f"{ack.context}: acknowledged revision {ack.revision} does not follow {previous}"
        )
        self.acks[ack.context].append(ack)
        self.max_sequence = ack.sequence


def _next_write(
    rng: random.Random, base: dict[str, Any], round_number: int, index: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Arguments of one write (without name and expected_revision) and the data it must produce."""
    token = uuid.uuid4().hex
    kind = rng.random()
    if kind < 0.5:
        data = {"round": round_number, "index": index, "token": token, "items": list(range(index % 7 + 1))}
        return {"data": data}, data
    if kind < 0.75:
        patch = {"round": round_number, "index": index, "token": token, "note": None if index % 2 else "odd"}
        expected = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                expected.pop(key, None)
            else:
                expected[key] = value
        return {"merge_patch": patch}, expected
    expected = copy.deepcopy(base)
    operations: list[dict[str, Any]] = []
    for key, value in (("round", round_number), ("index", index), ("token", token)):
        operations.append({"op": "add", "path": f"/{key}", "value": value})
        expected[key] = value
    if isinstance(expected.get("items"), list):
        operations.append({"op": "add", "path": "/items/-", "value": index})
        expected["items"] = [*expected["items"], index]
    return {"patch": operations}, expected


class CrashLoop:
    """Rounds of (restart, verify, write, kill -9) against one database file."""

    def __init__(
        self,
        database: Path,
        *,
        env: dict[str, str],
        workdir: Path,
        seed: int,
        command: Sequence[str] | None = None,
    ) -> None:
        self.database = database
        self.env = env
        self.workdir = workdir
        self.command = command
        self.rng = random.Random(seed)
        self.report = CrashReport(seed=seed)
        self.model = _Model()
        self.latency_s = 0.003  # refined from the measured acknowledgements
        self._sent_at = 0.0
        self._round = 0

    async def run(self, kills: int) -> CrashReport:
        for _ in range(kills):
            await self._round_with_kill()
        server = await self._start()
        try:
            await self._verify(server)
            assert await server.close() == 0, "the server did not exit cleanly when stdin closed"
        finally:
            await server.ensure_dead()
        return self.report

    async def _start(self) -> RawServer:
        stderr_path = self.workdir / f"crash-round-{self._round}.stderr"
        server = await start_raw(self.database, env=self.env, stderr_path=stderr_path, command=self.command)
        await server.initialize()
        return server

    async def _round_with_kill(self) -> None:
        server = await self._start()
        try:
            if self._round == 0:
                await self._register(server)
            else:
                await self._verify(server)
            await self._write_and_kill(server)
            self.report.kills += 1
        finally:
            await server.ensure_dead()
            self._round += 1

    async def _register(self, server: RawServer) -> None:
        for name in CONTEXTS:
            data = {"round": 0, "index": 0, "token": uuid.uuid4().hex, "items": [0]}
            result = await server.call_ok("register_context", {"name": name, "state": {"data": data}})
            self.model.record(Ack(name, result["revision"], result["sequence"], data))
            self.report.acknowledged += 1

    async def _write_and_kill(self, server: RawServer) -> None:
        after_answer = self._round % AFTER_ANSWER_EVERY == 0
        acks_before_aim = self.rng.randint(1 if after_answer else 0, MAX_ACKS_BEFORE_KILL)
        aim = acks_before_aim + 1  # the write the kill is aimed at
        aimed = False

        async def step(index: int) -> tuple[int, PendingWrite] | None:
            """Send write ``index``, kill right after an answer, or send nothing (the kill is on its way)."""
            nonlocal aimed
            if index > aim + WRITES_AFTER_AIMED:
                return None
            if index == aim and after_answer:
                # Called right after the answer to write aim - 1 was read; nothing is in flight.
                server.kill()
                self.report.after_answer_kills += 1
                return None
            try:
                sent = await self._send_write(server, index)
            except (BrokenPipeError, ConnectionResetError):
                return None  # the kill landed first: the server never read this write
            if index == aim:
                # Anywhere from before the server reads the write to after it answers it.
                asyncio.get_running_loop().call_later(self.rng.uniform(0, 1.5 * self.latency_s), server.kill)
                aimed = True
            return sent

        index = 1
        pending = await step(index)
        while (message := await server.receive()) is not None:
            if "method" in message and "id" not in message:
                continue  # a notification
            assert pending is not None, f"an answer with no write in flight: {message}"
            request_id, write = pending
            assert message.get("id") == request_id, f"unexpected message: {message}"
            self._take_answer(message, write)
            if aimed:
                self.report.acknowledged_after_aim += 1
            index += 1
            pending = await step(index)
        assert await server.wait() == -9, "the server exited by itself instead of being killed"
        self.model.in_flight = pending[1] if pending is not None else None

    async def _send_write(self, server: RawServer, index: int) -> tuple[int, PendingWrite]:
        context = self.rng.choice(CONTEXTS)
        base = self.model.current(context)
        arguments, expected = _next_write(self.rng, base.data, self._round, index)
        arguments |= {"name": context, "expected_revision": base.revision}
        self._sent_at = time.monotonic()
        request_id = await server.send_tool_call("update_state", arguments)
        return request_id, PendingWrite(context, base.revision + 1, expected)

    def _take_answer(self, message: dict[str, Any], write: PendingWrite) -> None:
        result = message.get("result")
        assert isinstance(result, dict), f"the write was answered with an error: {message}"
        assert not result.get("isError"), f"the write failed: {raw_result_text(result)}"
        structured = result["structuredContent"]
        assert structured["revision"] == write.revision, f"acknowledged {structured} for {write}"
        self.model.record(Ack(write.context, write.revision, structured["sequence"], write.data))
        self.report.acknowledged += 1
        elapsed = time.monotonic() - self._sent_at
        self.latency_s = 0.8 * self.latency_s + 0.2 * elapsed

    async def _verify(self, server: RawServer) -> None:
        in_flight = self.model.in_flight
        committed = False
        for context in CONTEXTS:
            last = self.model.current(context)
            current = await self._read(server, context, None, last)
            revision = current["revision"]
            if revision < last.revision:
                raise AcknowledgedWriteLost(
                    f"seed {self.report.seed}: {context} is at revision {revision} after the restart, but revision "
                    f"{last.revision} was acknowledged (sequence {last.sequence}) before the kill"
                )
            if revision > last.revision:
                assert in_flight is not None and in_flight.context == context and revision == in_flight.revision, (
                    f"seed {self.report.seed}: {context} revision {revision} appeared, "
                    f"but only {last.revision} was acknowledged and {in_flight} was in flight"
                )
                assert current["state"]["data"] == in_flight.data, (
                    f"seed {self.report.seed}: the in-flight write to {context} committed partly or wrongly"
                )
                committed = True
            elif current["state"]["data"] != last.data:
                raise AcknowledgedWriteLost(
                    f"seed {self.report.seed}: {context} revision {revision} does not hold the acknowledged data"
                )
            for ack in self.model.acks[context]:
                if ack.revision <= revision - RETENTION_WINDOW:
                    continue
                past = await self._read(server, context, ack.revision, ack)
                if past["state"]["data"] != ack.data:
                    raise AcknowledgedWriteLost(
                        f"seed {self.report.seed}: acknowledged revision {ack.revision} of {context} reads back changed"
                    )
        if in_flight is not None:
            if committed:
                # The unacknowledged write is now a fact other clients may have seen: later writes build on it.
                self.report.in_flight_committed += 1
                self.model.acks[in_flight.context].append(
                    Ack(in_flight.context, in_flight.revision, self._sequence_on_disk(in_flight), in_flight.data)
                )
            else:
                self.report.in_flight_not_committed += 1
            self.model.in_flight = None
        self._check_file()

    async def _read(self, server: RawServer, context: str, revision: int | None, ack: Ack) -> dict[str, Any]:
        arguments: dict[str, Any] = {"name": context} | ({"revision": revision} if revision is not None else {})
        result = await server.call_tool("get_state", arguments)
        if result.get("isError"):
            raise AcknowledgedWriteLost(
                f"seed {self.report.seed}: {context} revision {ack.revision} was acknowledged (sequence "
                f"{ack.sequence}) but reading it after the restart fails: {raw_result_text(result)}"
            )
        return result["structuredContent"]

    def _sequence_on_disk(self, write: PendingWrite) -> int:
        with contextlib.closing(self._connect()) as db:
            row = db.execute(
                "SELECT c.sequence FROM changes c JOIN contexts x ON x.id = c.context_id"
                " WHERE x.name = ? AND x.deleted_at IS NULL AND c.revision = ?",
                (write.context, write.revision),
            ).fetchone()
        assert row is not None, f"no change row for the committed in-flight write {write}"
        sequence = int(row[0])
        assert sequence > self.model.max_sequence, f"the in-flight write got sequence {sequence}, not above the last"
        self.model.max_sequence = sequence
        return sequence

    def _connect(self) -> sqlite3.Connection:
        # Read-only, next to the running server: the server did the WAL recovery, we only look.
        return sqlite3.connect(f"file:{self.database}?mode=ro", uri=True, timeout=10)

    def _check_file(self) -> None:
        seed = self.report.seed
        with contextlib.closing(self._connect()) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"seed {seed}: integrity_check"
            duplicates = db.execute(
                "SELECT context_id, revision, count(*) FROM changes GROUP BY context_id, revision HAVING count(*) > 1"
            ).fetchall()
            assert duplicates == [], f"seed {seed}: duplicated change rows (context_id, revision, count): {duplicates}"
            (disk_sequence,) = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
            (max_row,) = db.execute("SELECT max(sequence) FROM changes").fetchone()
            assert disk_sequence >= max_row, f"seed {seed}: sqlite_sequence {disk_sequence} below max row {max_row}"
            assert disk_sequence >= self.model.disk_sequence, (
                f"seed {seed}: the store-wide sequence went back from {self.model.disk_sequence} to {disk_sequence}"
            )
            assert disk_sequence >= self.model.max_sequence, (
                f"seed {seed}: sequence {self.model.max_sequence} was acknowledged but the file is at {disk_sequence}"
            )
            self.model.disk_sequence = disk_sequence
            for context in CONTEXTS:
                rows = db.execute(
                    "SELECT c.revision, c.sequence, h.sequence FROM changes c"
                    " JOIN contexts x ON x.id = c.context_id AND x.name = ? AND x.deleted_at IS NULL"
                    " LEFT JOIN history h ON h.context_id = c.context_id AND h.revision = c.revision"
                    " ORDER BY c.revision",
                    (context,),
                ).fetchall()
                revisions = [r[0] for r in rows]
                # Revisions 1..current, one row each; history retention may have removed the rows of
                # the oldest updates (the registration row stays), never any after them.
                assert revisions and revisions[0] == 1, f"seed {seed}: {context} has no registration row"
                tail = revisions[1:]
                assert not tail or tail == list(range(tail[0], tail[0] + len(tail))), (
                    f"seed {seed}: {context} change revisions have a gap or a duplicate: {revisions}"
                )
                sequences = [r[1] for r in rows]
                assert all(a < b for a, b in itertools.pairwise(sequences)), (
                    f"seed {seed}: {context} sequences do not increase with the revision: {sequences}"
                )
                mismatched = [r for r in rows if r[2] is not None and r[2] != r[1]]
                assert not mismatched, f"seed {seed}: history and change feed disagree on sequences: {mismatched}"
                on_disk = dict(zip(revisions, sequences, strict=True))
                for ack in self.model.acks[context]:
                    if ack.revision not in on_disk and tail and 1 < ack.revision < tail[0]:
                        continue  # pruned by history retention
                    assert on_disk.get(ack.revision) == ack.sequence, (
                        f"seed {seed}: {context} revision {ack.revision} was acknowledged with sequence "
                        f"{ack.sequence}, the file has {on_disk.get(ack.revision)}"
                    )
