"""Per-context metrics, as the specification's ``ContextMetrics`` collects them."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ContextMetrics"]


@dataclass(frozen=True)
class ContextMetrics:
    state_updates: int
    event_count: int
    average_latency_ms: float
    state_size: int
