"""The MCP layer: tools, resources, notifications over the library API."""

from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.build import INSTRUCTIONS, build_server
from groundhog_mcp.server.notify import Notifier

__all__ = ["INSTRUCTIONS", "AppContext", "Notifier", "build_server"]
