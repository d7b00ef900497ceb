"""Tool profiles: which MCP tools a server lists (the ``tools`` setting).

Every tool definition is sent to the model before its first call, so the default profile holds
only the agent workflow (the server instructions name exactly these): find or create a context,
read it, write with compare-and-set, look back through history and undo, wait for another agent's
change. The operator's tools (events, dead letters, merges, migrations, metrics, the audit log,
describing, validating and removing contexts) come with ``all`` or an explicit list; the CLI does
the maintenance whatever the profile. SDK-free: the settings check imports it.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

__all__ = ["ALL_TOOLS", "PROFILES", "ToolSelection", "parse_tools"]

ALL_TOOLS: tuple[str, ...] = (
    "register_context",
    "unregister_context",
    "get_context",
    "list_contexts",
    "get_state",
    "update_state",
    "validate_state",
    "get_history",
    "diff_states",
    "rollback_state",
    "wait_for_change",
    "emit_event",
    "list_dead_letters",
    "replay_dead_letter",
    "get_metrics",
    "migrate_context",
    "merge_states",
    "audit_log",
    "fork_context",
    "lease",
    "update_context",
    "find_contexts",
)
"""Every tool, in the order tools/list shows them (a test holds this to the registered tools)."""

PROFILES: dict[str, tuple[str, ...]] = {
    "default": (
        "register_context",
        "list_contexts",
        "get_state",
        "update_state",
        "get_history",
        "diff_states",
        "rollback_state",
        "wait_for_change",
        "lease",
        "find_contexts",
    ),
    "all": ALL_TOOLS,
}


def parse_tools(spec: str) -> tuple[str, ...]:
    """The tools ``spec`` selects: a profile name or a comma-separated list of tool names,
    in :data:`ALL_TOOLS` order. A ValueError names what is unknown and lists what is valid."""
    text = spec.strip()
    if text in PROFILES:
        return PROFILES[text]
    wanted = {item.strip() for item in text.split(",") if item.strip()}
    if not wanted:
        raise ValueError(f"names no tool; give {' or '.join(PROFILES)} or a comma-separated list of tool names")
    unknown = sorted(wanted - set(ALL_TOOLS))
    if unknown:
        raise ValueError(
            f"unknown tool {', '.join(unknown)[:200]}; give {' or '.join(PROFILES)} or a comma-separated list of: "
            f"{', '.join(ALL_TOOLS)}"
        )
    return tuple(name for name in ALL_TOOLS if name in wanted)


def _checked(spec: str) -> str:
    parse_tools(spec)
    return spec


ToolSelection = Annotated[str, AfterValidator(_checked)]
"""The ``tools`` setting: refused at start, listing the valid names, when it names an unknown tool."""
