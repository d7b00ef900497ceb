"""The audit log's key, row signatures and chain verification.

The log is one HMAC chain per namespace (``""``: the store-wide rows, such as denials of
requests without a principal), so writes of different namespaces never wait on one chain.
Every row carries ``HMAC-SHA256(key, previous row's HMAC || canonical JSON of the row)``,
where the previous row is the one before it in its chain (the first row chains to ``""``),
and the row's ``position`` in its chain is part of the JSON. The canonical JSON has sorted
keys, no spaces and UTF-8 text, and covers every column but the HMAC itself, the row's
sequence and position included. So a row whose content was changed, a row removed from the
middle, and two rows swapped all break their chain at the first row concerned, and nobody
without the key can write a row that verifies. Rows written before schema 10 have no position:
they form one legacy chain over every namespace, in sequence order, verified as before.

The stores call :meth:`AuditKey.sign` inside their write transactions (they see it only as the
``AuditSigner`` protocol of :mod:`groundhog_mcp.store.base`); :class:`ChainVerifier` walks the
rows of one chain in chain order for ``groundhog-mcp audit verify``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from groundhog_mcp.errors import InitializationError

__all__ = [
    "MIN_KEY_CHARS",
    "AuditHead",
    "AuditKey",
    "ChainProblem",
    "ChainVerifier",
    "KeyFileSigner",
    "Signer",
    "load_or_create_key_file",
]

log = structlog.get_logger("groundhog_mcp.audit")

MIN_KEY_CHARS = 32
_KEY_ID_DOMAIN = b"groundhog-mcp audit key id\n"

AuditValue = str | int | None


def canonical(content: Mapping[str, AuditValue]) -> bytes:
    return json.dumps(dict(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class AuditKey:
    """An HMAC-SHA256 key for the audit chain (separate from any encryption key).

    ``secret`` is the key text: at least 32 characters (``GROUNDHOG_AUDIT_KEY``, or the content
    of the audit key file; a generated one is 64 hex digits, 256 bits)."""

    def __init__(self, secret: str) -> None:
        text = secret.strip()
        if len(text) < MIN_KEY_CHARS:
            raise InitializationError(
                f"audit_key: must be at least {MIN_KEY_CHARS} characters; got {len(text)} "
                "(generate one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        self._key = text.encode("utf-8")
        self._key_id = hashlib.sha256(_KEY_ID_DOMAIN + self._key).hexdigest()[:16]

    @property
    def key_id(self) -> str:
        return self._key_id

    def sign(self, content: Mapping[str, AuditValue], previous: str) -> str:
        return hmac.new(self._key, previous.encode("ascii") + b"\n" + canonical(content), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never the key itself
        return f"AuditKey(key_id={self._key_id!r})"


class Signer(Protocol):
    @property
    def key_id(self) -> str: ...

    def sign(self, content: Mapping[str, AuditValue], previous: str) -> str: ...


class KeyFileSigner:
    """The key of a key file that does not exist yet: created (mode 0600) when the first row is
    signed, so a server that refuses to start (a damaged or foreign database) leaves nothing
    behind. Creation errors surface in that first write, which then rolls back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._key: AuditKey | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> AuditKey:
        with self._lock:
            if self._key is None:
                key, created = load_or_create_key_file(self.path)
                if created:
                    log.info("audit: created a new audit key file; back it up with the database", path=str(self.path))
                self._key = key
            return self._key

    @property
    def key_id(self) -> str:
        return self._loaded().key_id

    def sign(self, content: Mapping[str, AuditValue], previous: str) -> str:
        return self._loaded().sign(content, previous)

    def __repr__(self) -> str:
        return f"KeyFileSigner(path={str(self.path)!r})"


def load_or_create_key_file(path: Path) -> tuple[AuditKey, bool]:
    """The key in ``path``; a missing file is created with a new random key, mode 0600.

    Returns ``(key, created)``. Two processes creating it at once agree on one key: the file
    appears complete (written aside, then hard-linked into place) or not at all.
    """
    try:
        return AuditKey(path.read_text(encoding="utf-8")), False
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InitializationError(f"audit_key_file: cannot read {path}: {exc.strerror or exc}") from None
    aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(secrets.token_hex(32) + "\n")
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(aside, path)
                created = True
            except FileExistsError:
                created = False  # another process won: use its key
        finally:
            with contextlib.suppress(FileNotFoundError):
                aside.unlink()
        return AuditKey(path.read_text(encoding="utf-8")), created
    except OSError as exc:
        raise InitializationError(
            f"audit_key_file: cannot create the audit key file {path}: {exc.strerror or exc}; nothing was "
            "written. Make its directory writable, or set GROUNDHOG_AUDIT_KEY / audit_key_file"
        ) from None


