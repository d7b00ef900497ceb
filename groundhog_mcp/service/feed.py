"""Follows the store's change feed and publishes every committed change on the bus, in order.

All changes reach the bus through here, local and foreign alike: a local write wakes the
feed at once; a write by another process is noticed by a cheap poll (SQLite's
``PRAGMA data_version`` changes only when another connection commits), every
``interval`` seconds. A store that announces commits (a :class:`ChangeAnnouncer`:
PostgreSQL ``LISTEN``/``NOTIFY``) wakes the feed too; while its announcements arrive, the
poll is only the fallback and runs every ``announced_interval`` seconds. The feed reads
from the last ``sequence`` it published, so subscribers see each change once, in
``sequence`` order, whoever wrote it, and a lost announcement loses nothing.

While a lease waiter of this process is next in line (:meth:`ChangeFeed.hurry`), a store
without announcements is polled every ``hurried_interval`` seconds instead (SQLite: a
``PRAGMA data_version`` check, the changes read only when another connection committed), so the
waiter hears of the release within milliseconds; the poll slows down again when no waiter of
this process is next in line. One rate for the process, however many waiters hurry it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING

import structlog

from groundhog_mcp.errors import ContextError, StateValidationError, ValidationIssue
from groundhog_mcp.models import Change, check_name
from groundhog_mcp.service.access import sees
from groundhog_mcp.service.bus import ChangeBus, Resync, cancel_and_wait
from groundhog_mcp.service.paths import parse_watch_paths, touches
from groundhog_mcp.service.validation import check_limit
from groundhog_mcp.store.base import ChangeAnnouncer, Store

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["MAX_WAIT_SECONDS", "ChangeFeed", "wait_for_changes"]

log = structlog.get_logger("groundhog_mcp.feed")

_PAGE = 500


class ChangeFeed:
    def __init__(
        self,
        store: Store,
        bus: ChangeBus,
        *,
        interval: float = 0.05,
        announced_interval: float = 1.0,
        hurried_interval: float = 0.005,
    ) -> None:
        self._store = store
        self._bus = bus
        self.interval = interval
        self.announced_interval = announced_interval
        self.hurried_interval = hurried_interval
        self.cursor = 0
        self.polls = 0  # reads of the store (a cheap check or the changes), for tests and metrics
        self._wake = asyncio.Event()
        self._forced = False
        self._hurrying = 0
        self._task: asyncio.Task[None] | None = None
        self._announcer = store if isinstance(store, ChangeAnnouncer) else None
        self._follower: asyncio.Task[None] | None = None

    async def start(self, cursor: int) -> None:
        self.cursor = cursor
        self._task = asyncio.create_task(self._run(), name="groundhog-change-feed")
        if self._announcer is not None:
            self._follower = asyncio.create_task(self._follow(self._announcer), name="groundhog-change-announcements")

    async def stop(self) -> None:
        await cancel_and_wait(self._follower)
        await cancel_and_wait(self._task)
        self._task = self._follower = None

    def wake(self) -> None:
        """A local write committed: read the feed now instead of at the next poll."""
        self._forced = True
        self._wake.set()

    @contextlib.contextmanager
    def hurry(self) -> Generator[None]:
        """Poll every ``hurried_interval`` seconds while in this block (a lease waiter next in
        line waits for a release by another process). Nested and concurrent blocks share one rate;
        a store that announces its commits is not polled faster (the announcement wakes the feed)."""
        self._hurrying += 1
        if self._hurrying == 1:
            self._wake.set()  # re-arm the poll at the hurried rate (a cheap check, not a forced read)
        try:
            yield
        finally:
            self._hurrying -= 1

    @property
    def hurried(self) -> bool:
        return self._hurrying > 0

    def committed(self, change: Change) -> None:
        """A local write committed. When it is the next change, publish it now (no read back);
        when another process's change may lie between, read the feed to keep sequence order."""
        if change.sequence == self.cursor + 1:
            self.cursor = change.sequence
            self._bus.publish(change)
        elif change.sequence > self.cursor:
            self.wake()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        force = True
        # Polls run at a fixed rate: a wake-up (a local write, an announcement) does not push the
        # next poll back, so another process's change waits at most one interval.
        next_poll = loop.time()
        while True:
            try:
                await self._drain(force)
            except asyncio.CancelledError:
                raise
            except ContextError as exc:
                # A busy or unreachable database: keep following, say so once per failure.
                log.warning("change feed read failed; retrying", error=str(exc))
            except Exception:
                log.exception("change feed read failed unexpectedly; retrying")
            now, interval = loop.time(), self._poll_interval()
            if now >= next_poll or next_poll - now > interval:
                next_poll = now + interval
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # races with the wake-up, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_poll):
                    await self._wake.wait()
            force, self._forced = self._forced, False
            self._wake.clear()

    def _poll_interval(self) -> float:
        follower, announcer = self._follower, self._announcer
        if announcer is not None and follower is not None and not follower.done() and announcer.announcing:
            return self.announced_interval
        if self._hurrying:
            return min(self.interval, self.hurried_interval)
        return self.interval

    async def _follow(self, announcer: ChangeAnnouncer) -> None:
        """Wake the feed on every announcement (commits by any instance, ours included)."""
        seen = 0
        while True:
            seen = await announcer.wait_for_changes(seen)
            self._forced = True
            self._wake.set()

    async def _drain(self, force: bool) -> None:
        while True:
            self.polls += 1
            changes = await self._store.poll_changes(self.cursor, limit=_PAGE, force=force)
            if not changes:
                return
            for change in changes:
                if change.sequence > self.cursor:  # a local change may have been published meanwhile
                    self.cursor = change.sequence
                    self._bus.publish(change)
            if len(changes) < _PAGE:
                return
            force = True


