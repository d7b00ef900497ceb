"""Bearer tokens for the HTTP transports, kept in a JSON token file as SHA-256 hashes.

A token is shown once, when it is created; the file holds only its hash, so reading the file
does not give anyone a usable token. Each token names the principal it acts as, the one
namespace that principal is bound to, and its grants there (``read|write|admin`` on context
name prefixes). A record without ``grants`` (written before grants existed) has every right in
its namespace, as such tokens always had. Revoking keeps the row (for the record) and stops the
token from verifying.

The file is rewritten whole (temporary file, fsync, ``os.replace``, mode 0600), under an
advisory lock on POSIX, so a reader sees either the old or the new file and two concurrent
``tokens create`` never lose one another. A running server notices a rewritten file on its
next request: a revocation takes effect without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tempfile
import threading
from collections.abc import Generator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from groundhog_mcp.errors import ContextError, InitializationError, NotFoundError, StateValidationError, ValidationIssue
from groundhog_mcp.models import (
    ALL_RIGHTS,
    DEFAULT_NAMESPACE,
    Grant,
    check_namespace,
    check_principal,
    format_timestamp,
    parse_timestamp,
    utcnow,
)

if sys.platform != "win32":
    import fcntl

__all__ = ["TOKEN_PREFIX", "TokenRecord", "TokenStore", "hash_token"]

TOKEN_PREFIX = "ghm_"
_FILE_VERSION = 1
# Longer than any token this module issues; bounds the hashing a request can ask for.
_MAX_TOKEN_CHARS = 512


def hash_token(token: str) -> str:
    """The hex SHA-256 of a token. Tokens are 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenRecord:
    """One token as the file stores it: never the token itself, only its hash."""

    id: str
    principal: str
    namespace: str
    created_at: datetime
    sha256: str
    revoked: bool = False
    revoked_at: datetime | None = None
    # None: a record from before grants existed, which has every right in its namespace.
    grants: tuple[Grant, ...] | None = None

    @property
    def effective_grants(self) -> tuple[Grant, ...]:
        return ALL_RIGHTS if self.grants is None else self.grants

    def to_json(self) -> dict[str, Any]:
        grants = {} if self.grants is None else {"grants": [str(g) for g in self.grants]}
        return {
            "id": self.id,
            "principal": self.principal,
            "namespace": self.namespace,
            **grants,
            "created_at": format_timestamp(self.created_at),
            "revoked": self.revoked,
            "revoked_at": format_timestamp(self.revoked_at) if self.revoked_at else None,
            "sha256": self.sha256,
        }

    @classmethod
    def from_json(cls, obj: Any, *, where: str) -> TokenRecord:
        if not isinstance(obj, dict):
            raise InitializationError(f"{where}: a token entry must be a JSON object")
        try:
            revoked_at = obj.get("revoked_at")
            record = cls(
                id=str(obj["id"]),
                principal=str(obj["principal"]),
                namespace=str(obj["namespace"]),
                created_at=parse_timestamp(str(obj["created_at"])),
                sha256=str(obj["sha256"]),
                revoked=bool(obj.get("revoked", False)),
                revoked_at=parse_timestamp(str(revoked_at)) if revoked_at else None,
                grants=_grants_from_json(obj.get("grants"), where=f"{where}: token {obj.get('id')!r}"),
            )
        except KeyError as exc:
            raise InitializationError(f"{where}: a token entry has no {exc.args[0]!r}") from None
        except ValueError as exc:
            raise InitializationError(f"{where}: a token entry has a bad timestamp ({exc})") from None
        if not re.fullmatch(r"[0-9a-f]{64}", record.sha256):
            raise InitializationError(f"{where}: token {record.id!r}: sha256 must be 64 lowercase hex digits")
        return record


