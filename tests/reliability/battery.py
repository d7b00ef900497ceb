"""What the reliability battery shares, on top of the e2e harness (``tests/e2e/harness.py``).

- :data:`LONG` and :func:`scaled`: every test runs a bounded CI size; ``GROUNDHOG_LONG=1``
  switches to the long variant (docs/reliability.md).
- :func:`start_raw`: :class:`RawServer` with extra command-line arguments or another command
  (a deliberately broken build, tests/reliability/broken_build.py).
- :func:`assert_clear_error`: the outcome every hostile input must have.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from pathlib import Path

from tests.e2e.harness import RawServer, assert_error_text, server_command

__all__ = [
    "LONG",
    "REPLY_WITHIN_S",
    "assert_clear_error",
    "scaled",
    "start_initialized",
    "start_raw",
]

LONG = os.environ.get("GROUNDHOG_LONG", "") not in ("", "0")

# "The server is alive and answers the next call within 2 s" (issue 8).
REPLY_WITHIN_S = 2.0

_INTERNAL_ERROR = re.compile(r"internal error [0-9a-f]+")


def scaled(ci: int, long: int) -> int:
    """The CI size of a loop, or its long variant under ``GROUNDHOG_LONG=1``."""
    return long if LONG else ci


async def start_raw(
    database: Path,
    *,
    env: dict[str, str],
    stderr_path: Path,
    args: Sequence[str] = (),
    command: Sequence[str] | None = None,
) -> RawServer:
    """Like :meth:`RawServer.start`, with extra arguments and optionally another command."""
    argv = [*(command or [server_command()]), "--database", str(database), *args]
    with stderr_path.open("a", encoding="utf-8") as errlog:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=errlog,
            env=env,
            limit=64 * 1024 * 1024,
        )
    return RawServer(process, stderr_path)


async def start_initialized(database: Path, *, env: dict[str, str], stderr_path: Path) -> RawServer:
    """:func:`start_raw`, then the MCP handshake."""
    server = await start_raw(database, env=env, stderr_path=stderr_path)
    await server.initialize()
    return server


def assert_clear_error(text: str, tool: str, *mentions: str) -> None:
    """A hostile input's error: a message naming the field and the rule, nothing else.

    On top of the e2e checks (not empty, not bare, no traceback, no raw lock error): not a
    generic internal error (an input the server should have refused is not a bug report),
    and every ``mentions`` (field names, rule words) appears, case-insensitively.
    """
    assert_error_text(text, tool)
    assert not _INTERNAL_ERROR.search(text), f"{tool}: an internal error instead of a refusal: {text}"
    lowered = text.lower()
    missing = [m for m in mentions if m.lower() not in lowered]
    assert not missing, f"{tool}: the error does not mention {missing}: {text[:500]}"
