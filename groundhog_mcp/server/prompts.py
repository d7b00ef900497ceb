"""Prompts for picking work back up: the state of a context and what changed in it."""

from __future__ import annotations

import json
from typing import Annotated, Any

from mcp.server.mcpserver import Context, MCPServer
from pydantic import Field

from groundhog_mcp.models import format_timestamp
from groundhog_mcp.server.app_context import AppContext
from groundhog_mcp.server.deferred_builds import DeferredPrompt
from groundhog_mcp.server.error_results import invalid_params, protocol_errors

__all__ = ["register_prompts"]

AppCtx = Context[AppContext, Any]

# A prompt lands in a model's context window: keep what it quotes bounded.
_MAX_STATE_CHARS = 20_000
_RECENT_REVISIONS = 10
_MAX_DIFF_CHARS = 10_000


def _bounded(value: Any, limit: int, how_to_read_all: str) -> str:
    # ASCII escapes: bidi overrides and zero-width characters must not reach a model's context raw.
    text = json.dumps(value, ensure_ascii=True, indent=2)
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n… (truncated at {limit} characters; {how_to_read_all})"


@protocol_errors
async def resume_context(name: Annotated[str, Field(description="The context to pick back up")], ctx: AppCtx) -> str:
    """Pick up work on a context: its current state and its most recent changes."""
    manager = ctx.request_context.lifespan_context.request_manager(ctx.request_context.request)
    context = await manager.get(name)
    history = await manager.history(name, limit=_RECENT_REVISIONS)
    lines = [
        f"You are resuming work on the groundhog-mcp context {name!r} (revision {context.revision}, "
        f"last written {format_timestamp(context.updated_at)}).",
        "",
        "Current state:",
        _bounded(
            {"data": context.state.data, "metadata": context.state.metadata},
            _MAX_STATE_CHARS,
            f"read groundhog://contexts/{name}/state or call get_state with a path",
        ),
        "",
        f"Most recent revisions (newest first, up to {_RECENT_REVISIONS}):",
    ]
    lines += [
        f"- revision {e.revision}: {e.op} by {e.actor} at {format_timestamp(e.timestamp)} ({e.size} bytes)"
        for e in history
    ]
    lines += [
        "",
        f"When you change it, call update_state with expected_revision={context.revision} so a concurrent "
        "change is reported to you instead of being overwritten.",
    ]
    return "\n".join(lines)


@protocol_errors
async def summarize_changes(
    name: Annotated[str, Field(description="The context whose changes to summarize")],
    since_revision: Annotated[str, Field(description="Summarize what changed after this revision (a number)")],
    ctx: AppCtx,
) -> str:
    """Summarize what changed in a context since a revision."""
    if not since_revision.isdigit() or int(since_revision) < 1:
        raise invalid_params(f"since_revision: must be a positive integer; got {since_revision[:40]!r}")
    since = int(since_revision)
    manager = ctx.request_context.lifespan_context.request_manager(ctx.request_context.request)
    context = await manager.get(name)
    if since >= context.revision:
        return f"Context {name!r} has not changed since revision {since} (current revision {context.revision})."
    patch = await manager.diff(name, since)
    history = await manager.history(name, limit=min(100, context.revision - since))
    entries = [e for e in history if e.revision > since]
    lines = [
        f"Summarize for the user what changed in the groundhog-mcp context {name!r} between revision {since} "
        f"and revision {context.revision}.",
        "",
        "Revisions in between (newest first):",
        *[f"- revision {e.revision}: {e.op} by {e.actor} at {format_timestamp(e.timestamp)}" for e in entries],
        "",
        "Net change as an RFC 6902 patch (paths start with /data or /metadata):",
        _bounded(patch, _MAX_DIFF_CHARS, f"call diff_states with from_revision={since} for the full patch"),
    ]
    return "\n".join(lines)


_PROMPTS = (
    ("resume_context", "Resume a context", resume_context),
    ("summarize_changes", "Summarize changes", summarize_changes),
)


def register_prompts(server: MCPServer[AppContext], published: dict[str, dict[str, Any]] | None) -> None:
    """With ``published`` arguments (``server/deferred_builds.py``), each prompt's models are built
    at its first rendering; None: the SDK's way, at once."""
    for name, title, fn in _PROMPTS:
        if published is None:
            server.prompt(name=name, title=title)(fn)
        else:
            server.add_prompt(DeferredPrompt.of_function(fn, published[name], name=name, title=title))
