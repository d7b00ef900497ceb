"""Separate venvs for MCP clients that cannot share ours (they pin ``mcp<2``).

Each is built once per requirement set, Python version and platform under ``.ci/cache/<name>/``
(ignored by git), then reused; ``.ci/run`` builds them while it lints. Used by
tests/e2e/test_v1_client.py (the SDK v1 client) and tests/e2e/test_framework_clients.py
(langchain-mcp-adapters).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["CACHE_ROOT", "ClientVenvError", "build_client_venv", "venv_python"]

CACHE_ROOT = Path(__file__).resolve().parents[2] / ".ci" / "cache"
INSTALL_TIMEOUT_S = 600


class ClientVenvError(RuntimeError):
    """A client venv could not be built (PyPI unreachable, a failed install)."""


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def build_client_venv(name: str, requirements: Sequence[str]) -> Path:
    """The python of a venv with ``requirements`` installed, built once into
    ``.ci/cache/<name>/<key>`` (key: requirements, Python version, platform), then reused."""
    spec = "|".join(requirements)
    key = hashlib.sha256(f"{spec}|{platform.python_version()}|{sys.platform}".encode()).hexdigest()[:16]
    root = CACHE_ROOT / name
    venv = root / key
    done = venv / ".installed"
    if done.is_file() and venv_python(venv).exists():
        return venv_python(venv)

    root.mkdir(parents=True, exist_ok=True)
    (root / ".gitignore").write_text("# built by tests/e2e/client_venv.py\n*\n", encoding="utf-8")
    # Built beside the final place and renamed into it, so a half-built venv is never reused.
    building = root / f"{key}.building-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    steps = [
        [sys.executable, "-m", "venv", str(building)],
        [str(venv_python(building)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
    ]
    for step in steps:
        try:
            run = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            shutil.rmtree(building, ignore_errors=True)
            raise ClientVenvError(
                f"building the {name} venv timed out after {INSTALL_TIMEOUT_S} s at: {' '.join(step)} "
                "(is PyPI reachable?)"
            ) from None
        if run.returncode != 0:
            shutil.rmtree(building, ignore_errors=True)
            raise ClientVenvError(
                f"could not build the {name} venv: `{' '.join(step)}` exited {run.returncode}. "
                f"The test needs {spec!r} from PyPI (is PyPI reachable?).\n"
                f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
            )
    (building / ".installed").write_text("\n".join(requirements) + "\n", encoding="utf-8")
    try:
        building.rename(venv)
    except OSError:
        # Another test process finished first: use its venv, drop ours.
        shutil.rmtree(building, ignore_errors=True)
        if not done.is_file():
            raise
    return venv_python(venv)
