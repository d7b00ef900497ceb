"""The listening socket of the HTTP transports: connections it accepts send small writes at once.

asyncio turns Nagle's algorithm off (``TCP_NODELAY``) only on sockets whose ``proto`` is
``IPPROTO_TCP``. With Nagle on, the second small write of an SSE event waited for the client's
delayed ACK: every legacy-SSE tool call took ~40 ms more (benchmarks/bench_transports.py).
"""

from __future__ import annotations

import asyncio
import socket

from groundhog_mcp.server.http import bind_socket


async def test_accepted_connections_have_nagle_off() -> None:
    listener = bind_socket("127.0.0.1", 0)
    nodelay: asyncio.Queue[int] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await nodelay.put(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_connect, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(nodelay.get(), 10) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
