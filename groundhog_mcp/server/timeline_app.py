"""The timeline as an MCP App: ``get_history`` carries ``_meta.ui.resourceUri`` pointing at
``ui://groundhog/timeline.html``, which hosts that render apps show beside the result (a table
of revisions, and the diff of two picked revisions through ``diff_states``). Clients without
apps get ``get_history``'s own result, unchanged.

The document is built from the dashboard's vendored files: its one script and style are inline
(an app is a single document) and admitted by their SHA-256 alone, so nothing else runs, and the
script puts every value on the page as text.
"""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib import resources
from typing import Any

from mcp.server.apps import Apps

__all__ = ["TIMELINE_APP_URI", "TIMELINE_TOOL", "timeline_app", "timeline_app_html", "ui_meta"]

TIMELINE_APP_URI = "ui://groundhog/timeline.html"
TIMELINE_TOOL = "get_history"


def _asset(name: str) -> str:
    # The dashboard's folder, not its package: importing that would load the web dashboard.
    return (resources.files("groundhog_mcp") / "dashboard" / "static" / name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


@cache
def timeline_app_html() -> str:
    script, style = _asset("timeline-app.js"), _asset("timeline-app.css")
    csp = (
        f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(style)}; "
        "img-src 'none'; connect-src 'none'; form-action 'none'; base-uri 'none'"
    )
    # str.replace, not format: the script and style are full of braces.
    return _asset("timeline-app.html").replace("{csp}", csp).replace("{style}", style).replace("{script}", script)


def timeline_app() -> Apps:
    """The Apps extension holding the timeline document (no tool of its own: ``get_history`` is bound)."""
    apps = Apps()
    apps.add_html_resource(
        TIMELINE_APP_URI,
        timeline_app_html(),
        name="timeline",
        title="Context timeline",
        description="A context's revisions and the diff between two of them",
        prefers_border=True,
    )
    return apps


def ui_meta(tool: str) -> dict[str, Any] | None:
    """The ``_meta`` binding ``tool`` to its app, if it has one."""
    return {"ui": {"resourceUri": TIMELINE_APP_URI}} if tool == TIMELINE_TOOL else None
