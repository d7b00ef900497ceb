"""``groundhog-mcp dashboard``: the read-only web dashboard (docs/dashboard.md) on its own port."""

from __future__ import annotations

import argparse
from typing import Any

from groundhog_mcp.app import Settings
from groundhog_mcp.cli.common import add_access_arguments

__all__ = ["add_dashboard_command"]


def add_dashboard_command(commands: Any, common: argparse.ArgumentParser) -> None:
    dashboard = commands.add_parser(
        "dashboard", parents=[common], help="serve the read-only web dashboard (default http://127.0.0.1:8766/)"
    )
    dashboard.add_argument("--host", default=argparse.SUPPRESS, help="bind address (default 127.0.0.1)")
    dashboard.add_argument(
        "--port", dest="dashboard_port", type=int, default=argparse.SUPPRESS, help="port (default 8766; 0: any free)"
    )
    add_access_arguments(
        dashboard, insecure_help="no sign-in, even on a non-loopback address: everyone acts as the configured principal"
    )
    dashboard.set_defaults(handler=_dashboard)


async def _dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from groundhog_mcp.app import serve_dashboard  # starlette and uvicorn, never the MCP SDK

    await serve_dashboard(settings)
    return 0
