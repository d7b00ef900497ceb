"""Group commit for the SQLite backend: one transaction and one fsync for the writes in flight.

With ``synchronous=FULL`` a commit costs one fdatasync of the WAL; writes that arrive while one
commits would each pay their own. :class:`GroupCommitter` queues write units of work and runs
them on the store's own thread in batches: ``BEGIN IMMEDIATE``, each write in order inside its
own ``SAVEPOINT`` (a write that fails — a conflict, a missing context, a bad patch — is rolled
back to its savepoint alone), one ``COMMIT``, and only then is any write of the batch answered.
A batch takes what is queued when it starts and what arrives while it runs, up to
``max_writes`` writes or ``max_seconds`` of work, so a single write waits for nobody and a
batch holds the write lock (and the thread reads also run on) for a bounded time.

A write that starts a batch with nothing queued behind it runs without a savepoint: if it fails,
the transaction (holding nothing else) is rolled back whole. Writes that join it later still get
one each. The writes of a batch submitted from an event loop (:meth:`GroupCommitter.submit_async`)
are answered in one hand-off to that loop after the ``COMMIT``, not one each.

:attr:`GroupCommitter.batch_memo` is what the writes of the running batch may remember for the
ones after them (the store keeps each namespace's audit chain head there): empty at each
``BEGIN``, ``None`` outside a batch, and put back as it was when a write's savepoint is rolled
back, so nothing a failed write did is remembered.
"""

from __future__ import annotations

import asyncio
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

_Answer = tuple["asyncio.Future[Any]", Any, BaseException | None]  # a future, its result or its error


@dataclass
class CommitStats:
    """What the writer did since the store opened (this process only)."""

    commits: int = 0  # write transactions committed: one fdatasync each with synchronous=FULL
    writes: int = 0  # writes committed (savepoints released and then committed)
    largest_batch: int = 0
    savepoints: int = 0  # writes run inside a SAVEPOINT (the others began a batch alone)
    handoffs: int = 0  # callbacks handed to an event loop to answer its writes: one per batch


@dataclass(frozen=True)
class _Pending:
    unit: WriteUnit
    future: Future[Any] | asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop | None = None  # set for an asyncio future (answered on its loop)


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
        # Facts the writes of the running batch hand on to the next ones (the store's thread only).
        self.batch_memo: dict[Any, Any] | None = None

    def submit(self, unit: WriteUnit) -> Future[Any]:
        """Queue ``unit``; its future completes after the batch holding it has committed."""
        future: Future[Any] = Future()
        self._queue_pending(_Pending(unit, future))
        return future

    def submit_async(self, unit: WriteUnit) -> asyncio.Future[Any]:
        """:meth:`submit` from the running event loop: the writes of a batch are answered on it
        together, in one callback after the ``COMMIT``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue_pending(_Pending(unit, future, loop))
        return future

    def _queue_pending(self, pending: _Pending) -> None:
        with self._lock:
            self._queue.append(pending)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._executor.submit(self._drain)
        except RuntimeError as exc:  # the executor is shut down: the store is closing
            with self._lock:
                self._scheduled = False
            self._fail_queued(exc)

    def _take(self) -> _Pending | None:
        """The next queued write whose caller still waits for it (the store's thread only)."""
        while True:
            with self._lock:
                if not self._queue:
                    return None
                pending = self._queue.popleft()
            future = pending.future
            if isinstance(future, Future):
                if future.set_running_or_notify_cancel():
                    return pending
            elif not future.cancelled():  # (read across threads: a late cancel only drops the answer)
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
        failed: list[tuple[_Pending, BaseException]] = []
        while (pending := self._take()) is not None:
            failed.append((pending, self._translate(exc)))
        self._answer([], failed)

    def _run_batch(self, first: _Pending) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            self._answer([], [(first, self._translate(exc))])
            return
        self.batch_memo = {}
        try:
            self._run_writes(conn, first)
        finally:
            self.batch_memo = None

    def _run_writes(self, conn: sqlite3.Connection, first: _Pending) -> None:
        started = time.monotonic()
        done: list[tuple[_Pending, Any]] = []
        failed: list[tuple[_Pending, BaseException]] = []
        pending: _Pending | None = first
        # Alone so far: the write needs no savepoint (the transaction holds nothing else to keep).
        savepoint = bool(self._queue)
        while pending is not None:
            self._run_one(conn, pending, done, failed, savepoint=savepoint)
            savepoint = True
            if not conn.in_transaction:
                # The whole transaction was rolled back: by SQLite (I/O error, disk full), with
                # what the batch had written so far, whose writes fail with that error; or by
                # _run_one, after the batch's only write failed without a savepoint.
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
        *,
        savepoint: bool,
    ) -> None:
        memo = self.batch_memo
        remembered = dict(memo) if memo is not None and savepoint else None
        try:
            if savepoint:
                conn.execute("SAVEPOINT groundhog_write")
                result = pending.unit(conn)
                conn.execute("RELEASE groundhog_write")
                self.stats.savepoints += 1
            else:
                result = pending.unit(conn)
        except BaseException as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    if savepoint:
                        conn.execute("ROLLBACK TO groundhog_write")
                        conn.execute("RELEASE groundhog_write")
                    else:  # the batch's first and only write: nothing else to keep
                        conn.execute("ROLLBACK")
            if memo is not None:  # forget what the failed write remembered
                memo.clear()
                if remembered is not None and conn.in_transaction:
                    memo.update(remembered)
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
        self._answer(done, failed)

    def _answer(self, done: list[tuple[_Pending, Any]], failed: list[tuple[_Pending, BaseException]]) -> None:
        """Complete the futures: a concurrent one here, an event loop's in one callback on that loop."""
        on_loops: dict[asyncio.AbstractEventLoop, list[_Answer]] = {}
        answers: list[tuple[_Pending, Any, BaseException | None]] = [(each, result, None) for each, result in done]
        answers += [(each, None, error) for each, error in failed]
        for each, result, error in answers:
            future, loop = each.future, each.loop
            if isinstance(future, Future):
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)
            elif loop is not None:
                on_loops.setdefault(loop, []).append((future, result, error))
        for loop, settled in on_loops.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)
                self.stats.handoffs += 1


def _settle(answers: list[_Answer]) -> None:
    """On the event loop: answer the writes of one batch (a cancelled caller's answer is dropped)."""
    for future, result, error in answers:
        if future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
