"""Record contents as stored: compression and sealing (encryption at rest), in one codec.

As LangGraph's ``EncryptedSerializer`` wraps any serializer, :class:`RecordCodec` wraps the
:class:`~groundhog_mcp.store.base.RecordCipher` a store is given: a backend hands it plaintext
and stores what it returns, reads a value and hands it back, and never sees a key. Which
columns hold contents (and where the parts of their associated data come from) is declared
once, in :data:`SEALED_COLUMNS`.

A stored value is either plaintext (JSON text; a history snapshot: zlib-compressed JSON) or a
sealed blob (``SEALED_MAGIC`` + key id + ciphertext, see :func:`record_aad`). A codec without a
current key writes plaintext and still opens sealed values with the old keys it holds.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, LiteralString

from groundhog_mcp.errors import EncryptionKeyError, RecordIntegrityError
from groundhog_mcp.store.base import SEALED_MAGIC, RecordCipher, key_mismatch, record_aad

__all__ = ["SEALED_COLUMNS", "SNAPSHOT", "RecordCodec", "SealedColumn", "is_sealed"]

SNAPSHOT: Final = "history.snapshot"


@dataclass(frozen=True)
class SealedColumn:
    """A column that holds state contents, sealed when a key is configured, and where the parts
    of its associated data come from."""

    table: LiteralString
    column: LiteralString
    key: tuple[LiteralString, ...]  # the primary key: rotate-key pages follow it
    namespace: LiteralString | None  # the namespace column; None: looked up by context id
    context: LiteralString  # the context id column
    number: LiteralString  # the revision column (dead letters: their id)

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


SEALED_COLUMNS: Final[tuple[SealedColumn, ...]] = (
    SealedColumn("contexts", "state", ("id",), "namespace", "id", "revision"),
    SealedColumn("history", "snapshot", ("context_id", "revision"), None, "context_id", "revision"),
    SealedColumn("changes", "patch", ("sequence",), "namespace", "context_id", "revision"),
    SealedColumn("events", "payload", ("id",), None, "context_id", "revision"),
    SealedColumn("dead_letters", "payload", ("id",), "namespace", "context_id", "id"),
    SealedColumn("dead_letters", "last_error", ("id",), "namespace", "context_id", "id"),
)


def is_sealed(value: object) -> bool:
    """Whether a stored value is a sealed blob (bytes from SQLite, bytes or memoryview from psycopg)."""
    if isinstance(value, str) or value is None:
        return False
    head = bytes(value[:4]) if isinstance(value, bytes | bytearray | memoryview) else b""
    return head == SEALED_MAGIC


class RecordCodec:
    """Compression and sealing of every content column: the one place a store touches either."""

    def __init__(self, cipher: RecordCipher | None) -> None:
        self._cipher = cipher

    @property
    def configured(self) -> bool:
        """A cipher is configured (with or without a current key)."""
        return self._cipher is not None

    @property
    def key_id(self) -> str | None:
        """The key new values are sealed with (recorded in ``encryption_keys``); None: plaintext."""
        return self._cipher.key_id if self._cipher is not None else None

    @property
    def sealing(self) -> bool:
        return self.key_id is not None

    @property
    def current_prefix(self) -> bytes | None:
        """The first 8 bytes of a value sealed under the current key (rotate-key's test)."""
        key_id = self.key_id
        return SEALED_MAGIC + bytes.fromhex(key_id) if key_id is not None else None

    def check_keys(self, used: Iterable[str], where: str, unchanged: str) -> None:
        """Refuse a database with values under key ids this codec cannot open."""
        key_mismatch(self._cipher, used, where, unchanged)

    # -- writing ------------------------------------------------------------------------------

    def seal(self, column: str, namespace: str, context_id: object, number: int, plain: str | bytes) -> bytes:
        """``plain`` sealed under the current key (there must be one)."""
        if self._cipher is None or self._cipher.key_id is None:
            raise EncryptionKeyError("encryption: no current key configured to seal records with")
        data = plain.encode("utf-8") if isinstance(plain, str) else plain
        return self._cipher.seal(data, record_aad(column, namespace, str(context_id), number))

    def encode_text(self, column: str, namespace: str, context_id: object, number: int, text: str) -> str | bytes:
        """A text value as stored: sealed under the current key, or the text itself without one."""
        if not self.sealing:
            return text
        return self.seal(column, namespace, context_id, number, text)

    def encode_snapshot(self, namespace: str, context_id: object, revision: int, text: str) -> bytes:
        """A history snapshot as stored: compressed, then sealed when a key is configured."""
        blob = zlib.compress(text.encode("utf-8"), 6)
        if not self.sealing:
            return blob
        return self.seal(SNAPSHOT, namespace, context_id, revision, blob)

    def reseal(self, column: str, namespace: str, context_id: object, number: int, value: Any) -> str | bytes:
        """A stored value as the current key wants it (rotate-key, import): opened with any key
        this codec holds, then sealed under the current key or left as plaintext."""
        plain = self.open(column, namespace, context_id, number, value)
        if self.sealing:
            return self.seal(column, namespace, context_id, number, plain)
        return plain

    # -- reading ------------------------------------------------------------------------------

    def open(self, column: str, namespace: str, context_id: object, number: int, value: Any) -> str | bytes:
        """A stored value in plaintext: text for text columns, compressed bytes for snapshots."""
        if not is_sealed(value):
            return bytes(value) if column == SNAPSHOT else value
        where = "dead letter" if column.startswith("dead_letters.") else "revision"
        if self._cipher is None:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} is encrypted and no key is configured"
            )
        try:
            plain = self._cipher.open(bytes(value), record_aad(column, namespace, str(context_id), number))
        except ValueError as exc:
            raise RecordIntegrityError(
                f"encryption: {column} of context {context_id} {where} {number} does not decrypt: {exc}; "
                "the record is left as it is"
            ) from None
        return plain if column == SNAPSHOT else plain.decode("utf-8")

    def decode_text(self, column: str, namespace: str, context_id: object, number: int, value: Any) -> str:
        opened = self.open(column, namespace, context_id, number, value)
        return opened.decode("utf-8") if isinstance(opened, bytes) else opened

    def decode_snapshot(self, namespace: str, context_id: object, revision: int, value: Any) -> str:
        """A stored history snapshot as JSON text."""
        opened = self.open(SNAPSHOT, namespace, context_id, revision, value)
        blob = opened if isinstance(opened, bytes) else opened.encode("utf-8")
        return zlib.decompress(blob).decode("utf-8")
