"""A venv with groundhog-mcp's runtime install only: what ``pip install groundhog-context-mcp`` gives a user.

Start-up and memory figures depend on what is installed beside the server, not only on what it
imports itself: structlog imports ``rich`` (and ``pygments``) when they are installed, ~6 MB of
RSS and ~40 ms of start-up, and the test venv has them because import-linter (a test extra)
needs ``rich``. A user's install has no test extras. So the benchmarks that measure start-up and
idle RSS run the server and the no-op floor from this venv:
``benchmarks/results/runtime-venv-py<X.Y>-<key>/`` (git-ignored), built once with
``pip install -e <repo>`` (no extras; editable, so it runs this checkout's code) with every
dependency pinned to the version the running venv has, and reused while the dependency list in
pyproject.toml and those versions stay the same.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

__all__ = ["RUNTIME_ABSENT", "runtime_python"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PIP_TIMEOUT_S = 600
# Installed in the test venv for the test extras only; a runtime install must not have them.
RUNTIME_ABSENT = ("rich", "pygments")


def _pins() -> list[str]:
    """``name==version`` of every distribution in the running venv but this project (constraints)."""
    pins: set[str] = set()
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name is None or name.lower().replace("_", "-") == "groundhog-context-mcp":
            continue
        if dist.read_text("direct_url.json"):  # a local or editable install (the test plugin)
            continue
        pins.add(f"{re.sub(r'[-_.]+', '-', name).lower()}=={dist.version}")
    return sorted(pins)


def runtime_python() -> Path:
    """The interpreter of the runtime venv (built on first use, then reused)."""
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = _pins()
    key = hashlib.sha256(json.dumps([dependencies, pins]).encode()).hexdigest()[:12]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    venv = RESULTS / f"runtime-venv-py{py}-{key}"
    python = venv / "bin" / "python"
    if not (venv / "ready").exists():
        for old in RESULTS.glob(f"runtime-venv-py{py}-*"):
            shutil.rmtree(old, ignore_errors=True)
        print(f"  building {venv.relative_to(REPO)} (once) …", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        constraints = venv / "constraints.txt"
        constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(
            [*pip, "-c", str(constraints), "-e", str(REPO)],
            check=True,
            timeout=PIP_TIMEOUT_S,
            stderr=subprocess.DEVNULL,  # pip's index warnings; a failure still fails the run (check)
        )
        probe = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) for m in sys.argv[1:]))"
        if subprocess.run([str(python), "-c", probe, *RUNTIME_ABSENT], check=False).returncode != 0:
            raise RuntimeError(f"{venv}: a runtime install brought one of {RUNTIME_ABSENT}")
        (venv / "ready").write_text(json.dumps({"dependencies": dependencies, "pins": pins}) + "\n", encoding="utf-8")
    return python