def key_file_problem(path: Path) -> str | None:
    """A warning when the key file can be read by others than its owner."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"audit key file {path} is readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 it"
    return None


@dataclass(frozen=True)
class AuditHead:
    """The last row of one chain, as ``groundhog-mcp audit head`` prints it: kept somewhere the
    database's writers cannot reach, it anchors that chain. A later ``audit verify --head``
    fails if the chain's row ``position`` is gone (a cut tail, even one cut together with the
    writes it recorded) or holds another HMAC (the chain was rewritten from there on, which
    takes the key).

    ``chain`` is the namespace (``""``: the store-wide chain), written ``NAMESPACE@POSITION:HMAC``;
    None is the legacy chain of the rows written before schema 10, written ``SEQUENCE:HMAC``
    as ``audit head`` printed it then (so an anchor kept from then still applies)."""

    position: int
    hmac: str
    chain: str | None = None

    _TEXT = re.compile(r"^(?:([A-Za-z0-9._-]{0,128})@)?(0|[1-9][0-9]{0,18}):([0-9a-f]{64})?$")

    def __str__(self) -> str:
        at = f"{self.chain}@" if self.chain is not None else ""
        return f"{at}{self.position}:{self.hmac}"

    def to_json(self) -> dict[str, int | str | None]:
        return {"chain": self.chain, "position": self.position, "hmac": self.hmac, "head": str(self)}

    @classmethod
    def parse(cls, text: str) -> AuditHead:
        """``NAMESPACE@POSITION:HMAC`` or ``SEQUENCE:HMAC`` (the ``head`` field of ``audit head``'s
        output); ``POSITION`` 0 with no HMAC is an empty chain."""
        match = cls._TEXT.fullmatch(text.strip())
        if match is None or (match.group(2) == "0") != (match.group(3) is None):
            raise InitializationError(
                "head: expected NAMESPACE@POSITION:HMAC (or SEQUENCE:HMAC for the legacy chain) as "
                "`groundhog-mcp audit head` prints it (e.g. default@12:7cd1…, 64 hex digits), or a file holding "
                f"that output; got {len(text)} characters that are neither"
            )
        return cls(int(match.group(2)), match.group(3) or "", match.group(1))


@dataclass(frozen=True)
class ChainProblem:
    """The first row at which a chain breaks, and how: ``sequence`` is the row's number in its
    chain (its position; in the legacy chain, its sequence), ``at_sequence`` the log sequence
    of the row where the break shows, when there is one."""

    sequence: int
    kind: str  # "altered" | "removed" | "reordered" | "foreign key" | "missing tail" | "anchor mismatch"
    message: str
    at_sequence: int | None = None


# The fields that place a row (kept by the row's slot when contents are swapped).
_PLACE = ("sequence", "position")


class ChainVerifier:
    """Feed it the rows of one chain (their ``content()`` and ``hmac``) in chain order; it stops
    at the first problem. Rows must be numbered 1, 2, 3, … without gaps in ``number``: the
    ``position`` of a namespace's chain, the ``sequence`` of the legacy chain. ``anchors`` are
    heads the chain must reach (kept elsewhere, or recorded by the store)."""

    def __init__(self, key: Signer, anchor: AuditHead | None = None, *, number: str = "sequence") -> None:
        self.key = key
        self.anchors: list[tuple[AuditHead, str]] = [(anchor, "the anchored head")] if anchor is not None else []
        self.number = number
        self.rows = 0
        self.previous = ""
        self.expected = 1
        self.problem: ChainProblem | None = None
        self.max_change_sequence = 0
        # The row that broke the chain, kept to tell "altered" from "reordered" later.
        self._suspect: tuple[Mapping[str, AuditValue], str] | None = None
        self._last_hmac = ""

    def anchor_to(self, head: AuditHead, what: str) -> None:
        """Also require ``head`` (``what`` names it in a problem: "the head the store recorded")."""
        self.anchors.append((head, what))

    def feed(self, content: Mapping[str, AuditValue], row_hmac: str) -> bool:
        """Check one row; False once the chain is broken (further rows are only used to
        diagnose a reordering: pass them to :meth:`diagnose`)."""
        if self.problem is not None:
            return False
        sequence = content.get(self.number)
        logged = content.get("sequence")
        at = logged if isinstance(logged, int) else None
        if not isinstance(sequence, int) or sequence != self.expected:
            if isinstance(sequence, int) and sequence > self.expected:
                missing = (
                    f"row {self.expected} is missing"
                    if sequence == self.expected + 1
                    else f"rows {self.expected}-{sequence - 1} are missing"
                )
                self.problem = ChainProblem(
                    self.expected,
                    "removed",
                    f"{missing} (the log goes from row {self.expected - 1} to row {sequence})",
                    at,
                )
            else:
                self.problem = ChainProblem(
                    self.expected, "reordered", f"row {sequence!r} appears where row {self.expected} belongs", at
                )
            return False
        if content.get("key_id") != self.key.key_id:
            self.problem = ChainProblem(
                sequence,
                "foreign key",
                f"row {sequence} was signed with audit key {content.get('key_id')!r}, not with the configured key "
                f"{self.key.key_id!r} (wrong key configured, or the row was forged)",
                at,
            )
            return False
        expected = self.key.sign(content, self.previous)
        if not hmac.compare_digest(expected, row_hmac):
            self.problem = ChainProblem(
                sequence, "altered", f"row {sequence} was altered (its HMAC does not match its content)", at
            )
            self._suspect = (content, row_hmac)
            return False
        for anchor, what in self.anchors:
            if sequence == anchor.position and row_hmac != anchor.hmac:
                self.problem = ChainProblem(
                    sequence,
                    "anchor mismatch",
                    f"row {sequence} verifies but is not {what} ({anchor.hmac[:16]}…): the log was "
                    f"rewritten with the key from row {sequence} or earlier, or the head belongs to another database",
                    at,
                )
                return False
        self.rows += 1
        self.previous = row_hmac
        self.expected += 1
        change_sequence = content.get("change_sequence")
        if isinstance(change_sequence, int):
            self.max_change_sequence = max(self.max_change_sequence, change_sequence)
        return True

    @property
    def diagnosing(self) -> bool:
        return self._suspect is not None and self.problem is not None and self.problem.kind == "altered"

    def diagnose(self, content: Mapping[str, AuditValue], row_hmac: str) -> bool:
        """Given the rows after the broken one (in order), tell whether the broken row holds
        another row's content (the rows were reordered). True once decided."""
        if self._suspect is None or self.problem is None:
            return True
        suspect, suspect_hmac = self._suspect
        sequence = content.get(self.number)
        # The suspect came from row `sequence` if it verifies as that row, chained to whatever
        # preceded that row originally: the row now before it, or (adjacent swap) this row's own.
        for previous in (self._last_hmac, row_hmac):
            moved = {**suspect, **{k: content.get(k) for k in _PLACE if k in suspect}}
            if hmac.compare_digest(self.key.sign(moved, previous), suspect_hmac):
                self.problem = ChainProblem(
                    self.problem.sequence,
                    "reordered",
                    f"row {self.problem.sequence} holds the content of row {sequence}: rows were reordered",
                    self.problem.at_sequence,
                )
                self._suspect = None
                return True
        self._last_hmac = row_hmac
        return False

    def start_diagnosis(self, previous_row_hmac: str) -> None:
        """The HMAC stored in the broken row itself: the 'row before' of the next one."""
        self._last_hmac = previous_row_hmac

    def check_anchor(self) -> None:
        """After the last row: every anchored head must have been among the rows verified."""
        for anchor, what in sorted(self.anchors, key=lambda a: -a[0].position):
            if self.problem is None and self.rows < anchor.position:
                missing = (
                    f"row {anchor.position} is"
                    if self.rows + 1 == anchor.position
                    else f"rows {self.rows + 1}-{anchor.position} are"
                )
                self.problem = ChainProblem(
                    self.rows + 1,
                    "missing tail",
                    f"the log ends at row {self.rows}, but {what} is row {anchor.position}: {missing} "
                    "gone (cut from the end of the log, with or without the writes they recorded)",
                )

    def check_tail(self, last_change_sequence: int) -> None:
        """Every committed change has its audit row: a log whose last rows were deleted (which
        the chain alone cannot show) ends before the store's last change."""
        if self.problem is None and 0 < self.max_change_sequence < last_change_sequence:
            self.problem = ChainProblem(
                self.expected,
                "missing tail",
                f"the log ends at row {self.expected - 1}, but changes up to sequence {last_change_sequence} were "
                f"committed and the last audited one is {self.max_change_sequence}: rows were removed from the "
                "end of the log (or audit was turned off for those writes)",
            )
