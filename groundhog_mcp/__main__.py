"""``python -m groundhog_mcp`` runs the same command as ``groundhog-mcp``."""

import sys

from groundhog_mcp.cli import main

sys.exit(main())