MAX_WAIT_SECONDS = 60.0
_SCAN_PAGE = 500
_MAX_SCAN_PAGES = 20


async def wait_for_changes(
    manager: StateManager,
    names: Sequence[str] | None = None,
    *,
    after_sequence: int | None = None,
    timeout: float = 30.0,  # noqa: ASYNC109 - the wait is the operation itself, bounded and validated here
    limit: int = 100,
    paths: Sequence[str] | None = None,
) -> tuple[list[Change], int]:
    """Changes after ``after_sequence`` to ``names`` (or to any of your contexts), waiting up
    to ``timeout`` seconds for the first. Returns ``(changes, cursor)``; pass ``cursor`` as the
    next ``after_sequence``. ``after_sequence=None`` means "from now". ``paths`` (JSON Pointers
    into the state document): only changes touching one of them, an ancestor or a descendant;
    the cursor still moves past the others."""
    wanted = set(names) if names else None
    watched = parse_watch_paths(paths)
    for name in wanted or ():
        check_name(name, field="contexts")
    if not 0 <= timeout <= MAX_WAIT_SECONDS:
        raise StateValidationError(
            [ValidationIssue("", f"must be between 0 and {MAX_WAIT_SECONDS} seconds; got {timeout}")],
            field="timeout",
        )
    check_limit(limit, manager.limits.max_page)

    def matches(change: Change) -> bool:
        return (
            sees(manager.principal, change)
            and (wanted is None or change.name in wanted)
            and (watched is None or touches(change, watched))
        )

    subscription = manager.bus.subscribe()
    try:
        # "From now" is the last committed change, which the feed may not have published yet.
        cursor = await manager.store.last_sequence() if after_sequence is None else after_sequence
        found, cursor = await _scan_feed(manager.store, manager.feed, cursor, matches, limit)
        if found:
            return found, cursor
        try:
            async with asyncio.timeout(timeout):
                while True:
                    item = await subscription.get()
                    if isinstance(item, Resync) or item.sequence > cursor + 1:
                        # Fell behind, or missed something: read the feed itself.
                        found, cursor = await _scan_feed(manager.store, manager.feed, cursor, matches, limit)
                    elif item.sequence > cursor:
                        cursor = item.sequence
                        found = [item] if matches(item) else []
                    if found:
                        return found, cursor
        except TimeoutError:
            return [], cursor
    finally:
        subscription.close()


async def _scan_feed(
    store: Store, feed: ChangeFeed, cursor: int, matches: Callable[[Change], bool], limit: int
) -> tuple[list[Change], int]:
    """Matching changes after ``cursor`` up to what the feed has published (bounded pages)."""
    found: list[Change] = []
    head = feed.cursor
    for _ in range(_MAX_SCAN_PAGES):
        if cursor >= head:
            break
        page = await store.changes_after(cursor, limit=_SCAN_PAGE)
        if not page:
            break
        for change in page:
            if change.sequence > head:
                return found, cursor
            cursor = change.sequence
            if matches(change):
                found.append(change)
                if len(found) >= limit:
                    return found, cursor
    return found, cursor