class TokenStore:
    """The token file: ``create``/``list``/``revoke`` for the CLI, ``verify`` for the server.

    All methods do blocking file I/O: call them from a thread (``asyncio.to_thread``) on an
    event loop.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._cache_lock = threading.Lock()
        self._signature: tuple[int, int, int, int] | None = None
        self._records: tuple[TokenRecord, ...] = ()

    # -- the CLI's operations ---------------------------------------------------------------

    def create(
        self, principal: str, namespace: str = DEFAULT_NAMESPACE, grants: tuple[Grant, ...] | None = None
    ) -> tuple[TokenRecord, str]:
        """A new token for ``principal`` in ``namespace`` with ``grants`` (default: admin on every
        context of the namespace): ``(record, token)``. The token is not stored anywhere; show it
        to the user once."""
        check_principal(principal)
        check_namespace(namespace)
        if grants is not None and not grants:
            raise StateValidationError([ValidationIssue("", "a token needs at least one grant")], field="grant")
        with self._locked():
            records = self._read()
            taken = {r.id for r in records}
            token_id = _new_id(taken)
            token = TOKEN_PREFIX + secrets.token_urlsafe(32)
            record = TokenRecord(
                id=token_id,
                principal=principal,
                namespace=namespace,
                created_at=utcnow(),
                sha256=hash_token(token),
                grants=ALL_RIGHTS if grants is None else tuple(grants),
            )
            self._write([*records, record])
        return record, token

    def list(self) -> list[TokenRecord]:
        """Every token in the file, revoked ones included, oldest first ([] when there is no file)."""
        return self._read()

    def revoke(self, token_id: str) -> TokenRecord:
        """Mark a token revoked; it stops verifying at once (also in a running server)."""
        with self._locked():
            records = self._read()
            for index, record in enumerate(records):
                if record.id == token_id:
                    if record.revoked:
                        return record
                    records[index] = replace(record, revoked=True, revoked_at=utcnow())
                    self._write(records)
                    return records[index]
        raise NotFoundError(f"id: no token {token_id!r} in {self.path}")

    def exists(self) -> bool:
        return self.path.is_file()

    def permission_problem(self) -> str | None:
        """Why the file's mode is unsafe (others may read or change it), or None."""
        if sys.platform == "win32":
            return None
        try:
            mode = self.path.stat().st_mode & 0o777
        except FileNotFoundError:
            return None
        if mode & 0o077:
            return f"token file {self.path} has mode {mode:o}; only its owner should read or write it (chmod 600)"
        return None

    # -- the server's operation -------------------------------------------------------------

    def verify(self, token: str) -> TokenRecord | None:
        """The record of an active token matching ``token``, or None.

        Re-reads the file when it changed since the last call. A file that vanished verifies
        nothing; one that no longer parses raises :class:`InitializationError` once, then verifies
        nothing (fail closed) until it is fixed.
        """
        if not token or len(token) > _MAX_TOKEN_CHARS:
            return None
        digest = hash_token(token)
        found: TokenRecord | None = None
        # Compare against every record, without stopping early, in constant time per record.
        for record in self._current():
            if hmac.compare_digest(digest, record.sha256) and not record.revoked:
                found = record
        return found

    async def verify_in_thread(self, token: str) -> TokenRecord | None:
        """:meth:`verify` on a worker thread, for servers: a file that cannot be used is logged and
        verifies nothing."""
        try:
            return await asyncio.to_thread(self.verify, token)
        except (ContextError, OSError) as exc:
            structlog.get_logger("groundhog_mcp.tokens").error(
                "token file unusable: every token is refused until it is fixed", problem=str(exc)
            )
            return None

    def _current(self) -> tuple[TokenRecord, ...]:
        with self._cache_lock:
            try:
                stat = self.path.stat()
            except FileNotFoundError:
                self._signature, self._records = None, ()
                return ()
            signature = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
            if signature != self._signature:
                try:
                    self._records = tuple(self._read())
                except (InitializationError, OSError):
                    self._records = ()
                    raise
                finally:
                    self._signature = signature
            return self._records

    # -- the file ---------------------------------------------------------------------------

    def _read(self) -> list[TokenRecord]:
        where = f"token file {self.path}"
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise InitializationError(f"{where}: cannot read it: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InitializationError(f"{where}: not UTF-8 text") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InitializationError(f"{where}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
        if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
            raise InitializationError(f'{where}: expected an object {{"version": 1, "tokens": [...]}}')
        return [TokenRecord.from_json(entry, where=where) for entry in document["tokens"]]

    def _write(self, records: list[TokenRecord]) -> None:
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {"version": _FILE_VERSION, "tokens": [r.to_json() for r in records]}
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                if sys.platform != "win32":
                    os.fchmod(out.fileno(), 0o600)
                out.write(json.dumps(document, indent=2) + "\n")
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(directory)

    @contextlib.contextmanager
    def _locked(self) -> Generator[None]:
        """Serialise read-modify-write of the file between processes (advisory, POSIX only)."""
        if sys.platform == "win32":
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _new_id(taken: set[str]) -> str:
    while True:
        candidate = "tok-" + secrets.token_hex(4)
        if candidate not in taken:
            return candidate


def _grants_from_json(value: Any, *, where: str) -> tuple[Grant, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):  # pyright: ignore[reportUnknownVariableType]
        raise InitializationError(f'{where}: "grants" must be a list of strings like "read:notes."')
    try:
        return tuple(Grant.parse(g) for g in value)  # pyright: ignore[reportUnknownArgumentType]
    except ValueError as exc:
        raise InitializationError(f"{where}: {exc}") from None


def _fsync_directory(directory: Path) -> None:
    if sys.platform == "win32":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
