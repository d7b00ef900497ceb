"""Encryption at rest: AES-256-GCM record sealing with key ids, for the store's ``RecordCipher``.

Keys are 32 random bytes, written as base64url (43 characters, ``groundhog-mcp keygen``) or
hex (64 characters). A key's id is the first 8 hex digits of SHA-256 over a domain-separated
encoding of the key: it names the key in records and messages without revealing it.

A sealed record is ``b"GHE1" | key id (4 bytes) | nonce (12 random bytes) | ciphertext + tag``;
the associated data (built by the store) binds it to its table, column, namespace, context and
revision.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groundhog_mcp.errors import EncryptionKeyError

__all__ = ["KEY_BYTES", "EncryptionKey", "Keyring", "generate_key", "parse_key", "read_key_file"]

KEY_BYTES = 32
_NONCE_BYTES = 12
_MAGIC = b"GHE1"  # store.base.SEALED_MAGIC: the layouts must agree (checked by a test)
_HEADER = len(_MAGIC) + 4
_KEY_ID_DOMAIN = b"groundhog-mcp encryption key id v1\x00"
_HEX = re.compile(r"^[0-9a-fA-F]{64}$")
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]{43}=?$")


@dataclass(frozen=True, repr=False)
class EncryptionKey:
    """One AES-256 key and its id. ``repr`` never shows the key."""

    secret: bytes
    key_id: str

    def __repr__(self) -> str:
        return f"EncryptionKey(key_id={self.key_id!r})"

    @classmethod
    def from_bytes(cls, secret: bytes) -> EncryptionKey:
        if len(secret) != KEY_BYTES:
            raise EncryptionKeyError(f"encryption: a key must be {KEY_BYTES} bytes; got {len(secret)}")
        return cls(secret, hashlib.sha256(_KEY_ID_DOMAIN + secret).hexdigest()[:8])


def generate_key() -> str:
    """A new random key, base64url without padding (what ``groundhog-mcp keygen`` prints)."""
    return base64.urlsafe_b64encode(os.urandom(KEY_BYTES)).rstrip(b"=").decode("ascii")


def parse_key(text: str, *, source: str) -> EncryptionKey:
    """A key written as 64 hex digits or 43 base64url characters; ``source`` names where it came
    from in the error (never the value)."""
    value = text.strip()
    try:
        if _HEX.match(value):
            return EncryptionKey.from_bytes(bytes.fromhex(value))
        if _BASE64URL.match(value):
            return EncryptionKey.from_bytes(base64.urlsafe_b64decode(value.rstrip("=") + "="))
    except (ValueError, binascii.Error):
        pass
    raise EncryptionKeyError(
        f"encryption: {source} is not a key: expected 32 bytes as 64 hex digits or 43 base64url "
        f"characters (got {len(value)} characters); create one with `groundhog-mcp keygen`"
    )


def read_key_file(path: str | Path, *, source: str) -> list[EncryptionKey]:
    """Keys from a file, one per line; blank lines and ``#`` comments are skipped."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise EncryptionKeyError(f"encryption: cannot read {source} {file}: {exc.strerror or exc}") from None
    keys: list[EncryptionKey] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            keys.append(parse_key(line, source=f"{source} {file} line {number}"))
    return keys


class Keyring:
    """The configured keys: ``current`` seals new records (None: they stay plaintext), every key
    opens. Implements the store's ``RecordCipher``."""

    def __init__(self, current: EncryptionKey | None, old: Iterable[EncryptionKey] = ()) -> None:
        self.current = current
        keys: dict[str, EncryptionKey] = {k.key_id: k for k in old}
        if current is not None:
            keys[current.key_id] = current
        self._aead: Mapping[bytes, AESGCM] = {bytes.fromhex(k): AESGCM(v.secret) for k, v in keys.items()}
        self._sealer = AESGCM(current.secret) if current is not None else None
        self._prefix = _MAGIC + bytes.fromhex(current.key_id) if current is not None else b""

    def __repr__(self) -> str:
        return f"Keyring(key_id={self.key_id!r}, readable={sorted(self.readable_key_ids)!r})"

    @property
    def key_id(self) -> str | None:
        return self.current.key_id if self.current is not None else None

    @property
    def readable_key_ids(self) -> frozenset[str]:
        return frozenset(k.hex() for k in self._aead)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        if self._sealer is None:
            raise EncryptionKeyError("encryption: no current key configured to seal records with")
        nonce = os.urandom(_NONCE_BYTES)
        return self._prefix + nonce + self._sealer.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        if len(blob) < _HEADER + _NONCE_BYTES + 16 or blob[: len(_MAGIC)] != _MAGIC:
            raise ValueError("not a sealed record (truncated or wrong format)")
        key_id = blob[len(_MAGIC) : _HEADER]
        aead = self._aead.get(key_id)
        if aead is None:
            raise ValueError(f"sealed with key id {key_id.hex()}, which is not configured")
        try:
            return aead.decrypt(blob[_HEADER : _HEADER + _NONCE_BYTES], blob[_HEADER + _NONCE_BYTES :], aad)
        except InvalidTag:
            raise ValueError(
                f"authentication failed under key id {key_id.hex()}: the record was altered or copied from another row"
            ) from None
