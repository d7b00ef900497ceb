"""What every command shares: the exit status table, the handler type, the state manager's session."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TextIO

from groundhog_mcp.app import Settings, open_manager
from groundhog_mcp.errors import ContextError
from groundhog_mcp.files import PrivateOutput
from groundhog_mcp.service import Caller, StateManager
from groundhog_mcp.store import MaintenanceStore, open_store

__all__ = [
    "EXIT_BUG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "Handler",
    "InputError",
    "UsageError",
    "is_url",
    "manager_session",
    "print_json",
    "private_output",
    "unmigrated_store",
]

# Exit status (docs/operations.md "Command line"): one table, kept true by tests/test_cli_errors.py.
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
async def manager_session(settings: Settings, operation: str | None = None) -> AsyncGenerator[StateManager]:
    """A started state manager over the configured database, closed on the way out; with
    ``operation`` (a tool's name) it acts as that tool's call, so a denial's audit row names it."""
    manager = open_manager(settings)
    await manager.start()
    try:
        yield manager if operation is None else manager.with_caller(Caller(manager.principal, operation=operation))
    finally:
        await manager.close()


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


def is_url(database: str) -> bool:
    return database.startswith(("postgresql://", "postgres://"))


@asynccontextmanager
async def unmigrated_store(settings: Settings) -> AsyncGenerator[MaintenanceStore]:
    """The store alone, as it is (no migration, no change feed): for ``db status`` and ``db migrate``."""
    store = open_store(
        settings.database,
        busy_timeout_ms=settings.busy_timeout_ms,
        synchronous=settings.synchronous,
        auto_migrate=False,
    )
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@contextmanager
def private_output(path: str, *, force: bool, what: str) -> Generator[TextIO]:
    """stdout for ``-``; else a new 0600 file that appears complete or not at all (a symlink at
    ``path`` is never followed; an existing file is replaced only with ``force``)."""
    if path == "-":
        yield sys.stdout
        return
    with PrivateOutput(Path(path), force=force, what=what) as aside, aside.open("w", encoding="utf-8") as out:
        yield out
