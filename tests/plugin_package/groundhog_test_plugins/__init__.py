"""Plugins for groundhog-mcp's tests, found through the ``groundhog_mcp.handlers`` and
``groundhog_mcp.migrations`` entry points."""

from __future__ import annotations

from typing import Any, ClassVar


class FlakyCounter:
    """Adds ``payload.by`` (default 1) to ``data.count``; fails the first ``payload.fail_times`` attempts
    of each idempotency key, to exercise retries and dead letters."""

    attempts: ClassVar[dict[str, int]] = {}

    async def validate_event(self, event: Any) -> None:
        by = event.payload.get("by", 1)
        if isinstance(by, bool) or not isinstance(by, int):
            raise ValueError("payload.by must be an integer")

    async def handle_event(self, event: Any, context: Any) -> None:
        key = event.idempotency_key or "-"
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] <= int(event.payload.get("fail_times", 0)):
            raise RuntimeError(f"planned failure {self.attempts[key]}")
        state = await context.get_state()
        await context.update_state(state.with_data("count", state.data.get("count", 0) + event.payload.get("by", 1)))


class NotAHandler:
    """Has no handler methods: loading it must fail clearly."""


def split_owner(data: dict[str, Any]) -> dict[str, Any]:
    """State format upcaster 2.0.0 -> 3.0.0 of the tests' task format: ``owner: {name, email}`` becomes
    ``owner_name`` and ``owner_email``; ``priority`` defaults to ``normal``. An owner without an email
    is refused (the tests use that to make one context of a batch fail)."""
    owner = data.pop("owner")
    if "email" not in owner:
        raise ValueError(f"owner {owner.get('name')!r} has no email")
    data["owner_name"] = owner["name"]
    data["owner_email"] = owner["email"]
    data.setdefault("priority", "normal")
    return data


class SplitFullName:
    """A class-based upcaster (instantiated once): ``name: "Ada Lovelace"`` becomes
    ``first_name`` and ``last_name``."""

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        first, _, last = str(data.pop("name", "")).partition(" ")
        return {**data, "first_name": first, "last_name": last}
