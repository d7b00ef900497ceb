"""The error tree of groundhog-mcp.

Every error a caller can act on is a :class:`ContextError`; its message names the
field, the rule and the limit, and its attributes carry what a program needs. Each class
has a stable ``code`` a client branches on (never the text) and ``retryable``: whether the
same call, repeated (after re-reading, for a conflict), can succeed::

    ContextError                  error            base of every expected failure
    ├── InitializationError       unavailable      context not set up / database unusable
    │   └── EncryptionKeyError    encryption_key   encryption key missing, wrong or malformed
    ├── StateUpdateError          write_failed     a write could not be applied
    │   ├── ConflictError         conflict  (r)    expected_revision did not match (current revision + missed diff)
    │   └── MergeConflictError    merge_conflict   conflicting changes and on_conflict is 'fail'
    ├── LeasedError               leased    (r)    another agent holds the context's lease, or the lease_token is stale
    ├── EventHandlingError        event_failed     an event handler failed
    ├── StateValidationError      invalid_argument a value broke a rule or the context's JSON Schema
    │                             too_large        ... or the state size limit (when that is among the issues)
    ├── NotFoundError             not_found        no such context or revision (also: not visible to you)
    │   └── CompactedError        compacted        the revision was pruned by history retention
    ├── AccessDeniedError         access           the principal lacks a grant
    ├── LimitExceededError        too_large        a request exceeded a configured limit
    ├── MigrationError            migration_failed an upcaster failed or no path exists (too_large: over the bound)
    ├── StoreBusyError            busy      (r)    the database stayed locked past the busy timeout, a line is full
    ├── BudgetError               budget           a query needed more work than its bound allows
    ├── SealedSearchError         sealed           a search would need plaintext of sealed state (encryption at rest)
    └── RecordIntegrityError      integrity        an encrypted record failed authentication (altered or moved)

    (r) retryable. Two codes come from the server, not from this tree: ``invalid_argument`` for
    arguments that fail a tool's input schema, ``internal`` for a bug (anything that is not a
    ``ContextError``). docs/errors.md has the table, with what a client should do for each code.

Anything that is not a ``ContextError`` is a bug: the server logs it with a traceback on
stderr and answers with a short generic message and an error id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "MAX_MESSAGE_CHARS",
    "AccessDeniedError",
    "BudgetError",
    "CompactedError",
    "ConflictError",
    "ContextError",
    "EncryptionKeyError",
    "EventHandlingError",
    "InitializationError",
    "LeasedError",
    "LimitExceededError",
    "MergeConflict",
    "MergeConflictError",
    "MigrationError",
    "NotFoundError",
    "RecordIntegrityError",
    "SealedSearchError",
    "StateUpdateError",
    "StateValidationError",
    "StoreBusyError",
    "ValidationIssue",
]

MAX_MESSAGE_CHARS = 1000
"""Every error message is at most this long (the backstop is :meth:`ContextError.__str__`)."""
# A conflict message carries the diff the caller missed, but never more than fits the bound.
_MAX_DIFF_CHARS_IN_MESSAGE = 500
# A merge conflict message shows the first few conflicts (paths and kinds, never values).
_MAX_CONFLICTS_IN_MESSAGE = 10
# A validation issue names a pointer and a rule: both cut short (keys can be long).
_MAX_POINTER_CHARS = 200
_MAX_ISSUE_CHARS = 300


class ContextError(Exception):
    """Base of every expected, user-facing failure.

    ``code`` and ``retryable`` are set per class; a class that covers two documented cases
    refines them on the instance (a state over the size limit is ``too_large``).
    """

    code: str = "error"
    retryable: bool = False

    def __str__(self) -> str:
        # The one place every message passes on its way to a client, a log or an audit row:
        # whatever a message was built from, it never exceeds MAX_MESSAGE_CHARS.
        return _bounded(super().__str__(), MAX_MESSAGE_CHARS)


class InitializationError(ContextError):
    """A context or the store could not be initialised."""

    code = "unavailable"


class StateUpdateError(ContextError):
    """A write could not be applied; the previous revision is intact."""

    code = "write_failed"


class ConflictError(StateUpdateError):
    """``expected_revision`` did not match the context's current revision."""

    code = "conflict"
    retryable = True

    def __init__(
        self,
        name: str,
        expected_revision: int | None,
        current_revision: int | None,
        missed_patch: Sequence[dict[str, Any]] | None = None,
        detail: str | None = None,
        message: str | None = None,
    ) -> None:
        self.name = name
        self.expected_revision = expected_revision
        self.current_revision = current_revision
        self.missed_patch = list(missed_patch) if missed_patch is not None else None
        super().__init__(message or self._message(detail))

    @classmethod
    def already_exists(cls, name: str, current_revision: int, *, field: str = "name") -> ConflictError:
        hint = "pass if_exists='return' to use it, or choose another name" if field == "name" else "choose another name"
        error = cls(
            name,
            0,
            current_revision,
            message=f"{field}: a context named {name!r} already exists (revision {current_revision}); {hint}",
        )
        error.retryable = False  # the same create fails again: the name is taken
        return error

    def _message(self, detail: str | None) -> str:
        if self.current_revision is None:
            head = (
                f"expected_revision: conflict, context {self.name!r} does not exist "
                f"(expected revision {self.expected_revision})"
            )
        elif self.expected_revision == 0:
            head = (
                f"expected_revision: conflict, 0 means create-only but context {self.name!r} "
                f"already exists at revision {self.current_revision}"
            )
        else:
            head = (
                f"expected_revision: conflict, expected revision {self.expected_revision} "
                f"but context {self.name!r} is at revision {self.current_revision}"
            )
        if detail:
            head += f"; {detail}"
        if self.missed_patch is None:
            return head + "; re-read the state and retry with the current revision"
        diff = json.dumps(self.missed_patch, ensure_ascii=False, separators=(",", ":"))
        if len(diff) > _MAX_DIFF_CHARS_IN_MESSAGE:
            diff = (
                f"{len(self.missed_patch)} operations, too long to show; call diff_states with "
                f"from_revision={self.expected_revision} to_revision={self.current_revision}"
            )
        return (
            f"{head}; changes since revision {self.expected_revision} (RFC 6902): {diff}; "
            "re-read the state and retry with the current revision"
        )


