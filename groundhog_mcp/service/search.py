"""``find_contexts``: search the contexts a principal may read, page by page.

The request is checked here (pointers, operators, values, bounds), turned into a
:class:`~groundhog_mcp.store.search.SearchQuery` whose name ranges are the caller's readable
prefixes (so the database never hands over, counts or orders a context the caller may not read),
and answered one keyset page at a time: the cursor is the sort key of the last result, so a page
neither skips nor repeats a context while others are written (a context whose sort key changes
between pages is found where its new key puts it).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import JSONObject, format_timestamp, parse_stored_timestamp
from groundhog_mcp.service.access import check_prefix, visible_prefixes
from groundhog_mcp.service.reading import project
from groundhog_mcp.store.search import MAX_IN_VALUES, OPERATORS, Condition, JsonRef, SearchQuery, parse_ref

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = ["MAX_CONDITIONS", "MAX_DECLARED_INDEXES", "FindPage", "Found", "declared_indexes", "find_contexts"]

MAX_CONDITIONS = 16
MAX_DECLARED_INDEXES = 8
MAX_WORDS = 16
MAX_VALUE_CHARS = 1000
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Found:
    """One context found: name, revision, update time and, with ``fields``, a sparse copy of its
    state (and the pointers it does not have)."""

    name: str
    revision: int
    updated_at: datetime
    fields: JSONObject | None = None
    missing: list[str] | None = None


@dataclass(frozen=True)
class FindPage:
    contexts: list[Found]
    next_cursor: str | None


def _invalid(field: str, rule: str) -> StateValidationError:
    return StateValidationError([ValidationIssue("", rule)], field=field)


def _scalar(value: Any, field: str) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise _invalid(field, "integers must fit in 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _invalid(field, "numbers must be finite")
        return value
    if isinstance(value, str):
        if len(value) > MAX_VALUE_CHARS:
            raise _invalid(field, f"at most {MAX_VALUE_CHARS} characters; got {len(value)}")
        return value
    raise _invalid(field, "must be a string, number, boolean or null")


def _condition(raw: Mapping[str, Any], field: str) -> Condition:
    unknown = sorted(set(raw) - {"path", "op", "value"})
    if unknown:
        raise _invalid(field, f"unknown key {unknown[0][:40]!r}; a condition is {{path, op, value}}")
    path, op = raw.get("path"), raw.get("op", "eq")
    if not isinstance(path, str):
        raise _invalid(f"{field}.path", "must be a JSON Pointer string such as /data/status")
    if op not in OPERATORS:
        raise _invalid(f"{field}.op", f"must be one of {', '.join(OPERATORS)}; got {str(op)[:40]!r}")
    ref = parse_ref(path, f"{field}.path")
    value = raw.get("value")
    where = f"{field}.value"
    if op == "exists":
        if value is None:
            value = True
        if not isinstance(value, bool):
            raise _invalid(where, "exists takes true (the path exists) or false (it does not)")
    elif op == "in":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_IN_VALUES:  # pyright: ignore[reportUnknownArgumentType]
            raise _invalid(where, f"in takes a list of 1 to {MAX_IN_VALUES} values")
        value = tuple(_scalar(v, f"{where}[{i}]") for i, v in enumerate(value))  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
    elif op in ("lt", "le", "gt", "ge"):
        value = _scalar(value, where)
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise _invalid(where, f"{op} compares numbers or strings")
    else:
        if "value" not in raw:
            raise _invalid(where, f"{op} needs a value")
        value = _scalar(value, where)
    return Condition(ref, op, value)


def _words(text: str) -> tuple[str, ...]:
    if len(text) > MAX_VALUE_CHARS:
        raise _invalid("text", f"at most {MAX_VALUE_CHARS} characters; got {len(text)}")
    words = tuple(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    if not words:
        raise _invalid("text", "needs at least one word (letters or digits)")
    if len(words) > MAX_WORDS:
        raise _invalid("text", f"at most {MAX_WORDS} words; got {len(words)}")
    return words


def _encode_cursor(sort: str, order: str, key: tuple[Any, ...]) -> str:
    values = [format_timestamp(v) if isinstance(v, datetime) else v for v in key]
    text = json.dumps({"s": sort, "o": order, "k": values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, sort: str, order: str) -> tuple[Any, ...]:
    wrong = _invalid("cursor", "not a cursor this server issued; pass next_cursor from a previous page")
    if len(cursor) > 4000:
        raise wrong
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise wrong from None
    if not isinstance(raw, dict) or not isinstance(raw.get("k"), list):
        raise wrong
    if raw.get("s") != sort or raw.get("o") != order:  # pyright: ignore[reportUnknownMemberType]
        raise _invalid("cursor", "was issued for another sort or order; pass the same sort and order on every page")
    key: list[Any] = list(raw["k"])  # pyright: ignore[reportUnknownArgumentType]
    expected = 1 if sort == "name" else 2 if sort == "updated_at" else 3
    if len(key) != expected or not isinstance(key[-1], str):
        raise wrong
    if sort == "updated_at":
        try:
            key[0] = parse_stored_timestamp(key[0])
        except ValueError:
            raise wrong from None
    return tuple(key)


async def find_contexts(
    manager: StateManager,
    *,
    prefix: str = "",
    where: Sequence[Mapping[str, Any]] = (),
    text: str | None = None,
    updated_after: datetime | None = None,
    updated_before: datetime | None = None,
    sort: str = "name",
    order: Literal["asc", "desc"] = "asc",
    fields: Sequence[str] | None = None,
    cursor: str | None = None,
    limit: int = 20,
) -> FindPage:
    """Readable live contexts matching every condition, a page at a time (see docs/search.md)."""
    if prefix:
        check_prefix(prefix)
    if not 1 <= limit <= manager.limits.max_page:
        raise _invalid("limit", f"must be between 1 and {manager.limits.max_page}; got {limit}")
    if len(where) > MAX_CONDITIONS:
        raise _invalid("where", f"at most {MAX_CONDITIONS} conditions; got {len(where)}")
    conditions = tuple(_condition(c, f"where[{i}]") for i, c in enumerate(where))
    sort_by: Literal["name", "updated_at"] | JsonRef
    if sort in ("name", "updated_at"):
        sort_by = "name" if sort == "name" else "updated_at"
    else:
        sort_by = parse_ref(sort, "sort")
    if order not in ("asc", "desc"):
        raise _invalid("order", f"must be asc or desc; got {str(order)[:20]!r}")
    if fields is not None:
        project({}, fields)  # checks the pointers before any work
    query = SearchQuery(
        namespace=manager.principal.namespace,
        prefixes=visible_prefixes(manager.principal, prefix),
        conditions=conditions,
        words=_words(text) if text is not None else (),
        updated_after=updated_after,
        updated_before=updated_before,
        sort=sort_by,
        descending=order == "desc",
        after=_decode_cursor(cursor, sort, order) if cursor else None,
        limit=limit + 1,
    )
    rows = await manager.store.find(query)
    page = rows[:limit]
    found: list[Found] = []
    for context, _ in page:
        if fields is None:
            found.append(Found(context.name, context.revision, context.updated_at))
            continue
        state = manager.reader.upcast(context, context.state)
        copy, missing = project(state.to_json(), fields)
        found.append(Found(context.name, context.revision, context.updated_at, copy, missing))
    next_cursor = _encode_cursor(sort, order, page[-1][1]) if len(rows) > limit else None
    return FindPage(found, next_cursor)


def declared_indexes(settings: JSONObject) -> tuple[JsonRef, ...]:
    """The pointers a context definition asks to index: ``settings.search_indexes``."""
    declared = settings.get("search_indexes")
    if declared is None:
        return ()
    field = "settings.search_indexes"
    if not isinstance(declared, list) or len(declared) > MAX_DECLARED_INDEXES:  # pyright: ignore[reportUnknownArgumentType]
        raise _invalid(field, f"must be a list of at most {MAX_DECLARED_INDEXES} JSON Pointers")
    refs: list[JsonRef] = []
    for i, pointer in enumerate(declared):  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        if not isinstance(pointer, str):
            raise _invalid(f"{field}[{i}]", "must be a JSON Pointer string such as /data/status")
        refs.append(parse_ref(pointer, f"{field}[{i}]"))
    return tuple(refs)
