"""Value types shared by every layer: ContextState, ContextConfig, ContextInfo and friends.

Plain frozen dataclasses: validation happens at the edges (pydantic tool inputs, the
service's limit and schema checks), these only carry values.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from groundhog_mcp.errors import StateValidationError, ValidationIssue

__all__ = [
    "ALL_RIGHTS",
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "NAME_PATTERN",
    "RIGHTS",
    "SEMVER_PATTERN",
    "TIMESTAMP_PATTERN",
    "Change",
    "ContextConfig",
    "ContextId",
    "ContextInfo",
    "ContextState",
    "Grant",
    "HistoryEntry",
    "JSONObject",
    "Parent",
    "Principal",
    "Right",
    "check_name",
    "check_namespace",
    "check_principal",
    "dumps",
    "format_timestamp",
    "is_semver",
    "json_diff",
    "json_type",
    "json_type_phrase",
    "parse_stored_timestamp",
    "parse_timestamp",
    "pointer_token",
    "utcnow",
]

JSONObject = dict[str, Any]
ContextId = uuid.UUID

DEFAULT_NAMESPACE = "default"
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
NAMESPACE_PATTERN = r"^[A-Za-z0-9._-]{1,128}$"
# A stored timestamp: RFC 3339 in UTC, as the state schema's ``timestamp`` and every export write it.
TIMESTAMP_PATTERN = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]00:00)$"
_NAME = re.compile(NAME_PATTERN)
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_NAMESPACE = re.compile(NAMESPACE_PATTERN)
# semver.org 2.0.0, the official regular expression.
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)
_SEMVER = re.compile(SEMVER_PATTERN)

Operation = Literal["register", "update", "rollback", "unregister", "merge", "event", "migrate", "import"]


def utcnow() -> datetime:
    return datetime.now(UTC)


def format_timestamp(ts: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``: sortable and exact on round trip."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_stored_timestamp(text: str) -> datetime:
    """A timestamp in the stored form (:data:`TIMESTAMP_PATTERN`); ValueError otherwise."""
    if not isinstance(text, str) or not _TIMESTAMP.fullmatch(text):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise ValueError("not an RFC 3339 UTC timestamp like 2026-01-31T12:00:00.000000Z")
    return parse_timestamp(text)


def parse_timestamp(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no time zone; RFC 3339 needs one")
    return ts.astimezone(UTC)


def dumps(value: Any) -> str:
    """The one canonical JSON encoding: compact, UTF-8, no NaN/Infinity."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def is_semver(text: str) -> bool:
    return bool(_SEMVER.fullmatch(text))


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_name(name: str, field: str = "name") -> None:
    """A context name as every tool and ``import`` accept it: 1-128 of A-Z a-z 0-9 . _ -, not
    ``.`` or ``..`` (so no newline, no bidi mark, no ``groundhog://``, nothing a URI must escape)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise StateValidationError(
            [
                ValidationIssue(
                    "", f"must match {NAME_PATTERN} (1-128 of A-Z a-z 0-9 . _ -, not '.' or '..'); got {_shown(name)}"
                )
            ],
            field=field,
        )


def check_principal(principal: str, field: str = "principal") -> None:
    """A principal (who acted) as tokens and ``import`` accept one: 1-128 printable characters."""
    if (
        not isinstance(principal, str)  # pyright: ignore[reportUnnecessaryIsInstance]
        or not 1 <= len(principal) <= 128
        or not principal.isprintable()
    ):
        raise StateValidationError(
            [ValidationIssue("", f"must be 1-128 printable characters; got {_shown(principal)}")], field=field
        )


def check_namespace(namespace: str, field: str = "namespace") -> None:
    """A namespace as tokens, settings and ``import`` accept it."""
    if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise StateValidationError(
            [ValidationIssue("", f"must be 1-128 characters of A-Z a-z 0-9 . _ -; got {_shown(namespace)}")],
            field=field,
        )


@dataclass(frozen=True)
class ContextState:
    """The state of a context: ``{data, metadata, timestamp, version}``.

    ``version`` is the *state format* version (semver) used by migrations. Instances are
    immutable values: ``with_data``/``with_metadata`` return new states, and two states
    are equal when all four fields are equal.
    """

    data: JSONObject = field(default_factory=dict[str, Any])
    metadata: JSONObject = field(default_factory=dict[str, Any])
    timestamp: datetime = field(default_factory=utcnow)
    version: str = "1.0.0"

    def __post_init__(self) -> None:
        if self.timestamp.tzinfo is None:
            raise ValueError("ContextState.timestamp must be time-zone aware (UTC)")
        if self.timestamp.utcoffset() != UTC.utcoffset(None):
            object.__setattr__(self, "timestamp", self.timestamp.astimezone(UTC))
        if not is_semver(self.version):
            raise ValueError(f"ContextState.version: {self.version!r} is not a semantic version (x.y.z)")

    @classmethod
    def new(cls) -> ContextState:
        """An empty state stamped now, format version 1.0.0."""
        return cls()

    def with_data(self, key: str, value: Any) -> ContextState:
        data = copy.deepcopy(self.data)
        data[key] = copy.deepcopy(value)
        return replace(self, data=data)

    def with_metadata(self, key: str, value: Any) -> ContextState:
        metadata = copy.deepcopy(self.metadata)
        metadata[key] = copy.deepcopy(value)
        return replace(self, metadata=metadata)

    def document(self) -> JSONObject:
        """The part of a state that diffs compare: everything but the timestamp."""
        return {"data": self.data, "metadata": self.metadata, "version": self.version}

    def to_json(self) -> JSONObject:
        return {
            "data": self.data,
            "metadata": self.metadata,
            "timestamp": format_timestamp(self.timestamp),
            "version": self.version,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ContextState:
        timestamp = obj.get("timestamp")
        return cls(
            data=dict(obj.get("data") or {}),
            metadata=dict(obj.get("metadata") or {}),
            timestamp=parse_timestamp(timestamp) if isinstance(timestamp, str) else utcnow(),
            version=str(obj.get("version") or "1.0.0"),
        )


@dataclass(frozen=True)
class ContextConfig:
    """How to create a context: name, definition version, optional initial state, settings."""

    name: str
    version: str = "1.0.0"
    state: ContextState | None = None
    settings: JSONObject = field(default_factory=dict[str, Any])


@dataclass(frozen=True)
class ContextInfo:
    """What ``list_contexts`` tells about a context."""

    id: ContextId
    name: str
    version: str
    state: ContextState
    metadata: JSONObject
    revision: int
    namespace: str = DEFAULT_NAMESPACE
    settings: JSONObject = field(default_factory=dict[str, Any])
    schema: JSONObject | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


Right = Literal["read", "write", "admin"]
# Weakest first: each right includes the ones before it (admin ⊇ write ⊇ read).
RIGHTS: tuple[Right, ...] = ("read", "write", "admin")
_GRANT_PREFIX = re.compile(r"^[A-Za-z0-9._-]{0,128}$")


@dataclass(frozen=True)
class Grant:
    """A right on every context whose name starts with ``prefix`` (``""``: every context).

    Written ``right:prefix`` (``read:notes.``, ``write:``, ``admin:``); a bare right means every
    context. Prefixes use the characters of context names, so ``/`` never matches anything and
    is refused.
    """

    prefix: str
    right: Right

    def __post_init__(self) -> None:
        if self.right not in RIGHTS:
            raise ValueError(f"right: must be one of {', '.join(RIGHTS)}; got {self.right!r}")
        if not _GRANT_PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"prefix: must be the start of a context name (A-Z a-z 0-9 . _ -, at most 128; "
                f"names cannot contain '/'); got {self.prefix[:80]!r}"
            )

    def covers(self, right: Right, name: str) -> bool:
        return RIGHTS.index(self.right) >= RIGHTS.index(right) and name.startswith(self.prefix)

    @classmethod
    def parse(cls, text: str) -> Grant:
        """``right:prefix`` or a bare ``right``; raises ValueError naming what is wrong."""
        right, _, prefix = text.partition(":")
        if right not in RIGHTS:
            raise ValueError(f"grant {text[:80]!r}: the right must be one of {', '.join(RIGHTS)} (as right:prefix)")
        try:
            return cls(prefix=prefix, right=right)  # pyright: ignore[reportArgumentType]
        except ValueError as exc:
            raise ValueError(f"grant {text[:80]!r}: {exc}") from None

    def __str__(self) -> str:
        return f"{self.right}:{self.prefix}"


ALL_RIGHTS: tuple[Grant, ...] = (Grant(prefix="", right="admin"),)


@dataclass(frozen=True)
class Principal:
    """Who is asking: a name for the audit trail, bound to one namespace, with grants on
    context name prefixes in it (by default admin on every context)."""

    name: str = "local"
    namespace: str = DEFAULT_NAMESPACE
    grants: tuple[Grant, ...] = ALL_RIGHTS

    def allows(self, right: Right, name: str) -> bool:
        """Whether a grant gives ``right`` (or a stronger one) on context ``name``."""
        return any(grant.covers(right, name) for grant in self.grants)

    def prefixes(self, right: Right = "read") -> tuple[str, ...]:
        """The fewest name prefixes covering every context this principal has ``right`` on
        (sorted; none is a prefix of another)."""
        given = sorted({g.prefix for g in self.grants if RIGHTS.index(g.right) >= RIGHTS.index(right)})
        kept: list[str] = []
        for prefix in given:  # sorted: a covering prefix comes before what it covers
            if not any(prefix.startswith(k) for k in kept):
                kept.append(prefix)
        return tuple(kept)


@dataclass(frozen=True)
class Change:
    """One committed write, as published on the change feed after commit."""

    sequence: int
    context_id: ContextId
    namespace: str
    name: str
    revision: int
    op: str
    actor: str
    timestamp: datetime
    patch: list[JSONObject] | None = None
    # The serialised size of ``patch`` in bytes, when the store measured it (it serialises the
    # diff once, for the change row): the answer's size check reuses it.
    patch_bytes: int | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Parent:
    """A revision of another context that a revision descends from: the fork point of a fork's
    first revision (``kind="fork"``), or an input of a merge written into it (``kind="merge"``)."""

    kind: str
    name: str
    revision: int


@dataclass(frozen=True)
class HistoryEntry:
    """One revision in a context's history (``parents``: what it was forked or merged from)."""

    revision: int
    sequence: int
    op: str
    actor: str
    timestamp: datetime
    size: int
    parents: tuple[Parent, ...] = ()


