"""Context expiry settings: ``expires_at``, ``ttl_seconds`` and ``expire_after_idle_seconds``.

They are settings of the context (like ``keep_revisions``): given at registration (and later,
when the definition changes). ``ttl_seconds`` is turned into ``expires_at`` (now + ttl) when it
is given, so the stored settings say when, not how long. The store keeps the deadline and leaves
an expired context out of every read (:mod:`groundhog_mcp.store.expiry`); this module checks the
settings and records the removal of an expired context a caller just missed.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import JSONObject, format_timestamp, parse_timestamp, utcnow
from groundhog_mcp.store.base import StoredContext
from groundhog_mcp.store.expiry import expiry_deadline

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["EXPIRY_SETTINGS", "context_expires_at", "expire_if_due", "resolve_expiry_settings"]

EXPIRY_SETTINGS = ("expires_at", "ttl_seconds", "expire_after_idle_seconds")
_MAX_SECONDS = 100 * 365 * 24 * 3600.0  # a hundred years: beyond that, do not set an expiry


def _seconds(settings: JSONObject, key: str) -> float | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= _MAX_SECONDS:
        raise StateValidationError(
            [ValidationIssue("", f"must be a number of seconds > 0 and <= {_MAX_SECONDS:g}")], field=f"settings.{key}"
        )
    return float(value)


def resolve_expiry_settings(settings: JSONObject) -> JSONObject:
    """``settings`` with its expiry checked and ``ttl_seconds`` turned into ``expires_at``."""
    if not any(key in settings for key in EXPIRY_SETTINGS):
        return settings
    ttl = _seconds(settings, "ttl_seconds")
    _seconds(settings, "expire_after_idle_seconds")
    resolved = dict(settings)
    fixed = settings.get("expires_at")
    if fixed is not None:
        if ttl is not None:
            raise StateValidationError(
                [ValidationIssue("", "give expires_at or ttl_seconds, not both")], field="settings.ttl_seconds"
            )
        try:
            when = parse_timestamp(fixed) if isinstance(fixed, str) else None
        except ValueError:
            when = None
        if when is None:
            raise StateValidationError(
                [ValidationIssue("", "must be an RFC 3339 date-time with a time zone, like 2026-01-31T12:00:00Z")],
                field="settings.expires_at",
            )
        if when <= utcnow():
            raise StateValidationError([ValidationIssue("", "must be in the future")], field="settings.expires_at")
        resolved["expires_at"] = format_timestamp(when)
    if ttl is not None:
        del resolved["ttl_seconds"]
        resolved["expires_at"] = format_timestamp(utcnow() + timedelta(seconds=ttl))
    return resolved


def context_expires_at(context: StoredContext) -> datetime | None:
    """When ``context`` expires unless written again (None: never): its settings' ``expires_at``
    or its last write plus ``expire_after_idle_seconds``, whichever comes first (the deadline the
    store keeps, moved by every write)."""
    return expiry_deadline(context.settings, context.updated_at)


async def expire_if_due(manager: StateManager, name: str) -> None:
    """A caller just missed context ``name``: if it expired, record its removal now."""
    await manager.writer.expire_if_due(manager.caller, name)
