"""Search across contexts: one condition tree, written out as SQL per dialect.

:class:`SearchQuery` is what the service asks (namespace, the readable name prefixes, conditions
on JSON values, text words, update-time bounds, a sort and a keyset cursor); :func:`build`
writes it as one ``SELECT`` for SQLite (JSON1 ``json_extract``/``json_type``, FTS5) or
PostgreSQL (``jsonb`` operators, ``jsonb_to_tsvector``). The namespace and the readable prefixes
are conditions of the query itself, so a context the caller may not read is never counted,
scanned into a result or hinted at.

The expression a condition uses on a pointer is the expression of that pointer's index
(:func:`index_statement`, the ``search_indexes`` setting), so an equality or a range on an
indexed pointer is an index lookup on both backends. Pointers are inlined as SQL literals (an
index matches a literal, never a parameter): :func:`check_segment` keeps them quotable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, LiteralString, TypeVar, cast

from groundhog_mcp.errors import (
    BudgetError,
    LimitExceededError,
    SealedSearchError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import dumps, pointer_tokens
from groundhog_mcp.store.adapter import StoreAdapter, Tx
from groundhog_mcp.store.rows import StoredContext

_T = TypeVar("_T")

__all__ = [
    "MAX_IN_VALUES",
    "MAX_POINTER_CHARS",
    "MAX_SEARCH_INDEXES",
    "OPERATORS",
    "POSTGRES_SEARCH",
    "ROOTS",
    "SQLITE_SEARCH",
    "Condition",
    "JsonRef",
    "SearchDialect",
    "SearchQuery",
    "Searching",
    "build",
    "check_segment",
    "index_statement",
    "parse_ref",
    "pointer_of",
    "sort_key",
]

Scalar = str | int | float | bool | None
MAX_POINTER_CHARS: Final = 1000
MAX_SEARCH_INDEXES: Final = 32
OPERATORS: Final = ("eq", "ne", "lt", "le", "gt", "ge", "in", "contains", "exists")
MAX_IN_VALUES: Final = 100
_RANGE = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def check_segment(segment: str | int) -> str | None:
    """What makes a pointer segment unusable in a query (None: usable). A double quote or a
    control character cannot be written in a SQLite JSON path."""
    if isinstance(segment, int):
        return None
    if '"' in segment or "\\" in segment or any(ord(c) < 0x20 for c in segment):
        return "a segment may not contain a double quote, a backslash or a control character"
    return None


@dataclass(frozen=True)
class JsonRef:
    """A JSON value in a context row: ``column`` ``state`` (the state document) or ``metadata``
    (the context's metadata), at ``segments`` (an int addresses an array element)."""

    column: Literal["state", "metadata"]
    segments: tuple[str | int, ...]


@dataclass(frozen=True)
class Condition:
    ref: JsonRef
    op: str
    value: Any = None  # a scalar; for ``in`` a tuple of scalars; for ``exists`` a bool


@dataclass(frozen=True)
class SearchQuery:
    namespace: str
    prefixes: tuple[str, ...]  # disjoint readable name prefixes ("" = every name); () finds nothing
    conditions: tuple[Condition, ...] = ()
    words: tuple[str, ...] = ()  # text search: every word must occur in a string value of data
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    sort: Literal["name", "updated_at"] | JsonRef = "name"
    descending: bool = False
    after: tuple[Any, ...] | None = None  # the sort key of the last row of the previous page
    limit: int = 50


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class SearchDialect:
    """How one backend writes a JSON value, its type and a text match."""

    name: str
    catalog: LiteralString  # the names of the search indexes there are
    # After creating an index: what gives the planner the new expression's statistics.
    analyze: LiteralString | None = None
    number_types: tuple[str, ...]
    string_type: str
    array_type: str

    def value(self, ref: JsonRef) -> str:
        raise NotImplementedError

    def type_of(self, ref: JsonRef) -> str:
        raise NotImplementedError

    def literal(self, value: Scalar) -> tuple[str, Any]:
        """A parameter compared with :meth:`value`: its placeholder and value."""
        raise NotImplementedError

    def scalar_type(self, value: Scalar) -> str:
        """The condition on :meth:`type_of` for a value of the type of ``value``."""
        raise NotImplementedError

    def equals(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        mark, param = self.literal(value)
        params.append(param)
        return f"{self.value(ref)} = {mark}"

    def range(self, ref: JsonRef, op: str, value: Scalar, params: list[Any]) -> str:
        mark, param = self.literal(value)
        params.append(param)
        return f"{self.value(ref)} {_RANGE[op]} {mark} AND {self.typed(ref, value)}"

    def one_of(self, ref: JsonRef, values: tuple[Scalar, ...], params: list[Any]) -> str:
        marks: list[str] = []
        for v in values:
            mark, param = self.literal(v)
            marks.append(mark)
            params.append(param)
        return f"{self.value(ref)} IN ({', '.join(marks)})"

    def array_contains(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        raise NotImplementedError

    def substring(self, ref: JsonRef, value: str, params: list[Any]) -> str:
        raise NotImplementedError

    def text_match(self, words: tuple[str, ...], params: list[Any]) -> str:
        raise NotImplementedError

    def index_hint(self, ref: JsonRef) -> str:
        """What makes the query use the index of ``ref`` (PostgreSQL's planner needs nothing)."""
        return ""

    def text_cte(self) -> str:
        """A ``WITH`` clause the text match needs (its parameter is the match's)."""
        return ""

    def sort_value(self, ref: JsonRef) -> tuple[str, str]:
        """The rank (numbers, strings, other values, missing) and the comparable value of a sort."""
        kind = self.type_of(ref)
        numbers = ", ".join(_quote(t) for t in self.number_types)
        rank = (
            f"CASE WHEN {kind} IN ({numbers}) THEN 0 WHEN {kind} = {_quote(self.string_type)} THEN 1"
            f" WHEN {kind} IS NULL THEN 3 ELSE 2 END"
        )
        both = ", ".join(_quote(t) for t in (*self.number_types, self.string_type))
        return rank, f"CASE WHEN {kind} IN ({both}) THEN {self.value(ref)} ELSE {self.null_value} END"

    null_value = "0"

    def typed(self, ref: JsonRef, value: Scalar) -> str:
        return f"{self.type_of(ref)} {self.scalar_type(value)}"


def _ambiguous(value: Scalar) -> bool:
    """Whether SQLite's ``json_extract`` can give ``value`` for a value of another JSON type:
    true and false read as 1 and 0, an object or an array as its JSON text."""
    if isinstance(value, str):
        return value.startswith(("[", "{"))
    return value in (0, 1)


class SQLiteSearch(SearchDialect):
    name = "sqlite"
    catalog: LiteralString = "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE %s ESCAPE '\\'"
    number_types = ("integer", "real")
    string_type = "text"
    array_type = "array"

    @staticmethod
    def path(ref: JsonRef) -> str:
        return _quote("$" + "".join(f"[{s}]" if isinstance(s, int) else f'."{s}"' for s in ref.segments))

    def value(self, ref: JsonRef) -> str:
        return f"json_extract({ref.column}, {self.path(ref)})"

    def type_of(self, ref: JsonRef) -> str:
        return f"json_type({ref.column}, {self.path(ref)})"

    def literal(self, value: Scalar) -> tuple[str, Any]:
        return "%s", value

    # json_extract gives true/false as 1/0 and an object as its text: the type decides, too.
    def equals(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        if value is None or isinstance(value, bool):
            return self.typed(ref, value)
        if not _ambiguous(value):  # the index alone answers it: no row read for the type
            return super().equals(ref, value, params)
        return f"{super().equals(ref, value, params)} AND {self.typed(ref, value)}"

    def range(self, ref: JsonRef, op: str, value: Scalar, params: list[Any]) -> str:
        params.append(value)
        test = f"{self.value(ref)} {_RANGE[op]} %s"
        if isinstance(value, str):
            return f"{test} AND {self.typed(ref, value)}"
        # Text sorts after every number: `< ''` keeps numbers only. Booleans read as 0 and 1.
        low, high = (value, None) if op in ("gt", "ge") else (None, value)
        booleans = (low is None or low < 1 or (op == "ge" and low <= 1)) and (
            high is None or high > 0 or (op == "le" and high >= 0)
        )
        bounded = f"{test} AND {self.value(ref)} < ''" if op in ("gt", "ge") else test
        return f"{bounded} AND {self.typed(ref, value)}" if booleans else bounded

    def one_of(self, ref: JsonRef, values: tuple[Scalar, ...], params: list[Any]) -> str:
        strings = tuple(v for v in values if isinstance(v, str))
        numbers = tuple(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))
        others = dict.fromkeys(v for v in values if v is None or isinstance(v, bool))
        alternatives: list[str] = []
        for same in (strings, numbers):
            if same:
                test = super().one_of(ref, same, params)
                guarded = any(_ambiguous(v) for v in same)
                alternatives.append(f"({test} AND {self.typed(ref, same[0])})" if guarded else f"({test})")
        alternatives += [self.typed(ref, v) for v in others]
        return "(" + " OR ".join(alternatives) + ")"

    def scalar_type(self, value: Scalar) -> str:
        if value is None:
            return "= 'null'"
        if isinstance(value, bool):
            return "= 'true'" if value else "= 'false'"
        if isinstance(value, str):
            return "= 'text'"
        return "IN ('integer', 'real')"

    def array_contains(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        if value is None or isinstance(value, bool):
            match = f"type {self.scalar_type(value)}"
        else:
            params.append(value)
            match = f"type {self.scalar_type(value)} AND value = %s"
        return f"EXISTS (SELECT 1 FROM json_each({ref.column}, {self.path(ref)}) WHERE {match})"

    def substring(self, ref: JsonRef, value: str, params: list[Any]) -> str:
        params.append(value)
        return f"instr({self.value(ref)}, %s) > 0"

    def index_hint(self, ref: JsonRef) -> str:
        # Ordered by name, the planner would rather walk the name index than sort what the
        # pointer's index finds (without statistics it cannot know how selective that is).
        return f" INDEXED BY {index_name(ref)}"

    def text_match(self, words: tuple[str, ...], params: list[Any]) -> str:
        params.append(" ".join('"' + w.replace('"', '""') + '"' for w in words))
        return "rowid IN (SELECT rowid FROM context_text WHERE context_text MATCH %s)"


class PostgresSearch(SearchDialect):
    name = "postgres"
    analyze: LiteralString | None = "ANALYZE contexts"
    catalog: LiteralString = (
        "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema() AND indexname LIKE %s"
    )
    number_types = ("number",)
    string_type = "string"
    array_type = "array"
    null_value = "'null'::jsonb"

    def value(self, ref: JsonRef) -> str:
        expr = f"search_jsonb({ref.column})"
        for s in ref.segments:
            # `-> n` on a scalar gives the scalar itself: an element of arrays only, as in SQLite.
            expr = (
                f"CASE WHEN jsonb_typeof({expr}) = 'array' THEN {expr} -> {s} END"
                if isinstance(s, int)
                else f"{expr} -> {_quote(s)}"
            )
        return f"({expr})"

    def type_of(self, ref: JsonRef) -> str:
        return f"jsonb_typeof({self.value(ref)})"

    def literal(self, value: Scalar) -> tuple[str, Any]:
        return "%s::jsonb", dumps(value)

    def scalar_type(self, value: Scalar) -> str:
        if value is None:
            return "= 'null'"
        if isinstance(value, bool):
            return "= 'boolean'"
        if isinstance(value, str):
            return "= 'string'"
        return "= 'number'"

    def array_contains(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        params.append(dumps([value]))
        return f"{self.value(ref)} @> %s::jsonb{self._containment(ref, [value], params)}"

    def equals(self, ref: JsonRef, value: Scalar, params: list[Any]) -> str:
        return super().equals(ref, value, params) + self._containment(ref, value, params)

    @staticmethod
    def _containment(ref: JsonRef, value: Any, params: list[Any]) -> str:
        """The same test as a containment of the data, which the GIN index of the data answers
        (object keys only: containment cannot address an array element)."""
        if ref.column != "state" or len(ref.segments) < 2 or ref.segments[0] != "data":
            return ""
        if any(isinstance(s, int) for s in ref.segments):
            return ""
        for segment in reversed(ref.segments[1:]):
            value = {segment: value}
        params.append(dumps(value))
        return " AND (search_jsonb(state) -> 'data') @> %s::jsonb"

    def substring(self, ref: JsonRef, value: str, params: list[Any]) -> str:
        params.append(value)
        return f"strpos({self.value(ref)} #>> '{{}}', %s) > 0"

    def text_match(self, words: tuple[str, ...], params: list[Any]) -> str:
        # The words' contexts first, by the GIN index (materialised: otherwise the planner may
        # walk the name index for the order and compute every state's tsvector on the way).
        params.append(" ".join(words))
        return "id IN (SELECT id FROM text_hits)"

    def text_cte(self) -> str:
        return (
            "WITH text_hits AS MATERIALIZED (SELECT id FROM contexts WHERE deleted_at IS NULL"
            f" AND {TSVECTOR} @@ plainto_tsquery('simple', %s)) "
        )


# The text a context's data is searched by on PostgreSQL: its string values (the expression of
# the GIN index of migration 9; SQLite keeps an FTS5 table in step by triggers instead).
TSVECTOR: Final = "jsonb_to_tsvector('simple'::regconfig, (search_jsonb(state) -> 'data'), '[\"string\"]'::jsonb)"

SQLITE_SEARCH: Final = SQLiteSearch()
POSTGRES_SEARCH: Final = PostgresSearch()


def _condition(d: SearchDialect, c: Condition, params: list[Any]) -> str:
    kind = d.type_of(c.ref)
    if c.op == "exists":
        return f"{kind} IS {'NOT ' if c.value else ''}NULL"
    if c.op in ("eq", "ne"):
        test = d.equals(c.ref, c.value, params)
        return f"({test})" if c.op == "eq" else f"({test}) IS NOT TRUE"
    if c.op in _RANGE:
        return f"({d.range(c.ref, c.op, c.value, params)})"
    if c.op == "in":
        return d.one_of(c.ref, c.value, params)
    if c.op == "contains":
        inside = f"({kind} = {_quote(d.array_type)} AND {d.array_contains(c.ref, c.value, params)})"
        if isinstance(c.value, str):
            inside = f"({inside} OR ({kind} = {_quote(d.string_type)} AND {d.substring(c.ref, c.value, params)}))"
        return inside
    raise ValueError(f"op: unknown operator {c.op!r}")  # the service checked it


def sort_key(d: SearchDialect, sort: Literal["name", "updated_at"] | JsonRef) -> list[str]:
    """The columns a result is ordered (and paged) by, ending with the name."""
    if sort == "name":
        return ["name"]
    if sort == "updated_at":
        return ["updated_at", "name"]
    rank, value = d.sort_value(sort)
    return [rank, value, "name"]


def _uses_index(c: Condition) -> bool:
    """Whether ``c`` is an equality, list or range the index of its pointer answers alone."""
    if c.op in _RANGE:
        return True
    if c.op == "eq":
        return isinstance(c.value, str | int | float) and not isinstance(c.value, bool)
    if c.op == "in":
        values: tuple[Scalar, ...] = c.value
        return all(isinstance(v, str) for v in values) or all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        )
    return False


def build(
    d: SearchDialect, q: SearchQuery, columns: str, indexed: frozenset[str] = frozenset()
) -> tuple[LiteralString, list[Any]]:
    """The ``SELECT`` of ``columns`` (then the sort key's values) answering ``q``; a condition on
    a pointer whose index is among ``indexed`` (names) is answered by that index."""
    params: list[Any] = [q.namespace]
    where = ["namespace = %s", "deleted_at IS NULL"]
    if q.prefixes != ("",):
        # Names are ASCII and sort bytewise: a prefix is a range; `~` sorts after every name character.
        where.append("(" + " OR ".join("(name >= %s AND name < %s)" for _ in q.prefixes) + ")")
        for prefix in q.prefixes:
            params += [prefix, prefix + "~"]
    if q.updated_after is not None:
        where.append("updated_at > %s")
        params.append(q.updated_after)
    if q.updated_before is not None:
        where.append("updated_at < %s")
        params.append(q.updated_before)
    for condition in q.conditions:
        where.append(_condition(d, condition, params))
    cte = ""
    if q.words:
        text_params: list[Any] = []
        where.append(d.text_match(q.words, text_params))
        cte = d.text_cte()
        params = text_params + params if cte else params + text_params
    key = sort_key(d, q.sort)
    extra = ", ".join(key[:-1])
    if q.after is not None:
        marks = ["%s"] * len(key)
        if isinstance(q.sort, JsonRef):
            marks[1] = d.literal(None)[0]
        where.append(f"({', '.join(key)}) {'<' if q.descending else '>'} ({', '.join(marks)})")
        after = list(q.after)
        if isinstance(q.sort, JsonRef) and d is POSTGRES_SEARCH:
            after[1] = dumps(after[1])
        params += after
    direction = " DESC" if q.descending else ""
    hint = next((d.index_hint(c.ref) for c in q.conditions if index_name(c.ref) in indexed and _uses_index(c)), "")
    sql = (
        f"{cte}SELECT {columns}{', ' + extra if extra else ''} FROM contexts{hint} WHERE {' AND '.join(where)}"
        f" ORDER BY {', '.join(k + direction for k in key)} LIMIT %s"
    )
    params.append(q.limit)
    # Every literal in it is a pointer segment passed through check_segment and quoted by _quote.
    return cast(LiteralString, sql), params


_INDEX_LIKE: Final = "contexts\\_search\\_%"


def index_name(ref: JsonRef) -> str:
    digest = hashlib.sha256(dumps([ref.column, list(ref.segments)]).encode()).hexdigest()[:16]
    return f"contexts_search_{digest}"


def index_statement(d: SearchDialect, ref: JsonRef) -> LiteralString:
    """The index an equality or a range on ``ref`` uses (live contexts, by namespace; with the
    name, so the rows found are ordered by name without reading them)."""
    sql = (
        f"CREATE INDEX IF NOT EXISTS {index_name(ref)} ON contexts (namespace, ({d.value(ref)}), name)"
        " WHERE deleted_at IS NULL"
    )
    return cast(LiteralString, sql)


ROOTS: Final = ("data", "metadata", "context_metadata")
"""Where a search pointer may start: the state's data or metadata, or the context's metadata."""


def parse_ref(pointer: str, field: str) -> JsonRef:
    """A search pointer (``/data/…``, ``/metadata/…``, ``/context_metadata/…``) as a :class:`JsonRef`."""
    if not pointer.startswith("/"):
        raise _invalid(field, f"must be a JSON Pointer starting with '/' (RFC 6901); got {pointer[:80]!r}")
    if len(pointer) > MAX_POINTER_CHARS:
        raise _invalid(field, f"at most {MAX_POINTER_CHARS} characters; got {len(pointer)}")
    parts = pointer_tokens(pointer)
    if parts[0] not in ROOTS:
        raise _invalid(field, f"must start with /data, /metadata or /context_metadata; got {pointer[:80]!r}")
    if len(parts) > 32:
        raise _invalid(field, f"at most 32 segments; got {len(parts)}")
    segments: list[str | int] = []
    for part in parts[1:] if parts[0] == "context_metadata" else parts:
        problem = check_segment(part)
        if problem is not None:
            raise _invalid(field, problem)
        # A segment of digits addresses an array element (on both backends alike).
        segments.append(int(part) if part.isdigit() and len(part) < 10 else part)
    if parts[0] == "context_metadata":
        return JsonRef("metadata", tuple(segments))
    return JsonRef("state", tuple(segments))


def pointer_of(ref: JsonRef) -> str:
    """The search pointer of ``ref`` (for messages)."""
    head = "/context_metadata" if ref.column == "metadata" else ""
    return head + "".join("/" + str(s).replace("~", "~0").replace("/", "~1") for s in ref.segments)


def _invalid(field: str, rule: str) -> StateValidationError:
    return StateValidationError([ValidationIssue("", rule)], field=field)


def _sealed(what: str) -> SealedSearchError:
    return SealedSearchError(
        f"{what}: encryption at rest is on, so state is sealed and cannot be searched (that would need its "
        "plaintext in a query or an index); searchable: name prefix, updated_after/updated_before, sort by "
        "name or updated_at, and conditions on /context_metadata (stored in plaintext)"
    )


def budget_exceeded(budget_ms: int) -> BudgetError:
    return BudgetError(
        f"search: the query ran past its budget of {budget_ms} ms (search_budget_ms) and was stopped; narrow it "
        "with a name prefix, a condition on an indexed pointer or updated_after, or ask for fewer results"
    )


class Searching(StoreAdapter):
    """``find`` and the search indexes, over the backend's :class:`SearchDialect`."""

    SEARCH: SearchDialect = SQLITE_SEARCH
    search_budget_ms: int = 2000
    search_indexes: tuple[JsonRef, ...] = ()  # configured (the search_indexes setting)
    _indexed: frozenset[str] = frozenset()  # names of the search indexes known to exist

    async def _bounded_read(self, work: Callable[[Tx], Awaitable[_T]], budget_ms: int) -> _T:
        """Run a read that stops with :class:`BudgetError` past ``budget_ms``."""
        raise NotImplementedError

    def _check_sealing(self, query: SearchQuery) -> None:
        if not self.codec.configured:
            return
        for condition in query.conditions:
            if condition.ref.column == "state":
                raise _sealed(pointer_of(condition.ref))
        if query.words:
            raise _sealed("text")
        if isinstance(query.sort, JsonRef) and query.sort.column == "state":
            raise _sealed(f"sort {pointer_of(query.sort)}")

    async def find(self, query: SearchQuery) -> list[tuple[StoredContext, tuple[Any, ...]]]:
        """Live contexts matching ``query`` in its order, each with its sort key (the cursor)."""
        self._check_sealing(query)
        if not query.prefixes:
            return []
        sql, params = build(self.SEARCH, query, self._context_select, self._indexed)
        rows = await self._bounded_read(lambda tx: tx.fetchall(sql, params), self.search_budget_ms)
        size = sum(len(r[9] if r[9] is not None else r[13]) for r in rows)
        contexts = await self._compute(size, lambda: [self._open_context(r[:14]) for r in rows])
        found: list[tuple[StoredContext, tuple[Any, ...]]] = []
        for row, context in zip(rows, contexts, strict=True):
            if query.sort == "name":
                key: tuple[Any, ...] = (context.name,)
            elif query.sort == "updated_at":
                key = (context.updated_at, context.name)
            else:
                key = (row[14], row[15], context.name)
            found.append((context, key))
        return found

    async def ensure_search_indexes(self, refs: tuple[JsonRef, ...] = ()) -> None:
        """Create the index of each pointer, and of the configured ``search_indexes``, if missing:
        equalities and ranges on an indexed pointer use it."""
        if not refs:  # at start: the indexes there are (created by any instance, any definition)
            rows = await self._transaction(lambda tx: tx.fetchall(self.SEARCH.catalog, (_INDEX_LIKE,)), writing=False)
            self._indexed = frozenset(str(r[0]) for r in rows)
        wanted = [r for r in dict.fromkeys((*self.search_indexes, *refs)) if index_name(r) not in self._indexed]
        for ref in wanted:  # all checked before any is created
            if ref.column == "state" and self.codec.configured:
                raise _sealed(f"search_indexes {pointer_of(ref)}")
        if len(self._indexed) + len(wanted) > MAX_SEARCH_INDEXES:
            # Every index slows every write: a definition may not add them without bound.
            raise LimitExceededError(
                f"search_indexes: a database holds at most {MAX_SEARCH_INDEXES} search indexes; "
                f"{len(self._indexed)} exist and {len(wanted)} more were asked for"
            )
        for ref in wanted:
            await self._transaction(lambda tx, ref=ref: tx.execute(index_statement(self.SEARCH, ref)), writing=True)
            self._indexed = self._indexed | {index_name(ref)}
        analyze = self.SEARCH.analyze
        if wanted and analyze is not None:
            # Without statistics of the new expression the planner would rather walk the name
            # index (for the order) than look values up in the new one.
            await self._transaction(lambda tx: tx.execute(analyze), writing=True)