class LeasedError(ContextError):
    """A write or a lease action was refused by the context's lease: another agent holds it
    (``holder`` until ``expires_at``; retryable once it is released or expires), or the
    ``lease_token`` presented is not the live lease's (stale: not retryable with that token)."""

    code = "leased"
    retryable = True

    def __init__(self, message: str, *, holder: str | None, expires_at: datetime | None, stale: bool = False) -> None:
        self.holder = holder
        self.expires_at = expires_at
        if stale:
            self.retryable = False
        super().__init__(message)


@dataclass(frozen=True)
class MergeConflict:
    """One path both sides of a merge changed in incompatible ways.

    ``path`` is a JSON Pointer into the state document (``/data/...``, ``/metadata/...``).
    ``kind`` is ``both_modified``, ``modify_delete``, ``add_add`` or ``type_mismatch``. A value
    that does not exist on a side is ``None`` there and that side is listed in ``absent``.
    """

    path: str
    kind: str
    base: Any
    ours: Any
    theirs: Any
    absent: tuple[str, ...] = ()

    def describe(self) -> str:
        """Path and kind, and which side lacks the value; never the values (they are state data:
        a dry run returns them in its structured result)."""
        absent = f" (absent in {', '.join(self.absent)})" if self.absent else ""
        return f"{_bounded(self.path, _MAX_POINTER_CHARS)} {self.kind}{absent}"


class MergeConflictError(StateUpdateError):
    """A merge found conflicts and ``on_conflict`` was ``'fail'``; nothing was merged or written."""

    code = "merge_conflict"

    def __init__(self, conflicts: Sequence[MergeConflict]) -> None:
        self.conflicts = list(conflicts)
        described: list[str] = []
        for conflict in self.conflicts[:_MAX_CONFLICTS_IN_MESSAGE]:
            text = conflict.describe()
            if described and sum(len(d) + 2 for d in described) + len(text) > 600:
                break
            described.append(text)
        shown = "; ".join(described)
        more = len(self.conflicts) - len(described)
        if more > 0:
            shown += f"; and {more} more (a dry run lists them all)"
        count = f"{len(self.conflicts)} conflict{'s' if len(self.conflicts) != 1 else ''}"
        super().__init__(
            f"on_conflict: 'fail' and the merge found {count}: {shown}; pass on_conflict='ours' or "
            "'theirs' to pick a side, or a reducer for the path; nothing was merged or written"
        )


class EventHandlingError(ContextError):
    """An event could not be handled."""

    code = "event_failed"


