"""Metrics: counters derived from the store (they survive restarts) and per-process latencies."""

from __future__ import annotations

import math
import os
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from groundhog_mcp.models import Principal
from groundhog_mcp.service.access import visible_prefixes

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["ContextMetrics", "LatencySummary", "MetricsRecorder", "collect", "metric_key", "process_rss_bytes"]

_WINDOW = 1000  # latencies kept per context, newest last


@dataclass(frozen=True)
class LatencySummary:
    count: int
    average_ms: float
    p95_ms: float
    p50_ms: float = 0.0

    @classmethod
    def of(cls, samples: deque[float] | None) -> LatencySummary:
        if not samples:
            return cls(0, 0.0, 0.0)
        ordered = sorted(samples)
        p95 = ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)]
        p50 = ordered[min(len(ordered) - 1, math.ceil(0.5 * len(ordered)) - 1)]
        return cls(
            len(ordered), round(sum(ordered) / len(ordered) * 1000, 3), round(p95 * 1000, 3), round(p50 * 1000, 3)
        )


@dataclass(frozen=True)
class ContextMetrics:
    """The specification's ``ContextMetrics`` for one context."""

    name: str
    revision: int
    state_updates: int
    event_count: int
    dead_letters: int
    state_size: int
    average_latency_ms: float
    write_latency: LatencySummary
    handler_latency: LatencySummary
    errors: dict[str, int] = field(default_factory=dict[str, int])


class MetricsRecorder:
    """What this process measured: write and handler latencies, errors by class."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self._writes: dict[str, deque[float]] = {}
        self._handlers: dict[str, deque[float]] = {}
        self.errors: Counter[str] = Counter()
        self.context_errors: dict[str, Counter[str]] = {}
        self.namespace_errors: dict[str, Counter[str]] = {}
        # Exact counts of denied requests, per namespace: (principal, operation) -> count.
        self.denied: dict[str, Counter[tuple[str, str]]] = {}

    def observe_write(self, name: str, seconds: float) -> None:
        self._writes.setdefault(name, deque(maxlen=_WINDOW)).append(seconds)

    def observe_handler(self, name: str, seconds: float) -> None:
        self._handlers.setdefault(name, deque(maxlen=_WINDOW)).append(seconds)

    def count_error(self, error_class: str, name: str | None = None, *, namespace: str | None = None) -> None:
        """With ``name``: a failed write of that context; without: an error answered to a client
        (of ``namespace``, when known: each namespace sees only its own error counts)."""
        if name is None:
            self.errors[error_class] += 1
            if namespace is not None:
                self.namespace_errors.setdefault(namespace, Counter())[error_class] += 1
        else:
            self.context_errors.setdefault(name, Counter())[error_class] += 1

    def count_denied(self, namespace: str, principal: str, operation: str) -> None:
        """A request refused for a missing grant (or a missing principal). The audit log keeps
        a bounded summary of these; the exact counts are here."""
        self.denied.setdefault(namespace, Counter())[(principal, operation)] += 1

    def denied_in(self, namespace: str) -> dict[str, dict[str, int]]:
        """Denied requests of ``namespace``: principal -> operation -> count."""
        counts: dict[str, dict[str, int]] = {}
        for (principal, operation), count in sorted(self.denied.get(namespace, Counter()).items()):
            counts.setdefault(principal, {})[operation] = count
        return counts

    def write_latency(self, name: str) -> LatencySummary:
        return LatencySummary.of(self._writes.get(name))

    def handler_latency(self, name: str) -> LatencySummary:
        return LatencySummary.of(self._handlers.get(name))

    def uptime_seconds(self) -> float:
        return round(time.monotonic() - self.started, 3)


def process_rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), or None where unavailable."""
    try:
        with open(f"/proc/{os.getpid()}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def metric_key(namespace: str, name: str) -> str:
    """Per-context measurements are kept per namespace: same-named contexts of two tenants
    never share (or reveal) each other's figures."""
    return f"{namespace}/{name}"


async def collect(
    manager: StateManager, names: Sequence[str] | None = None, *, prefix: str = "", limit: int = 100
) -> tuple[dict[str, Any], list[ContextMetrics]]:
    """Server metrics and per-context metrics (counts from the store, latencies of this process)."""
    if names:
        contexts = [await manager.get(name) for name in names[: manager.limits.max_page]]
    else:
        contexts = (await manager.list(prefix=prefix, limit=min(limit, manager.limits.max_page))).contexts
    counts = await manager.store.context_counts([c.id for c in contexts])
    per_context: list[ContextMetrics] = []
    for ctx in contexts:
        updates, events, letters = counts.get(ctx.id, (0, 0, 0))
        writes = manager.metrics.write_latency(metric_key(manager.principal.namespace, ctx.name))
        per_context.append(
            ContextMetrics(
                name=ctx.name,
                revision=ctx.revision,
                state_updates=updates,
                event_count=events,
                dead_letters=letters,
                state_size=ctx.state_size,
                average_latency_ms=writes.average_ms,
                write_latency=writes,
                handler_latency=manager.metrics.handler_latency(metric_key(manager.principal.namespace, ctx.name)),
                errors=dict(manager.metrics.context_errors.get(metric_key(manager.principal.namespace, ctx.name), {})),
            )
        )
    status = await manager.store.status()
    # Counts of what this principal may read, never of the whole store: other namespaces'
    # (and unreadable) contexts stay invisible here too.
    visible, last_sequence = 0, 0
    for visible_prefix in visible_prefixes(manager.principal, ""):
        count, last = await manager.store.namespace_summary(manager.principal.namespace, visible_prefix)
        visible, last_sequence = visible + count, max(last_sequence, last)
    server: dict[str, Any] = {
        "uptime_seconds": manager.metrics.uptime_seconds(),
        "rss_bytes": process_rss_bytes(),
        "database_bytes": status.size_bytes,
        "backend": status.backend,
        "contexts": visible,
        "last_sequence": last_sequence,
        "errors": dict(manager.metrics.namespace_errors.get(manager.principal.namespace, {})),
        "denied_requests": _visible_denials(manager.principal, manager.metrics),
    }
    return server, per_context


def _visible_denials(principal: Principal, metrics: MetricsRecorder) -> dict[str, dict[str, int]]:
    """Denied requests of this namespace by principal: every principal's for an admin of the
    whole namespace (as the audit log), otherwise the caller's own."""
    denied = metrics.denied_in(principal.namespace)
    if principal.allows("admin", ""):
        return denied
    return {name: counts for name, counts in denied.items() if name == principal.name}
