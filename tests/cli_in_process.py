"""``groundhog-mcp ARGS`` run in the test process, through ``groundhog_mcp.cli.main(argv)``.

A maintenance command started as its own process costs an interpreter start and the package
imports (about a second each); the tests of what a command does need neither. This runs
``main`` with the environment a fresh process would get from ``tests.e2e.harness.server_env``
(no ``GROUNDHOG_*`` variable of the developer's, private config and data dirs), its stdout
and stderr captured, and puts back everything ``main`` changes for the process: environment,
standard streams, the logging set-up. The tests of the process boundary itself (exit on a
corrupt file, the console script, kill -9) still start the real script.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import structlog

from groundhog_mcp.cli import main

__all__ = ["run_cli"]

_XDG = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME")


def run_cli(
    *args: str, env: Mapping[str, str] | None = None, home: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``main(args)`` as the console script would run it; its exit code, stdout and stderr.

    ``env`` adds variables (``GROUNDHOG_*`` settings, keys); ``home`` holds the private
    config and data dirs (a fresh temporary one by default). With ``check``, a non-zero exit
    fails the test with the command's stderr.
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    with (
        tempfile.TemporaryDirectory(prefix="groundhog-cli-") as scratch,
        _environment(home or Path(scratch), env or {}),
        _restored_logging(),
        contextlib.redirect_stdout(stdout),
        contextlib.redirect_stderr(stderr),
    ):
        code = _main_in_a_thread_without_a_loop(list(args))
    result = subprocess.CompletedProcess(["groundhog-mcp", *args], code, stdout.getvalue(), stderr.getvalue())
    if check:
        assert result.returncode == 0, f"groundhog-mcp {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
    return result


def _main_in_a_thread_without_a_loop(argv: list[str]) -> int:
    """``main`` runs its command with ``asyncio.run``: from an async test, on a thread of its own.

    The calling test blocks until the command is done, as it would on ``subprocess.run``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return _exit_code(argv)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="groundhog-cli") as thread:
        return thread.submit(_exit_code, argv).result()


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1


@contextlib.contextmanager
def _environment(home: Path, extra: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for name in [n for n in os.environ if n.startswith("GROUNDHOG_")]:
            del os.environ[name]
        for name in _XDG:
            path = home / name.lower()
            path.mkdir(parents=True, exist_ok=True)
            os.environ[name] = str(path)
        os.environ.update(extra)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def _restored_logging() -> Iterator[None]:
    """``main`` points the root logger at the stderr of the moment and configures structlog."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in ("mcp.server.mcpserver.server",)}
    config = structlog.get_config()
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, saved in levels.items():
            logging.getLogger(name).setLevel(saved)
        structlog.configure(**config)
