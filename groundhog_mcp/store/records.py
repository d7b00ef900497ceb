"""The export format (JSON Lines records), shared by every backend: what ``export`` writes and
``import`` checks and loads.

A file is a ``header`` record, then one record per row of the store's tables, a table at a
time, in :data:`EXPORT_KINDS` order::

    header         format, format_version, schema_version, exported_at
    context        a context (live or unregistered) with its current state
    revision       a history snapshot
    name_revision  the highest revision ever given to a name (revisions are never reused)
    lineage        where a revision came from: a fork point or a merged input (schema 7)
    change         a change-feed entry (``sequence`` order)
    event          a handled event: its idempotency key answers a repeat after an import too
    dead_letter    an event whose handler kept failing, replayed or not

Every record's ``type`` names its kind; an event's own type is its ``event_type``. Each kind
is declared once here (record key, table column, value type), and both backends
read and write through it: a backend only runs the ``SELECT`` and ``INSERT`` statements this
module builds, with its own placeholders and its own types for ids and timestamps. So an
export from either backend imports into the other unchanged, and a broken record is refused
with the same message (record number, kind, field) by both, before anything is written.
"""

from __future__ import annotations

import json
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, LiteralString

from groundhog_mcp import schemas
from groundhog_mcp.errors import StateUpdateError, StateValidationError
from groundhog_mcp.models import (
    JSONObject,
    check_name,
    check_namespace,
    check_principal,
    dumps,
    format_timestamp,
    is_semver,
    parse_stored_timestamp,
    parse_timestamp,
    utcnow,
)
from groundhog_mcp.store.base import AUDIT_OK, AuditEntry
from groundhog_mcp.store.migrations import LATEST_SCHEMA_VERSION

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_KINDS",
    "ImportRows",
    "RecordKind",
    "export_page",
    "header_record",
    "import_entries",
    "import_rows",
]

EXPORT_FORMAT: Final = "groundhog-export"
# 2: adds the ``event`` and ``dead_letter`` records. Version 1 files still import.
EXPORT_FORMAT_VERSION: Final = 2

_NOTHING = "nothing was imported"
_INT64_MAX = 2**63 - 1  # both backends' integer columns

# How a record value is checked and stored:
#   text                a JSON string, stored as is
#   name, namespace     a context name / namespace, checked as every tool checks one
#   principal           who acted (``actor``): 1-128 printable characters, as a token's principal
#   version             a state format version (semver), checked as register_context does
#   count, positive     a JSON integer 0 … 2^63-1 / 1 … 2^63-1 (revisions, sequences, ids)
#   id                  a UUID string; the backend's id type (TEXT or UUID)
#   time                an RFC 3339 timestamp; the backend's time type (TEXT or TIMESTAMPTZ)
#   object              a JSON object, stored as JSON text
#   json                any JSON value, stored as JSON text
#   state               a context state (checked against its schema): columns state, state_size
#   snapshot            a context state: columns size, snapshot (zlib-compressed JSON text)
Codec = Literal[
    "text",
    "name",
    "namespace",
    "principal",
    "version",
    "count",
    "positive",
    "id",
    "time",
    "object",
    "json",
    "state",
    "snapshot",
]


_REQUIRED: Final[Any] = object()


@dataclass(frozen=True)
class _Field:
    key: str  # in the record
    column: LiteralString  # in the table (a state is stored in two: see ``columns``)
    codec: Codec
    nullable: bool = False
    default: Any = _REQUIRED  # what a missing field stands for (one older exports lack)

    @property
    def select(self) -> LiteralString:
        """The column an export reads."""
        return "snapshot" if self.codec == "snapshot" else self.column

    @property
    def columns(self) -> tuple[LiteralString, ...]:
        """The columns an import writes."""
        if self.codec == "state":
            return ("state", "state_size")
        if self.codec == "snapshot":
            return ("size", "snapshot")
        return (self.column,)


