"""Event handler plugins for groundhog-mcp's tests, found through the ``groundhog_mcp.handlers`` entry points."""

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
