"""PostgreSQL sessions outside the pool: URL parameters, the LISTEN session, cancellation.

Several instances on one database hear of each other's commits: every write sends
``NOTIFY groundhog_changes, '<sequence>'`` in its transaction (delivered only if it commits),
and every store ``LISTEN``s on a dedicated connection outside the pool (:class:`ChangeListener`),
which it re-establishes with backoff when it drops.
"""

from __future__ import annotations

import asyncio
import random
import re
from typing import Any, Final, LiteralString
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
import structlog

from groundhog_mcp.errors import InitializationError

__all__ = [
    "CHANGES_CHANNEL",
    "SCHEMA_NAME",
    "ChangeListener",
    "cancel_requests",
    "deliver_swallowed_cancel",
    "first_line",
    "literal_identifier",
    "location_of",
    "pool_size",
    "split_parameters",
]

log = structlog.get_logger("groundhog_mcp.store.postgres")

# Every write announces its sequence here; every instance listens (see the module docstring).
CHANGES_CHANNEL: Final = "groundhog_changes"
SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# The LISTEN session: reconnect after 0.1 s, doubling up to 10 s (with jitter); and check a
# quiet session every 30 s, so a silently dropped one is noticed before TCP keepalives would.
_LISTEN_RETRY_MIN_S = 0.1
_LISTEN_RETRY_MAX_S = 10.0
_LISTEN_CHECK_S = 30.0
_MAX_OWN_SEQUENCES = 4096
# Our URL parameters, taken out before the rest goes to libpq.
_OUR_PARAMETERS = ("schema", "listen_url", "pool_min_size", "pool_max_size")


class ChangeListener:
    """The LISTEN session of one store and what it heard: an announcement only says "read the
    change feed now" (see :class:`~groundhog_mcp.store.base.ChangeAnnouncer`)."""

    def __init__(self, conninfo: str, location: str) -> None:
        self._conninfo = conninfo
        self.location = location
        self.listening = False
        self._announcements = 0
        # The change feed holds changes back behind a write in flight (store/pg_feed.py): the
        # NOTIFY of that write is news even when it is our own.
        self.held_back = False
        self._announced = asyncio.Event()
        # Sequences this store committed: their NOTIFY comes back to us, but the change feed was
        # woken by the write itself, so it is not announced again.
        self._own_sequences: set[int] = set()

    def committed(self, sequence: int) -> None:
        """A write of this store will commit ``sequence``: its notification is not news here."""
        if len(self._own_sequences) >= _MAX_OWN_SEQUENCES:
            self._own_sequences.clear()  # rolled-back writes never come back; costs a few extra reads
        self._own_sequences.add(sequence)

    async def wait_for_changes(self, seen: int) -> int:
        while self._announcements <= seen:
            await self._announced.wait()
        return self._announcements

    def _announce(self) -> None:
        self._announcements += 1
        self._announced.set()
        self._announced = asyncio.Event()

    def _own(self, payload: str) -> bool:
        """Whether a notification is of our own write (its ``sequence`` is one we committed)."""
        try:
            sequence = int(payload)
        except ValueError:
            return False
        if sequence not in self._own_sequences:
            return False
        self._own_sequences.discard(sequence)
        return not self.held_back

    async def listen(self, tried: asyncio.Event) -> None:
        """Hold the LISTEN session for as long as the store is open, reconnecting with backoff;
        ``tried`` is set once the first attempt succeeded or failed."""
        delay = _LISTEN_RETRY_MIN_S
        lost = False
        while True:
            deliver_swallowed_cancel(0)  # nothing else cancels this task: close() did
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, prepare_threshold=None)
            except psycopg.Error as exc:
                log.warning(
                    "change notifications: cannot connect the LISTEN session; polling meanwhile",
                    location=self.location,
                    error=first_line(exc),
                    retry_in_s=round(delay, 2),
                )
                lost = True
            else:
                try:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    self.listening = True
                    delay = _LISTEN_RETRY_MIN_S
                    if lost:
                        log.info("change notifications: LISTEN session restored", location=self.location)
                    # Commits made while no session listened were not announced: say "read now".
                    self._announce()
                    tried.set()
                    while True:
                        async for notice in conn.notifies(timeout=_LISTEN_CHECK_S):
                            if not self._own(notice.payload):
                                self._announce()
                        await conn.execute("SELECT 1")
                except psycopg.Error as exc:
                    log.warning(
                        "change notifications: LISTEN session lost; polling until it is back",
                        location=self.location,
                        error=first_line(exc),
                    )
                    lost = True
                except Exception:
                    log.exception("change notifications: LISTEN session failed unexpectedly; polling meanwhile")
                    lost = True
                finally:
                    self.listening = False
                    await conn.close()
            tried.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _LISTEN_RETRY_MAX_S)


def cancel_requests() -> int:
    task = asyncio.current_task()
    return task.cancelling() if task is not None else 0


def deliver_swallowed_cancel(requested: int) -> None:
    """Raise the cancellation a library swallowed since ``cancel_requests()`` gave ``requested``.

    On Python 3.11, ``asyncio.wait_for`` (which psycopg_pool uses to wait for a connection)
    drops a cancellation that arrives as the connection does: the task would carry on, and a
    change feed or LISTEN loop being stopped would never stop. A cancellation that was
    delivered, or an ``asyncio.timeout`` that expired and took its own back, leaves the count
    where it was.
    """
    if cancel_requests() > requested:
        raise asyncio.CancelledError


def split_parameters(url: str) -> tuple[str, dict[str, str]]:
    """Take our query parameters (``schema``, ``listen_url``) out of a URL: libpq would reject them."""
    if not url.startswith(("postgresql://", "postgres://")):
        return url, {}
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OUR_PARAMETERS}
    if not ours:
        return url, {}
    rest = urlencode([(k, v) for k, v in query if k not in _OUR_PARAMETERS])
    return urlunsplit(parts._replace(query=rest)), ours


def pool_size(ours: dict[str, str], name: str, default: int) -> int:
    text = ours.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise InitializationError(f"database: {name}={text!r} must be a whole number from 1 to 1000")
    return int(text)


def location_of(params: dict[str, Any], schema: str | None) -> str:
    """Where the store is, for messages and ``status``: never the password."""
    user = f"{params['user']}@" if params.get("user") else ""
    host = params.get("host") or "localhost"
    port = f":{params['port']}" if params.get("port") else ""
    where = f"postgresql://{user}{host}{port}/{params.get('dbname') or ''}"
    return where + (f"?schema={schema}" if schema else "")


def literal_identifier(name: str) -> LiteralString:
    """A schema name already checked against ``SCHEMA_NAME``, quoted as an identifier."""
    if not SCHEMA_NAME.fullmatch(name):  # pragma: no cover - checked in __init__
        raise InitializationError(f"database: schema {name!r} is not a plain identifier")
    return name  # type: ignore[return-value]  # validated: letters, digits and _ only


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
