"""What every command shares: the exit status table, the handler type, the state manager's session."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from groundhog_mcp.app import Settings, open_manager
from groundhog_mcp.errors import ContextError
from groundhog_mcp.service import StateManager

__all__ = [
    "EXIT_BUG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "InputError",
    "UsageError",
    "manager_session",
    "print_json",
]

# Exit status (README "Command line"): one table, kept true by tests/test_cli_errors.py.
EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed: the message on stderr says why (nothing half-done)
EXIT_USAGE = 2  # the command line or the configuration is wrong
EXIT_BUG = 70  # an unexpected error inside groundhog-mcp (sysexits EX_SOFTWARE): a bug
EXIT_INTERRUPTED = 130  # Ctrl-C

# A sub-command: registered with its parser (``set_defaults(handler=...)``), run with the
# parsed arguments and the loaded settings; it returns the exit status.
Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class InputError(ContextError):
    """A file or stdin that does not hold the JSON a command needs: the command failed (exit 1)."""


class UsageError(Exception):
    """An argument that argparse could not check (bad JSON, two sources of one value): exit 2."""


@asynccontextmanager
async def manager_session(settings: Settings) -> AsyncGenerator[StateManager]:
    """A started state manager over the configured database, closed on the way out."""
    manager = open_manager(settings)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.close()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
