"""The protocol floor for the benchmarks: an MCPServer with one no-op tool.

    python benchmarks/noop_server.py                                # stdio (bench_core.py)
    python benchmarks/noop_server.py --transport http --port 8001   # streamable HTTP at /mcp
    python benchmarks/noop_server.py --transport sse --port 8002    # legacy HTTP+SSE at /sse

Over HTTP it is served the way groundhog-mcp serves itself (the SDK's Starlette app on
uvicorn, loopback only, no access log), so the difference is groundhog-mcp's own work.
"""

import argparse

from mcp.server.mcpserver import MCPServer

HOST = "127.0.0.1"

server = MCPServer("noop")


@server.tool()
async def noop() -> str:
    """Do nothing."""
    return "ok"


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
