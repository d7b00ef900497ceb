"""Deliberately broken copies of groundhog-mcp, to show that a check can fail.

Each build copies the installed ``groundhog_mcp`` package into a folder and appends an
override to one module of the copy; the result runs as ``python <copy>/launch.py``.

:func:`ack_before_commit_build` copies the installed ``groundhog_mcp`` package into a folder
and appends an override to the copy's ``store/sqlite.py``: ``SQLiteStore._write_transaction``
no longer commits when the write's body is done. The server answers the tool call at once and
the ``COMMIT`` happens only when the next write begins — the classic "acknowledged, then lost
in a crash" bug of a write-behind cache.

The copy runs as ``python <copy>/launch.py`` — the equivalent of ``PYTHONPATH=<copy> python -m
groundhog_mcp``, which is not enough on its own: an editable install (``pip install -e .``, as
in CI) puts a meta-path finder ahead of ``PYTHONPATH`` and would import the real package. The
launcher drops that finder and refuses to start if the copy is not what got imported.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import groundhog_mcp

__all__ = ["FAULT_MARKER", "ack_before_commit_build", "unexpected_error_build"]

FAULT_MARKER = "# --- reliability battery fault: acknowledge before COMMIT ---"

_ACK_BEFORE_COMMIT = f"""

{FAULT_MARKER}
def _ack_before_commit(self):
    conn = self._db
    try:
        if conn.in_transaction:
            conn.execute("COMMIT")  # the previous write's deferred commit
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        raise self._translate(exc) from exc
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    # No COMMIT here: the caller answers the client while the write is still uncommitted.


SQLiteStore._write_transaction = contextlib.contextmanager(_ack_before_commit)
"""

_LAUNCHER = """\
import runpy
import sys
from pathlib import Path

here = str(Path(__file__).resolve().parent)
sys.path.insert(0, here)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
import groundhog_mcp  # noqa: E402

if not groundhog_mcp.__file__.startswith(here):
    sys.exit(f"broken build: imported {groundhog_mcp.__file__} instead of the copy in {here}")
runpy.run_module("groundhog_mcp", run_name="__main__", alter_sys=True)
"""


_UNEXPECTED_ERROR = f"""

{FAULT_MARKER.replace("acknowledge before COMMIT", "an unexpected exception while reading a revision")}
async def _failing_read_revision(self, context_id, revision):
    raise RuntimeError("injected fault: reading a past revision failed")


SQLiteStore.read_revision = _failing_read_revision
"""


def _build(destination: Path, fault: str, needed: tuple[str, ...]) -> list[str]:
    source = Path(groundhog_mcp.__file__).parent
    package = destination / "groundhog_mcp"
    shutil.copytree(source, package, ignore=shutil.ignore_patterns("__pycache__"))
    store = package / "store" / "sqlite.py"
    text = store.read_text(encoding="utf-8")
    for name in needed:
        if name not in text:
            raise RuntimeError(
                f"the injected fault no longer fits groundhog_mcp/store/sqlite.py ({name!r} is gone): "
                "update tests/reliability/broken_build.py"
            )
    store.write_text(text + fault, encoding="utf-8")
    launcher = destination / "launch.py"
    launcher.write_text(_LAUNCHER, encoding="utf-8")
    return [sys.executable, str(launcher)]


def ack_before_commit_build(destination: Path) -> list[str]:
    """A copy of the package whose writes are acknowledged before COMMIT; returns the command to run it."""
    return _build(
        destination,
        _ACK_BEFORE_COMMIT,
        ("class SQLiteStore", "def _write_transaction", "def _translate", "import contextlib"),
    )


def unexpected_error_build(destination: Path) -> list[str]:
    """A copy whose reads of a past revision raise an unexpected (non-ContextError) exception."""
    return _build(destination, _UNEXPECTED_ERROR, ("class SQLiteStore(StoreCore)",))