@dataclass(frozen=True)
class RecordKind:
    """One record type: the table it comes from and its fields, in record and column order."""

    type: str
    table: LiteralString
    key: tuple[LiteralString, ...]  # the table's primary key: export pages follow it
    fields: tuple[_Field, ...]

    @property
    def select_list(self) -> LiteralString:
        return ", ".join(f.select for f in self.fields)

    @property
    def order_by(self) -> LiteralString:
        return ", ".join(self.key)

    def key_of(self, row: Sequence[Any]) -> tuple[Any, ...]:
        """The primary key of a row read with :attr:`select_list` (where the next page starts)."""
        selected = [f.select for f in self.fields]
        return tuple(row[selected.index(k)] for k in self.key)

    def select_page(self, placeholder: LiteralString, *, after: bool) -> LiteralString:
        """One export page in key order: parameters are the previous page's last key (with
        ``after``), then the page size."""
        where = f" WHERE ({self.order_by}) > ({', '.join(placeholder for _ in self.key)})" if after else ""
        return f"SELECT {self.select_list} FROM {self.table}{where} ORDER BY {self.order_by} LIMIT {placeholder}"

    def insert(self, placeholder: LiteralString) -> LiteralString:
        """``INSERT INTO table (…) VALUES (…)`` with the backend's placeholder (``?`` or ``%s``)."""
        columns: list[LiteralString] = [c for f in self.fields for c in f.columns]
        values = ", ".join(placeholder for _ in columns)
        return f"INSERT INTO {self.table} ({', '.join(columns)}) VALUES ({values})"


def _f(
    column: LiteralString, codec: Codec, *, key: str | None = None, nullable: bool = False, default: Any = _REQUIRED
) -> _Field:
    return _Field(key or column, column, codec, nullable, default)


EXPORT_KINDS: Final[tuple[RecordKind, ...]] = (
    RecordKind(
        "context",
        "contexts",
        ("id",),
        (
            _f("id", "id"),
            _f("namespace", "namespace"),
            _f("name", "name"),
            _f("version", "version"),
            _f("metadata", "object"),
            _f("settings", "object"),
            _f("schema", "object", nullable=True),
            _f("handlers", "object", default={}),
            _f("revision", "positive"),
            _f("state", "state"),
            _f("created_at", "time"),
            _f("updated_at", "time"),
            _f("deleted_at", "time", nullable=True),
        ),
    ),
    RecordKind(
        "revision",
        "history",
        ("context_id", "revision"),
        (
            _f("context_id", "id"),
            _f("revision", "positive"),
            _f("sequence", "positive"),
            _f("op", "text"),
            _f("actor", "principal"),
            _f("timestamp", "time"),
            _f("state", "snapshot"),
        ),
    ),
    RecordKind(
        "name_revision",
        "name_revisions",
        ("namespace", "name"),
        (_f("namespace", "namespace"), _f("name", "name"), _f("last_revision", "positive")),
    ),
    RecordKind(
        "lineage",
        "lineage",
        ("context_id", "revision", "parent_id"),
        (
            _f("context_id", "id"),
            _f("revision", "positive"),
            _f("parent_id", "id"),
            _f("parent_revision", "positive"),
            _f("namespace", "namespace"),
            _f("parent_name", "name"),
            _f("kind", "text"),
        ),
    ),
    RecordKind(
        "change",
        "changes",
        ("sequence",),
        (
            _f("sequence", "positive"),
            _f("context_id", "id"),
            _f("namespace", "namespace"),
            _f("name", "name"),
            _f("revision", "positive"),
            _f("op", "text"),
            _f("actor", "principal"),
            _f("timestamp", "time"),
            _f("patch", "json", nullable=True),
        ),
    ),
    RecordKind(
        "event",
        "events",
        ("id",),
        (
            _f("id", "positive"),
            _f("context_id", "id"),
            _f("type", "text", key="event_type"),
            _f("payload", "object"),
            _f("idempotency_key", "text", nullable=True),
            _f("revision", "positive"),
            _f("sequence", "positive"),
            _f("created_at", "time"),
        ),
    ),
    RecordKind(
        "dead_letter",
        "dead_letters",
        ("id",),
        (
            _f("id", "positive"),
            _f("namespace", "namespace"),
            _f("context_id", "id"),
            _f("name", "name"),
            _f("type", "text", key="event_type"),
            _f("payload", "object"),
            _f("idempotency_key", "text", nullable=True),
            _f("attempts", "count"),
            _f("last_error", "text"),
            _f("created_at", "time"),
            _f("replayed_at", "time", nullable=True),
            _f("replay_revision", "positive", nullable=True),
        ),
    ),
)
_KINDS_BY_TYPE: Final = {kind.type: kind for kind in EXPORT_KINDS}


