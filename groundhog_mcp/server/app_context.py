"""The typed application context the lifespan hands to every tool and resource."""

from __future__ import annotations

from dataclasses import dataclass

from groundhog_mcp.server.notify import Notifier
from groundhog_mcp.service import StateManager

__all__ = ["AppContext"]


@dataclass
class AppContext:
    manager: StateManager
    notifier: Notifier
