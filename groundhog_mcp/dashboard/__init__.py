"""A read-only web dashboard of contexts, their timelines and the audit log (docs/dashboard.md).

Served by ``groundhog-mcp dashboard`` and at ``/ui`` on the HTTP transports. It reads through
:class:`~groundhog_mcp.service.StateManager` as the signed-in principal, and never imports the
MCP SDK.
"""

from groundhog_mcp.dashboard.access import SESSION_COOKIE, Authenticate, Sessions, TokenFileAccess
from groundhog_mcp.dashboard.web import CONTENT_SECURITY_POLICY, DashboardConfig, dashboard_app

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SESSION_COOKIE",
    "Authenticate",
    "DashboardConfig",
    "Sessions",
    "TokenFileAccess",
    "dashboard_app",
]