# -- export -----------------------------------------------------------------------------------


def header_record() -> JSONObject:
    return {
        "type": "header",
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_FORMAT_VERSION,
        "schema_version": LATEST_SCHEMA_VERSION,
        "exported_at": format_timestamp(utcnow()),
    }


def export_page(kind: RecordKind, rows: Iterable[Sequence[Any]]) -> list[JSONObject]:
    """Records of rows read with ``SELECT {kind.select_list} FROM {kind.table}`` (either backend).

    CPU-bound for large states (JSON parsing, decompression): run it off the event loop.
    """
    return [_export_record(kind, row) for row in rows]


def _export_record(kind: RecordKind, row: Sequence[Any]) -> JSONObject:
    record: JSONObject = {"type": kind.type}
    for field, value in zip(kind.fields, row, strict=True):
        record[field.key] = None if value is None else _export_value(field.codec, value)
    return record


def _export_value(codec: Codec, value: Any) -> Any:
    if codec == "id":
        return str(value)
    if codec == "time":
        # SQLite keeps RFC 3339 text, PostgreSQL a datetime: both leave as the same text.
        return format_timestamp(parse_timestamp(value) if isinstance(value, str) else value)
    if codec in ("object", "json", "state"):
        return json.loads(value)
    if codec == "snapshot":
        return json.loads(zlib.decompress(value).decode("utf-8"))
    return value


# -- import -----------------------------------------------------------------------------------


