"""Group commit for the SQLite backend: one transaction and one fsync for the writes in flight.

With ``synchronous=FULL`` a commit costs one fdatasync of the WAL; writes that arrive while one
commits would each pay their own. :class:`GroupCommitter` queues write units of work and runs
them on the store's own thread in batches: ``BEGIN IMMEDIATE``, each write in order inside its
own ``SAVEPOINT`` (a write that fails — a conflict, a missing context, a bad patch — is rolled
back to its savepoint alone), one ``COMMIT``, and only then is any write of the batch answered.
A batch takes what is queued when it starts and what arrives while it runs, up to
``max_writes`` writes or ``max_seconds`` of work, so a single write waits for nobody and a
batch holds the write lock (and the thread reads also run on) for a bounded time.
"""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Final

__all__ = ["CommitStats", "GroupCommitter", "WriteUnit"]

WriteUnit = Callable[[sqlite3.Connection], Any]
"""A unit of work run on an open write transaction; its result answers the write."""

MAX_BATCH_WRITES: Final = 64
MAX_BATCH_SECONDS: Final = 0.05  # of work in one transaction before the batch commits


@dataclass
class CommitStats:
    """What the writer did since the store opened (this process only)."""

    commits: int = 0  # write transactions committed: one fdatasync each with synchronous=FULL
    writes: int = 0  # writes committed (savepoints released and then committed)
    largest_batch: int = 0


@dataclass(frozen=True)
class _Pending:
    unit: WriteUnit
    future: Future[Any]


class GroupCommitter:
    """Runs write units on ``executor`` (one thread, the connection's) in group-committed batches."""

    def __init__(
        self,
        executor: Executor,
        connection: Callable[[], sqlite3.Connection],
        translate: Callable[[BaseException], BaseException],
        *,
        max_writes: int = MAX_BATCH_WRITES,
        max_seconds: float = MAX_BATCH_SECONDS,
    ) -> None:
        self._executor = executor
        self._connection = connection
        self._translate = translate
        self.max_writes = max_writes
        self.max_seconds = max_seconds
        self.stats = CommitStats()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._lock = threading.Lock()
        self._scheduled = False  # a drain is queued on (or running on) the executor

    def submit(self, unit: WriteUnit) -> Future[Any]:
        """Queue ``unit``; its future completes after the batch holding it has committed."""
        pending = _Pending(unit, Future())
        with self._lock:
            self._queue.append(pending)
            if self._scheduled:
                return pending.future
            self._scheduled = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError as exc:  # the executor is shut down: the store is closing
            with self._lock:
                self._scheduled = False
            self._fail_queued(exc)
        return pending.future

    def _take(self) -> _Pending | None:
        """The next queued write whose caller still waits for it (the store's thread only)."""
        while True:
            with self._lock:
                if not self._queue:
                    return None
                pending = self._queue.popleft()
            if pending.future.set_running_or_notify_cancel():
                return pending

    def _drain(self) -> None:
        """One batch, then yield the thread (reads queued meanwhile run) before the next one."""
        try:
            first = self._take()
            if first is not None:
                self._run_batch(first)
        finally:
            with self._lock:
                again = bool(self._queue)
                self._scheduled = again
            if again:
                try:
                    self._executor.submit(self._drain)
                except RuntimeError as exc:
                    with self._lock:
                        self._scheduled = False
                    self._fail_queued(exc)

    def _fail_queued(self, exc: BaseException) -> None:
        while (pending := self._take()) is not None:
            pending.future.set_exception(self._translate(exc))

    def _run_batch(self, first: _Pending) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            first.future.set_exception(self._translate(exc))
            return
        started = time.monotonic()
        done: list[tuple[_Pending, Any]] = []
        failed: list[tuple[_Pending, BaseException]] = []
        pending: _Pending | None = first
        while pending is not None:
            self._run_one(conn, pending, done, failed)
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (I/O error, disk full): what the batch
                # had written so far is gone with it. Those writes fail with that error.
                error = failed[-1][1]
                failed.extend((each, error) for each, _ in done)
                done.clear()
                break
            if len(done) + len(failed) >= self.max_writes or time.monotonic() - started >= self.max_seconds:
                break
            pending = self._take()
        self._commit(conn, done, failed)

    def _run_one(
        self,
        conn: sqlite3.Connection,
        pending: _Pending,
        done: list[tuple[_Pending, Any]],
        failed: list[tuple[_Pending, BaseException]],
    ) -> None:
        try:
            conn.execute("SAVEPOINT groundhog_write")
            result = pending.unit(conn)
            conn.execute("RELEASE groundhog_write")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO groundhog_write")
                    conn.execute("RELEASE groundhog_write")
            failed.append((pending, self._translate(exc)))
            return
        done.append((pending, result))

    def _commit(
        self,
        conn: sqlite3.Connection,
        done: list[tuple[_Pending, Any]],
        failed: list[tuple[_Pending, BaseException]],
    ) -> None:
        try:
            if conn.in_transaction:
                conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            error = self._translate(exc)
            failed.extend((each, error) for each, _ in done)
            done.clear()
        else:
            if done:
                stats = self.stats
                stats.commits += 1
                stats.writes += len(done)
                stats.largest_batch = max(stats.largest_batch, len(done))
        # Answered only now: a write is acknowledged after the COMMIT that made it durable.
        for each, result in done:
            each.future.set_result(result)
        for each, error in failed:
            each.future.set_exception(error)
