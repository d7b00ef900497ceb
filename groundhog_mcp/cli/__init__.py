"""The ``groundhog-mcp`` command: ``serve`` (the default, stdio), ``state`` and the maintenance commands.

``commands`` builds the parser and runs a command through the handler its sub-parser names;
``state`` holds the commands a person uses to read and write states (the tools' service calls);
``common`` the exit codes and the pieces both share; ``startup`` keeps the cyclic garbage
collector out of start-up. This package imports them when first needed, so that the program can
pause the collector before they load.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from groundhog_mcp.cli.startup import pause_collection, resume_collection

if TYPE_CHECKING:
    from groundhog_mcp.cli.common import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command (``argv``: the arguments; None: this program's, ``sys.argv[1:]``)."""
    if argv is None:  # the program itself, not a caller's process (cli/startup.py)
        pause_collection()
    try:
        from groundhog_mcp.cli.commands import main as run

        return run(argv)
    finally:
        resume_collection()  # if a command ended before it was ready to serve


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module("groundhog_mcp.cli.common"), name)
    globals()[name] = value
    return value