class ImportRows:
    """Every record of an import, checked and turned into rows, per record kind in load order."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[Any, ...]]] = {kind.type: [] for kind in EXPORT_KINDS}

    @property
    def contexts(self) -> int:
        return len(self.rows["context"])

    def namespaces(self) -> dict[str, int]:
        """Contexts imported per namespace."""
        counts: dict[str, int] = {}
        for row in self.rows["context"]:
            counts[row[1]] = counts.get(row[1], 0) + 1  # (id, namespace, …): the context kind's order
        return counts

    def tables(self) -> Iterable[tuple[RecordKind, list[tuple[Any, ...]]]]:
        """(kind, rows) in :data:`EXPORT_KINDS` order, the kinds with rows only."""
        return ((kind, self.rows[kind.type]) for kind in EXPORT_KINDS if self.rows[kind.type])


def import_rows(
    records: Iterable[Any],  # JSON objects, from a file: checked here
    *,
    identifier: Callable[[uuid.UUID], Any],
    timestamp: Callable[[datetime], Any],
    lines: Sequence[int] | None = None,
) -> ImportRows:
    """Check every record and turn it into a row; raise :class:`StateUpdateError` naming the
    record (1-based, the header included; with ``lines``, the file's line number of each
    record) and the field before anything is written. Names, namespaces, versions, revisions
    and timestamps are checked exactly as the tools check them.

    ``identifier`` and ``timestamp`` give a UUID and a datetime the backend's column type.
    CPU-bound (schema checks, compression): run it off the event loop.
    """
    rows = ImportRows()
    for number, record in enumerate(records, start=1):
        label = f"line {lines[number - 1]}" if lines is not None else f"record {number}"
        if not isinstance(record, dict):
            raise StateUpdateError(f"import: {label}: not a JSON object; {_NOTHING}")
        kind_type = record.get("type")
        if kind_type == "header":
            _check_header(record)
            continue
        kind = _KINDS_BY_TYPE.get(kind_type) if isinstance(kind_type, str) else None
        if kind is None:
            raise StateUpdateError(f"import: {label}: unknown record type {kind_type!r}; {_NOTHING}")
        row: list[Any] = []
        for field in kind.fields:
            where = f"import: {label} ({kind.type})"
            value = record.get(field.key, field.default)
            if value is _REQUIRED:
                raise StateUpdateError(f"{where}: missing field {field.key!r}; {_NOTHING}")
            if value is None:
                if not field.nullable:
                    raise StateUpdateError(f"{where}: field {field.key!r} must not be null; {_NOTHING}")
                row.append(None)
                continue
            try:
                row.extend(_import_value(field, value, identifier, timestamp))
            except _BadValue as exc:
                raise StateUpdateError(f"{where}: {exc}; {_NOTHING}") from None
        rows.rows[kind.type].append(tuple(row))
    return rows


def _check_header(record: JSONObject) -> None:
    if record.get("format") != EXPORT_FORMAT:
        raise StateUpdateError(f"import: not a {EXPORT_FORMAT} file (format={record.get('format')!r})")
    version = record.get("format_version", 0)
    if not isinstance(version, int) or version > EXPORT_FORMAT_VERSION:
        raise StateUpdateError(
            f"import: format_version {version!r} is newer than {EXPORT_FORMAT_VERSION}; upgrade groundhog-mcp"
        )


class _BadValue(Exception):
    pass


def _import_value(
    field: _Field, value: Any, identifier: Callable[[uuid.UUID], Any], timestamp: Callable[[datetime], Any]
) -> tuple[Any, ...]:
    """The column value(s) of one record value, or :class:`_BadValue` saying what is wrong."""
    codec, key = field.codec, field.key
    if codec in ("text", "name", "namespace", "principal", "version"):
        if not isinstance(value, str):
            raise _BadValue(f"field {key!r} must be a string; got {_show(value)}")
        try:
            if codec == "name":
                check_name(value, field=key)
            elif codec == "namespace":
                check_namespace(value, field=key)
            elif codec == "principal":
                check_principal(value, field=key)
            elif codec == "version" and not is_semver(value):
                raise _BadValue(f"field {key!r} must be a semantic version like 1.0.0; got {_show(value)}")
        except StateValidationError as exc:
            raise _BadValue(f"field {exc}") from None
        return (value,)
    if codec in ("count", "positive"):
        low = 1 if codec == "positive" else 0
        if not isinstance(value, int) or isinstance(value, bool):
            raise _BadValue(f"field {key!r} must be an integer; got {_show(value)}")
        if not low <= value <= _INT64_MAX:
            raise _BadValue(f"field {key!r} must be an integer from {low} to 2^63-1; got {_show(value)}")
        return (value,)
    if codec == "id":
        try:
            return (identifier(uuid.UUID(value)),)
        except (ValueError, TypeError, AttributeError):
            raise _BadValue(f"field {key!r} must be a UUID; got {_show(value)}") from None
    if codec == "time":
        try:
            return (timestamp(parse_stored_timestamp(value)),)
        except (ValueError, OverflowError):
            raise _BadValue(
                f"field {key!r} must be an RFC 3339 timestamp in UTC like 2026-01-31T12:00:00Z; got {_show(value)}"
            ) from None
    if codec == "object" and not isinstance(value, dict):
        raise _BadValue(f"field {key!r} must be a JSON object; got {_show(value)}")
    try:
        text = dumps(value)
    except (ValueError, TypeError) as exc:
        raise _BadValue(f"field {key!r} is not JSON ({exc})") from None
    if codec in ("object", "json"):
        return (text,)
    problem = next(iter(schemas.validator("context_state").iter_errors(value)), None)
    if problem is not None:
        path = "".join(f"/{p}" for p in problem.absolute_path)
        raise _BadValue(f"{key}{path}: {problem.message}")
    size = len(text.encode("utf-8"))
    if codec == "state":
        return (text, size)
    return (size, zlib.compress(text.encode("utf-8"), 6))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def import_entries(rows: ImportRows, *, actor: str, last_sequence: int) -> list[AuditEntry]:
    """The audit rows of an import: one per namespace it filled. The exported audit rows of the
    source are not part of an export (``groundhog-mcp audit export`` archives them): an import
    cannot write rows into this database's chain that its key did not sign."""
    return [
        AuditEntry(
            principal=actor,
            namespace=namespace,
            operation="import",
            outcome=AUDIT_OK,
            change_sequence=last_sequence,
            detail=f"{count} context(s) imported",
        )
        for namespace, count in sorted(rows.namespaces().items())
    ]
