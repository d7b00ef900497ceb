"""``groundhog-mcp dashboard``: the dashboard app on a socket of its own, served by uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Generator

import uvicorn
from starlette.types import ASGIApp

__all__ = ["serve_until_stopped"]


class _Uvicorn(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        # Our handlers stop it (below): uvicorn must not re-raise the signal after shutting down,
        # which would end the process before the state manager closes.
        yield


async def serve_until_stopped(
    app: ASGIApp, sock: socket.socket, stopping: asyncio.Event, announce: Callable[[], None]
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT (or ``stopping`` is set); live streams end
    with ``stopping``, requests in flight get two seconds. ``announce`` runs once the signals stop
    it gracefully (a caller that sees the announcement may send SIGTERM at once)."""
    server = _Uvicorn(
        uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # our JSON lines on stderr
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=2,
        )
    )

    def stop() -> None:
        stopping.set()
        server.should_exit = True

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    announce()
    watcher = asyncio.create_task(stopping.wait())
    watcher.add_done_callback(lambda _: stop())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
