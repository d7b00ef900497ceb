"""The protocol floor for the benchmarks: an MCPServer with no-op tools.

``noop`` returns a string (the floor of bench_core.py and the others); ``noop_dict`` a small
dict (structured output, like groundhog-mcp's write answer: bench_peer.py's floor);
``noop_state`` a dict shaped like a ``get_state`` answer with a ~1 KB state (information:
what the SDK's structured-output path costs for a read's shape).

    python benchmarks/noop_server.py                                # stdio (bench_core.py)
    python benchmarks/noop_server.py --transport http --port 8001   # streamable HTTP at /mcp
    python benchmarks/noop_server.py --transport sse --port 8002    # legacy HTTP+SSE at /sse

Over HTTP it is served the way groundhog-mcp serves itself (the SDK's Starlette app on
uvicorn, loopback only, no access log), so the difference is groundhog-mcp's own work.
"""

import argparse
from typing import Any

from mcp.server.mcpserver import MCPServer

HOST = "127.0.0.1"
# Built once, like a stored state: ~1 KB as compact JSON (benchmarks/populate.py's payload shape;
# not imported from there, which would load groundhog_mcp into the floor's process).
STATE: dict[str, Any] = {
    "data": {
        "title": "benchmark state",
        "counter": 0,
        "items": [{"id": k, "title": f"task number {k} of the plan", "done": k % 3 == 0} for k in range(12)],
        "notes": "n" * 120,
    },
    "metadata": {},
    "version": "1",
    "timestamp": "2026-12-06T00:00:00.000000Z",
}

server = MCPServer("noop")


@server.tool()
async def noop() -> str:
    """Do nothing."""
    return "ok"


@server.tool()
async def noop_dict() -> dict[str, Any]:
    """Return a small dict."""
    return {"name": "noop", "revision": 1, "sequence": 1}


@server.tool()
async def noop_state() -> dict[str, Any]:
    """Return a dict shaped like a get_state answer."""
    return {"name": "noop", "revision": 1, "current_revision": 1, "state": STATE}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stdio", "http", "sse"], default="stdio")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port on 127.0.0.1")
    args = parser.parse_args()
    if args.transport == "stdio":
        server.run("stdio")
    else:
        import uvicorn

        app = server.streamable_http_app(host=HOST) if args.transport == "http" else server.sse_app(host=HOST)
        uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False, server_header=False)