def json_diff(source: Any, target: Any) -> list[JSONObject]:
    """The RFC 6902 patch that turns ``source`` into ``target``.

    Objects are compared key by key; arrays keep their common head and tail and patch the
    middle; anything else that differs (in value or JSON type: ``1`` vs ``1.0`` vs ``true``) is
    replaced. A direct walk: about 25 times faster than ``jsonpatch.make_patch`` on a 1 KB state,
    and it runs inside the write transaction. Values in the patch are shared with ``target``
    (states are immutable values), not copied.
    """
    operations: list[JSONObject] = []
    _diff(source, target, "", operations)
    return operations


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return len(a) == len(b) and all(k in b and _same(v, b[k]) for k, v in a.items())  # pyright: ignore
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))  # pyright: ignore
    return bool(a == b)


def _equal(a: Any, b: Any) -> bool:
    """:func:`_same`, after Python's ``==`` (C speed) has ruled out most unequal pairs: ``==``
    alone would take ``1`` for ``1.0`` or ``true``, so an equal pair is still checked by type."""
    return bool(a == b) and _same(a, b)


def pointer_token(key: str) -> str:
    """``key`` as one JSON Pointer reference token (RFC 6901: ``~`` → ``~0``, ``/`` → ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def pointer_tokens(pointer: str) -> list[str]:
    """The keys a JSON Pointer names, unescaped (RFC 6901: ``~1`` → ``/``, then ``~0`` → ``~``):
    the inverse of :func:`pointer_token`; ``[]`` for ``""``, the whole document."""
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:]]


def _diff(a: Any, b: Any, pointer: str, operations: list[JSONObject]) -> None:
    if _equal(a, b):
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            if key not in b:
                operations.append({"op": "remove", "path": f"{pointer}/{pointer_token(key)}"})
        for key, value in b.items():  # pyright: ignore[reportUnknownVariableType]
            child = f"{pointer}/{pointer_token(key)}"  # pyright: ignore[reportUnknownArgumentType]
            if key in a:
                _diff(a[key], value, child, operations)
            else:
                operations.append({"op": "add", "path": child, "value": value})
        return
    if isinstance(a, list) and isinstance(b, list):
        old: list[Any] = a  # pyright: ignore[reportUnknownVariableType]
        new: list[Any] = b  # pyright: ignore[reportUnknownVariableType]
        head = 0
        while head < len(old) and head < len(new) and _equal(old[head], new[head]):
            head += 1
        tail = 0
        while tail < len(old) - head and tail < len(new) - head and _equal(old[-1 - tail], new[-1 - tail]):
            tail += 1
        old_middle, new_middle = len(old) - head - tail, len(new) - head - tail
        common = min(old_middle, new_middle)
        for offset in range(common):
            _diff(old[head + offset], new[head + offset], f"{pointer}/{head + offset}", operations)
        for _ in range(old_middle - common):
            operations.append({"op": "remove", "path": f"{pointer}/{head + common}"})
        for offset in range(common, new_middle):
            operations.append(
                {"op": "add", "path": f"{pointer}/{head + offset}", "value": copy.deepcopy(new[head + offset])}
            )
        return
    operations.append({"op": "replace", "path": pointer, "value": b})


def json_type(value: Any) -> str:
    """The JSON type of a value that came from JSON: ``null``, ``boolean``, ``integer``, ``number``,
    ``string``, ``object`` or ``array`` (the Python type's name for anything else)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    return type(value).__name__


def json_type_phrase(value: Any) -> str:
    """:func:`json_type` as a message says it: ``a string``, ``an integer``, ``null``."""
    kind = json_type(value)
    if kind == "null":
        return kind
    if kind not in ("boolean", "integer", "number", "string", "object", "array"):
        return "a value"
    return ("an " if kind[0] in "aeiou" else "a ") + kind
