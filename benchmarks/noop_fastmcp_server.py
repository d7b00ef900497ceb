"""mcpstate's framework floor, for bench_peer.py: a FastMCP server with one no-op tool returning
a small dict, run with the peer venv's Python (FastMCP over the same MCP SDK version as ours).

    benchmarks/results/peer-venv-…/bin/python benchmarks/noop_fastmcp_server.py

Information only: it shows how much of mcpstate's per-call time its framework takes.
"""

from typing import Any

from fastmcp import FastMCP  # pyright: ignore[reportMissingImports]  # installed in the peer venv only

server = FastMCP("noop")  # pyright: ignore[reportUnknownVariableType]


@server.tool  # pyright: ignore[reportUntypedFunctionDecorator, reportUnknownMemberType]
def noop_dict() -> dict[str, Any]:
    """Return a small dict (sync, as mcpstate's tools are)."""
    return {"ok": True, "handle": "noop", "version": 1}


if __name__ == "__main__":
    server.run(show_banner=False)  # pyright: ignore[reportUnknownMemberType]