@dataclass(frozen=True)
class ValidationIssue:
    """One reason a state is invalid: where (JSON Pointer), which rule, and the limit."""

    pointer: str
    message: str
    too_large: bool = False
    """The issue is a size limit (the error's code becomes ``too_large``)."""

    def __post_init__(self) -> None:
        # Keys in a pointer are data of any length: a pointer and a message are cut short here.
        object.__setattr__(self, "pointer", _bounded(self.pointer, _MAX_POINTER_CHARS))
        object.__setattr__(self, "message", _bounded(self.message, _MAX_ISSUE_CHARS))

    def __str__(self) -> str:
        return f"{self.pointer or '/'}: {self.message}"


class StateValidationError(ContextError):
    """A state broke a built-in limit or the context's JSON Schema."""

    code = "invalid_argument"

    def __init__(self, issues: Sequence[ValidationIssue], field: str = "state") -> None:
        self.issues = list(issues)
        self.field = field
        if any(issue.too_large for issue in self.issues):
            self.code = "too_large"
        parts: list[str] = []
        used = 0
        for issue in self.issues[:10]:
            part = _printable(f"{field}{_dotted(issue.pointer)}: {issue.message}")
            if parts and used + len(part) > MAX_MESSAGE_CHARS - 60:
                break
            parts.append(part)
            used += len(part) + 2
        more = f" (and {len(self.issues) - len(parts)} more)" if len(self.issues) > len(parts) else ""
        super().__init__("; ".join(parts) + more)


class NotFoundError(ContextError):
    """No such context or revision, or none the caller may see (the two are indistinguishable)."""

    code = "not_found"


class CompactedError(NotFoundError):
    """The revision existed but history retention pruned it."""

    code = "compacted"

    def __init__(self, name: str, revision: int, oldest_available: int) -> None:
        self.name = name
        self.revision = revision
        self.oldest_available = oldest_available
        super().__init__(
            f"revision: compacted, revision {revision} of context {name!r} was pruned by history "
            f"retention; the oldest available revision is {oldest_available}"
        )

    @classmethod
    def at_time(cls, name: str, at: str, oldest_available: int, *, field: str = "as_of") -> CompactedError:
        """The revision in force at time ``at`` was pruned."""
        error = cls(name, 0, oldest_available)
        error.args = (
            f"{field}: compacted, the revision of context {name!r} in force at {at} was pruned by history "
            f"retention; the oldest available revision is {oldest_available}",
        )
        return error


class AccessDeniedError(ContextError):
    """The principal lacks the grant an operation needs."""

    code = "access"

    audited: bool = False  # set once the denial has its audit row (StateManager.audit_denied)


class LimitExceededError(ContextError):
    """A request exceeded a configured limit (the message names field, limit and value)."""

    code = "too_large"


class MigrationError(ContextError):
    """A state could not be upcast to another format version: an upcaster failed, its result broke
    the target version's schema, or no chain of steps leads there. Names the context, the step
    (``from -> to``) and the cause; nothing was changed."""

    code = "migration_failed"

    def __init__(
        self, context: str, step: tuple[str, str] | None, cause: str, *, note: str = "", too_large: bool = False
    ) -> None:
        self.context = context
        self.step = step
        self.cause = cause
        self.too_large = too_large  # the step's result (or copies) went over the size bound
        if too_large:
            self.code = "too_large"
        where = f"step {step[0]} -> {step[1]}" if step is not None else "no step"
        super().__init__(_printable(f"migration: context {context!r}, {where}: {cause}{note}"))


class StoreBusyError(ContextError):
    """The database stayed locked by another process past the busy timeout, or a bounded queue
    (a lease's waiting line) is full; nothing was written."""

    code = "busy"

    retryable = True


class BudgetError(ContextError):
    """A query needed more work than its bound allows (the message names the bound and how to narrow it)."""

    code = "budget"


class SealedSearchError(ContextError):
    """Encryption at rest is on: a condition on state contents or a text search would need the
    plaintext of sealed state in a query or an index, which sealing rules out."""

    code = "sealed"


class EncryptionKeyError(InitializationError):
    """Encryption at rest: a key is missing, malformed, or not the one the database was written with."""

    code = "encryption_key"


class RecordIntegrityError(ContextError):
    """An encrypted record did not decrypt: altered, copied from another row, or under an unknown key."""

    code = "integrity"


def _bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... ({len(text)} chars)"


def _dotted(pointer: str) -> str:
    """``/a/b/0`` → ``.a.b.0`` for messages like ``state.data.a.b: ...``."""
    if not pointer:
        return ""
    parts = [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]
    return "".join("." + p for p in parts)


def _printable(text: str) -> str:
    """Lone surrogates (from hostile keys) as ``\\udfff`` escapes: a message must always encode."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
