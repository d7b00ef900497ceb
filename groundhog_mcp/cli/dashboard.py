"""``groundhog-mcp dashboard``: the read-only web dashboard (docs/dashboard.md) on its own port."""

from __future__ import annotations

import argparse
from typing import Any

from groundhog_mcp.app import Settings

__all__ = ["add_dashboard_command"]


def add_dashboard_command(commands: Any, common: argparse.ArgumentParser) -> None:
    dashboard = commands.add_parser(
        "dashboard", parents=[common], help="serve the read-only web dashboard (default http://127.0.0.1:8766/)"
    )
    dashboard.add_argument("--host", default=argparse.SUPPRESS, help="bind address (default 127.0.0.1)")
    dashboard.add_argument(
        "--port", dest="dashboard_port", type=int, default=argparse.SUPPRESS, help="port (default 8766; 0: any free)"
    )
    dashboard.add_argument(
        "--allowed-host",
        action="append",
        dest="allowed_hosts",
        default=argparse.SUPPRESS,
        metavar="HOST[:PORT]",
        help="also accept this Host header (repeatable)",
    )
    dashboard.add_argument(
        "--allowed-origin",
        action="append",
        dest="allowed_origins",
        default=argparse.SUPPRESS,
        metavar="ORIGIN",
        help="also accept this Origin header (repeatable)",
    )
    dashboard.add_argument(
        "--token-file", default=argparse.SUPPRESS, help="bearer token file (env GROUNDHOG_TOKEN_FILE)"
    )
    dashboard.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no sign-in, even on a non-loopback address: everyone acts as the configured principal",
    )
    dashboard.set_defaults(handler=_dashboard)


async def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from groundhog_mcp.app import serve_dashboard  # starlette and uvicorn, never the MCP SDK

    await serve_dashboard(settings)
    return 0
