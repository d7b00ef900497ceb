"""Files groundhog-mcp creates: owner-only (0600) whatever the umask, never through a symlink.

The database, its ``-wal``/``-shm`` (SQLite gives them the database file's mode), backups,
exports, the audit key and the token file can hold state contents or secrets; with the usual
umask 022 they would be readable by every local user.

:class:`PrivateOutput` writes a new file aside and moves it into place at the end, so an
export or backup is complete or absent; without ``force`` an existing name (a file, a
directory or a symlink, even a dangling one) is refused before anything is written, and with
``force`` the name itself is replaced (``rename`` replaces a symlink, never its target).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import sys
from pathlib import Path

from groundhog_mcp.errors import StateUpdateError

__all__ = ["PRIVATE_MODE", "PrivateOutput", "create_private", "loose_mode", "make_private_dirs"]

PRIVATE_MODE = 0o600
_DIRECTORY_MODE = 0o700
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and missing parents as 0700; existing ones are left as they are."""
    directory.mkdir(parents=True, exist_ok=True, mode=_DIRECTORY_MODE)


def create_private(path: Path) -> bool:
    """Create ``path`` empty with mode 0600 unless it exists (nothing else is touched): True if
    this call created it. A symlink at ``path`` counts as existing and is not followed."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, PRIVATE_MODE)
    except FileExistsError:
        return False
    try:
        if sys.platform != "win32":
            os.fchmod(fd, PRIVATE_MODE)  # a umask such as 0o277 would otherwise narrow it further
    finally:
        os.close(fd)
    return True


def loose_mode(path: Path) -> int | None:
    """The mode of ``path`` when its group or others may read or write it, else None."""
    if sys.platform == "win32":
        return None
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & 0o077 else None


class PrivateOutput:
    """A new, empty 0600 file beside ``destination`` (:meth:`start` gives its path) for the
    caller to fill; :meth:`commit` moves it over ``destination`` atomically, :meth:`discard`
    removes it. Also a context manager: commit on success, discard on an exception.

    Without ``force`` an existing ``destination`` raises :class:`StateUpdateError` naming
    ``what`` before anything is written (the name is reserved at once, so two writers cannot both
    win). With ``force`` it is replaced, or the symlink it is: never the symlink's target.
    """

    def __init__(self, destination: Path, *, force: bool = False, what: str = "output") -> None:
        self.destination = destination
        self.force = force
        self.what = what
        self.aside = destination.with_name(f".{destination.name}.{secrets.token_hex(6)}.tmp")
        self._reserved = False

    def start(self) -> Path:
        make_private_dirs(self.destination.parent)
        if not self.force:
            if not create_private(self.destination):
                raise StateUpdateError(
                    f"{self.what}: {self.destination} already exists; choose a new file name, or pass --force to "
                    "replace it. Nothing was written."
                )
            self._reserved = True
        create_private(self.aside)
        return self.aside

    def commit(self) -> None:
        if sys.platform != "win32":
            fd = os.open(self.aside, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(self.aside, self.destination)
        _fsync_directory(self.destination.parent)

    def discard(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.aside.unlink()
        if self._reserved:
            with contextlib.suppress(FileNotFoundError):
                self.destination.unlink()

    def __enter__(self) -> Path:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            try:
                self.commit()
            except BaseException:
                self.discard()
                raise
        else:
            self.discard()


def _fsync_directory(directory: Path) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
