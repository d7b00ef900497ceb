"""Live updates: server-sent events from the change feed (``wait_for_changes``), which carries
the changes of other processes and instances too.

Bounded: ``max_streams`` open at once and ``per_session`` per browser session (beyond: 429); a
stream ends after ``lifetime`` seconds (the browser's ``EventSource`` reconnects from the last
id), when its session's token stops verifying, or when the server stops.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncGenerator, Awaitable, Callable

from starlette.responses import PlainTextResponse, Response, StreamingResponse

from groundhog_mcp.errors import ContextError
from groundhog_mcp.models import format_timestamp
from groundhog_mcp.service import StateManager

__all__ = ["LiveStreams"]


class LiveStreams:
    def __init__(self, max_streams: int, per_session: int) -> None:
        self._max = max_streams
        self._per_session = per_session
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        return sum(self._open.values())

    async def respond(
        self,
        manager: StateManager,
        session: str,
        after: int | None,
        name: str | None,
        still_signed_in: Callable[[], Awaitable[bool]],
        *,
        lifetime: float,
        keepalive: float,
        stopping: asyncio.Event,
    ) -> Response:
        if self.open >= self._max:
            return PlainTextResponse(f"Too many requests: at most {self._max} live streams at once", status_code=429)
        if self._open[session] >= self._per_session:
            return PlainTextResponse(
                f"Too many requests: at most {self._per_session} live streams per session", status_code=429
            )
        names = [name] if name else None
        try:  # validate the name (and the cursor) before answering 200
            _, cursor = await manager.wait_for_changes(names, after_sequence=after, timeout=0)
        except ContextError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        self._open[session] += 1

        async def events() -> AsyncGenerator[str]:
            nonlocal cursor
            loop = asyncio.get_running_loop()
            deadline = loop.time() + lifetime
            try:
                yield f"retry: 1000\nid: {cursor}\nevent: ready\ndata: {{}}\n\n"
                while not stopping.is_set() and loop.time() < deadline:
                    if not await still_signed_in():
                        yield "event: signed-out\ndata: {}\n\n"
                        return
                    wait = min(keepalive, max(deadline - loop.time(), 0.0))
                    changes, cursor = await manager.wait_for_changes(
                        names, after_sequence=cursor, timeout=wait, limit=100
                    )
                    for change in changes:
                        data = {
                            "sequence": change.sequence,
                            "context": change.name,
                            "revision": change.revision,
                            "op": change.op,
                            "actor": change.actor,
                            "timestamp": format_timestamp(change.timestamp),
                        }
                        yield f"id: {change.sequence}\nevent: change\ndata: {json.dumps(data)}\n\n"
                    if not changes:
                        yield f"id: {cursor}\nevent: tick\ndata: {{}}\n\n"
            finally:
                self._open[session] -= 1
                if self._open[session] <= 0:
                    del self._open[session]

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-store", "x-accel-buffering": "no"}
        )
