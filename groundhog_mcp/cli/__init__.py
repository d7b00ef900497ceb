"""The ``groundhog-mcp`` command: ``serve`` (the default, stdio), ``state`` and the maintenance commands.

``commands`` builds the parser and runs a command through the handler its sub-parser names;
``state`` holds the commands a person uses to read and write states (the tools' service calls);
``common`` the exit codes and the pieces both share.
"""

import importlib
import sys

# Optional packages structlog loads when they are installed, for what the command never uses.
_HIDDEN_FROM_STRUCTLOG = ("rich", "greenlet")


def _import_structlog_without_rich() -> None:
    """Import structlog with rich and greenlet hidden: its dev renderer and tracebacks module
    would load rich's pretty-printer, tracebacks, syntax highlighting, pygments and attrs (~30 ms
    of every start), its deprecated threadlocal module greenlet, for what the command never uses:
    its logs are JSON, tracebacks rendered without locals (groundhog_mcp.app.configure_logging),
    its context in contextvars. Only in the command's own process: a program that imports
    groundhog_mcp as a library keeps structlog's defaults. Both stay importable afterwards (the
    SDK's MCPServer loads rich.console for its log handler)."""
    if "structlog" in sys.modules:
        return
    hidden = [name for name in _HIDDEN_FROM_STRUCTLOG if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        importlib.import_module("structlog")
    finally:
        for name in hidden:
            del sys.modules[name]


_import_structlog_without_rich()

from groundhog_mcp.cli.commands import main  # noqa: E402
from groundhog_mcp.cli.common import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: E402

__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]
