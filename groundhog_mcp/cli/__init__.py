"""The ``groundhog-mcp`` command: ``serve`` (the default, stdio), ``state`` and the maintenance commands.

``commands`` builds the parser and runs a command through the handler its sub-parser names;
``state`` holds the commands a person uses to read and write states (the tools' service calls);
``common`` the exit codes and the pieces both share.
"""

from groundhog_mcp.cli.commands import main
from groundhog_mcp.cli.common import EXIT_BUG, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

__all__ = ["EXIT_BUG", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE", "main"]
