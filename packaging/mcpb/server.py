"""Entry point of the groundhog-mcp desktop extension (MCP Bundle, server type "uv").

The host runs this file with ``uv run`` in the bundle's folder: uv installs the dependencies
named in the bundle's pyproject.toml, and ``groundhog_mcp`` is imported from the source copied
next to this file. Settings arrive as GROUNDHOG_* environment variables from the bundle's
user_config; with no argument the command serves MCP over stdio.
"""

import sys

from groundhog_mcp.cli import main

sys.exit(main())
