"""Merging context states: ``ordered``, ``three_way`` and ``reducers``.

Pure functions over :class:`~groundhog_mcp.models.ContextState` values, no I/O: the state
manager turns "context at revision" into states, calls :func:`compute_merge` and writes the
result. ``data`` and ``metadata`` are merged the same way; the merged ``timestamp`` is the time
of the merge and its ``version`` the highest state format version among the inputs (semver).

Every path here is a JSON Pointer into the state document: ``/data/...`` or ``/metadata/...``.

``ordered``
    An RFC 7396 fold in the given order: the first input's data as it is, then every later
    input applied to it as a merge patch (objects merge key by key, ``null`` deletes, anything
    else replaces). Later wins. Provenance tells, for each top-level key more than one input
    set, which input's value the result holds.
``three_way``
    Needs a base. A change one side made relative to the base is taken; changes both sides made
    merge when they touch different keys; otherwise the path is a conflict, reported as
    ``{path, kind, base, ours, theirs}`` with kind ``both_modified``, ``modify_delete``,
    ``add_add`` or ``type_mismatch``, and resolved by ``on_conflict`` (``fail`` raises
    :class:`~groundhog_mcp.errors.MergeConflictError`, ``ours``/``theirs`` pick a side). Arrays
    are values unless a reducer says otherwise. With more than two inputs the merge folds
    pairwise against the same base: ``((in0 ⊕ in1) ⊕ in2) ⊕ …``, where ``ours`` is the merge so
    far and ``theirs`` the next input.
``reducers``
    Objects merge key by key; a path with a reducer combines the values of every input that has
    it; any other value is taken from the last input that has it (``null`` is a value here, not
    a deletion). The result does not depend on how the inputs are batched:
    ``merge(merge(a, b), c) == merge(a, merge(b, c)) == merge(a, b, c)`` — exactly for integers,
    up to floating-point rounding for float sums. A path that is an object in one input and not
    in another cannot be merged that way; it is a ``type_mismatch`` conflict (give it the
    ``last`` reducer to take the last input's value whole).

Reducers (``{"/data/tags": "union"}``) apply to all three strategies: ``append`` concatenates
arrays, ``union`` concatenates without duplicates (first occurrence kept), ``sum``, ``max``,
``min`` combine numbers (``max``/``min`` also strings), ``last`` takes the last value whole.
In ``three_way`` they combine the two sides' changes relative to the base, also when both sides
made the same change: ``sum`` adds both deltas (two increments of 1 add 2), ``append`` appends
both sides' new items after the base's, ``union`` keeps items either side added and drops items
either side removed, ``max``/``min`` compare, ``last`` takes theirs.

Unchanged subtrees of the result are shared with the inputs, never copied: states are values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from groundhog_mcp.errors import (
    MergeConflict,
    MergeConflictError,
    StateUpdateError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import (
    ContextState,
    JSONObject,
    is_semver,
    parse_timestamp,
    pointer_token,
    pointer_tokens,
    utcnow,
)
from groundhog_mcp.service.validation import check_name

if TYPE_CHECKING:
    from groundhog_mcp.service.state import WriteResult

__all__ = [
    "MAX_MERGE_INPUTS",
    "MAX_REDUCERS",
    "ConflictKind",
    "ContextRef",
    "MergeConflict",
    "MergeConflictError",
    "MergeOutcome",
    "MergeResult",
    "MergeSource",
    "OnConflict",
    "Provenance",
    "Reducer",
    "SourceInfo",
    "Strategy",
    "check_merge_arguments",
    "compute_merge",
    "parse_source",
    "semver_key",
]

Strategy = Literal["ordered", "three_way", "reducers"]
Reducer = Literal["append", "union", "sum", "max", "min", "last"]
OnConflict = Literal["fail", "ours", "theirs"]
ConflictKind = Literal["both_modified", "modify_delete", "add_add", "type_mismatch"]

STRATEGIES: Final[tuple[str, ...]] = get_args(Strategy)
REDUCERS: Final[tuple[str, ...]] = get_args(Reducer)
ON_CONFLICT: Final[tuple[str, ...]] = get_args(OnConflict)
MAX_MERGE_INPUTS = 16
MAX_REDUCERS = 100
_MAX_POINTER_CHARS = 1024
_BAD_ESCAPE = re.compile(r"~(?![01])")
_SECTIONS = ("data", "metadata")
_STATE_KEYS = frozenset({"data", "metadata", "version", "timestamp"})


class _Absent:
    """A path that does not exist (distinct from a JSON ``null``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<absent>"


_ABSENT: Final = _Absent()


# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    """Who won a top-level path that more than one input changed.

    ``inputs`` are the indexes of the inputs that set the path (``three_way``: that changed it
    relative to the base); ``winner`` is the last of them whose value the result holds, or
    ``None`` when the result combines several (objects merged key by key, a reducer).
    """

    path: str
    inputs: tuple[int, ...]
    winner: int | None


@dataclass(frozen=True)
class MergeResult:
    """A computed merge: the merged state, the conflicts resolved by ``on_conflict``, provenance."""

    state: ContextState
    conflicts: list[MergeConflict]
    provenance: list[Provenance]
    strategy: Strategy


@dataclass(frozen=True)
class ContextRef:
    """An input given by name: the state of ``context`` at ``revision`` (the current one when None)."""

    context: str
    revision: int | None = None


MergeSource = ContextRef | ContextState
"""What an input or a base is: a context at a revision, or an inline state."""


@dataclass(frozen=True)
class SourceInfo:
    """What an input or the base turned out to be: a context at a revision, or inline (both None)."""

    context: str | None = None
    revision: int | None = None


@dataclass(frozen=True)
class MergeOutcome:
    """What :meth:`StateManager.merge <groundhog_mcp.service.state.StateManager.merge>` did.

    ``state`` is ``None`` only for a dry run that found conflicts while ``on_conflict`` is
    ``'fail'``: the conflicts are listed instead of raised. ``write`` is the committed revision
    when a ``target`` was given and it was not a dry run.
    """

    state: ContextState | None
    conflicts: list[MergeConflict]
    provenance: list[Provenance]
    strategy: Strategy
    inputs: list[SourceInfo]
    base: SourceInfo | None
    write: WriteResult | None = None
    dry_run: bool = False


# -- arguments -------------------------------------------------------------------------------


def _invalid(field: str, message: str) -> StateValidationError:
    return StateValidationError([ValidationIssue("", message)], field=field)


def _shown(value: Any) -> str:
    if value is _ABSENT:
        return "nothing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 40 else "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class _Reducers:
    at: dict[str, Reducer]
    # Every pointer that has a reducer strictly below it ("/data", "/data/a" for "/data/a/b").
    above: frozenset[str]

    @classmethod
    def of(cls, at: dict[str, Reducer]) -> _Reducers:
        above: set[str] = set()
        for pointer in at:
            parts = pointer.split("/")
            above.update("/".join(parts[:end]) for end in range(2, len(parts)))
        return cls(at, frozenset(above))


_NO_REDUCERS = _Reducers({}, frozenset())


def check_merge_arguments(
    *,
    count: int,
    strategy: str,
    on_conflict: str,
    reducers: Mapping[str, str] | None,
    base_given: bool = False,
    field: str = "inputs",
) -> _Reducers:
    """Validate what a merge was asked to do before anything is read; return the reducers."""
    if count < 2:
        raise _invalid(field, f"a merge needs at least 2 inputs, got {count}")
    if count > MAX_MERGE_INPUTS:
        raise _invalid(field, f"a merge takes at most {MAX_MERGE_INPUTS} inputs, got {count}")
    if strategy not in STRATEGIES:
        raise _invalid("strategy", f"must be one of {', '.join(STRATEGIES)}; got {_shown(strategy)}")
    if on_conflict not in ON_CONFLICT:
        raise _invalid("on_conflict", f"must be one of {', '.join(ON_CONFLICT)}; got {_shown(on_conflict)}")
    if base_given and strategy != "three_way":
        raise _invalid("base", f"only strategy three_way uses a base; got strategy {strategy!r}")
    return _check_reducers(reducers)


def _check_reducers(reducers: Mapping[str, str] | None) -> _Reducers:
    if not reducers:
        return _NO_REDUCERS
    if not isinstance(reducers, Mapping):  # pyright: ignore[reportUnnecessaryIsInstance]
        raise _invalid("reducers", f"must be an object mapping JSON Pointers to reducers; got {_shown(reducers)}")
    if len(reducers) > MAX_REDUCERS:
        raise _invalid("reducers", f"at most {MAX_REDUCERS} reducers, got {len(reducers)}")
    checked: dict[str, Reducer] = {}
    for pointer, reducer in reducers.items():
        shown = pointer[:80] if isinstance(pointer, str) else repr(pointer)  # pyright: ignore[reportUnnecessaryIsInstance]
        where = f"reducers.{shown}"
        if (
            not isinstance(pointer, str)  # pyright: ignore[reportUnnecessaryIsInstance]
            or not pointer.startswith(("/data/", "/metadata/"))
            or len(pointer) > _MAX_POINTER_CHARS
        ):
            raise _invalid(
                where,
                "must be a JSON Pointer into the state document, /data/... or /metadata/... "
                f"(e.g. /data/tags), at most {_MAX_POINTER_CHARS} characters",
            )
        if _BAD_ESCAPE.search(pointer) or pointer.endswith("~"):
            raise _invalid(where, "'~' must be followed by 0 or 1 in a JSON Pointer (RFC 6901: ~0 is ~, ~1 is /)")
        if reducer not in REDUCERS:
            raise _invalid(where, f"must be one of {', '.join(REDUCERS)}; got {_shown(reducer)}")
        checked[pointer] = reducer  # type: ignore[assignment]  # checked just above
    for pointer in checked:
        for outer in checked:
            if pointer.startswith(outer + "/"):
                raise _invalid(
                    f"reducers.{pointer[:80]}", f"is inside {outer[:80]}, which has its own reducer; keep one"
                )
    return _Reducers.of(checked)


def parse_source(value: object, field: str) -> MergeSource:
    """An input or a base as given: ``{"context", "revision"?}``, ``{"state": {...}}``, a state
    object ``{"data", "metadata"?, "version"?, "timestamp"?}``, a :class:`ContextRef` or a
    :class:`ContextState`."""
    if isinstance(value, ContextState | ContextRef):
        return value
    if not isinstance(value, Mapping):
        raise _invalid(
            field,
            "must be {context, revision?} or an inline state {data, metadata?, version?}; got " + _shown(value),
        )
    given: Mapping[str, Any] = value  # type: ignore[assignment]
    if "context" in given:
        extra = sorted(str(k) for k in given if k not in ("context", "revision"))
        if extra:
            raise _invalid(field, f"a context input takes context and revision only; got also {', '.join(extra)}")
        name = given["context"]
        check_name(name, field=f"{field}.context")
        revision = given.get("revision")
        if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int) or revision < 1):
            raise _invalid(f"{field}.revision", f"must be a revision number ≥ 1 or null; got {_shown(revision)}")
        return ContextRef(name, revision)
    if "state" in given:
        if len(given) != 1:
            extra = sorted(str(k) for k in given if k != "state")
            raise _invalid(field, f"an inline input takes state only; got also {', '.join(extra)}")
        return _parse_state(given["state"], f"{field}.state")
    if "data" in given:
        return _parse_state(given, field)
    raise _invalid(field, "must have context (a context at a revision) or state (an inline state)")


def _parse_state(value: object, field: str) -> ContextState:
    if not isinstance(value, Mapping):
        raise _invalid(field, f"must be a state object {{data, metadata?, version?}}; got {_shown(value)}")
    state: Mapping[str, Any] = value  # type: ignore[assignment]
    extra = sorted(str(k) for k in state if k not in _STATE_KEYS)
    if extra:
        raise _invalid(field, f"a state has data, metadata, version and timestamp only; got also {', '.join(extra)}")
    data = state.get("data")
    metadata = state.get("metadata", {})
    version = state.get("version", "1.0.0")
    timestamp = state.get("timestamp")
    if not isinstance(data, dict):
        raise _invalid(f"{field}.data", f"must be an object; got {_shown(data)}")
    if not isinstance(metadata, dict):
        raise _invalid(f"{field}.metadata", f"must be an object; got {_shown(metadata)}")
    if not isinstance(version, str) or not is_semver(version):
        raise _invalid(f"{field}.version", f"must be a semantic version like 1.0.0; got {_shown(version)}")
    if timestamp is None:
        return ContextState(data=data, metadata=metadata, version=version)  # type: ignore[arg-type]
    try:
        when = parse_timestamp(timestamp) if isinstance(timestamp, str) else None
    except ValueError:
        when = None
    if when is None:
        raise _invalid(f"{field}.timestamp", f"must be an RFC 3339 time with a zone; got {_shown(timestamp)}")
    return ContextState(data=data, metadata=metadata, timestamp=when, version=version)  # type: ignore[arg-type]


def semver_key(version: str) -> tuple[int, int, int, tuple[tuple[int, int, str], ...]]:
    """A sort key with semver 2.0.0 precedence (pre-releases before their release; build ignored)."""
    core, _, pre = version.split("+", 1)[0].partition("-")
    major, minor, patch = (int(p) for p in core.split("."))
    if not pre:
        return major, minor, patch, ((2, 0, ""),)
    identifiers = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return major, minor, patch, identifiers


# -- equality --------------------------------------------------------------------------------


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _with_article(kind: str) -> str:
    # The kind of a state value, never the value itself: error messages do not quote state data.
    return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"


def _same(a: Any, b: Any) -> bool:
    """JSON equality: like ``==`` but ``true`` is not ``1`` (``1`` and ``1.0`` are one number)."""
    return a is b or (a == b and _booleans_match(a, b))


def _booleans_match(a: Any, b: Any) -> bool:
    """For values equal by ``==``: is every boolean in one a boolean in the other too?"""
    if a is b:
        return True
    if isinstance(a, dict):
        return all(_booleans_match(value, b[key]) for key, value in a.items())  # type: ignore[index]
    if isinstance(a, list):
        return all(map(_booleans_match, a, b))  # type: ignore[arg-type]
    return isinstance(a, bool) == isinstance(b, bool)


def _canonical(value: Any) -> str:
    """A hashable identity for a JSON value: ``union`` compares items by it."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# -- reducers --------------------------------------------------------------------------------

_NEEDS = {"append": "arrays", "union": "arrays", "sum": "numbers", "max": "numbers or strings"}
_NEEDS["min"] = _NEEDS["max"]


def _fits(reducer: Reducer, value: Any) -> bool:
    if reducer in ("append", "union"):
        return isinstance(value, list)
    if reducer == "sum":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if reducer in ("max", "min"):
        return isinstance(value, str) or (isinstance(value, int | float) and not isinstance(value, bool))
    return True


def _at_pointer(document: JSONObject, pointer: str) -> Any:
    """The value at ``pointer`` walking objects only (arrays are values to a merge), or absent."""
    node: Any = document
    for key in pointer_tokens(pointer):
        if not isinstance(node, dict):
            return _ABSENT
        node = node.get(key, _ABSENT)  # type: ignore[union-attr]
        if node is _ABSENT:
            return _ABSENT
    return node


def _check_reducer_values(
    reducers: _Reducers, labelled: Sequence[tuple[str, ContextState]], *, null_deletes: bool
) -> None:
    """Every value a reducer will see must suit it; say which input does not."""
    for pointer, reducer in reducers.at.items():
        if reducer == "last":
            continue
        kinds: dict[str, str] = {}
        for label, state in labelled:
            value = _at_pointer({"data": state.data, "metadata": state.metadata}, pointer)
            if value is _ABSENT or (null_deletes and value is None):
                continue
            if not _fits(reducer, value):
                raise StateUpdateError(
                    f"reducers.{pointer}: {reducer} needs {_NEEDS[reducer]}, got "
                    f"{_with_article(_kind(value))} in {label}; nothing was merged"
                )
            kinds.setdefault(_kind(value), label)
        if len(kinds) > 1:
            (first_kind, first), (other_kind, other) = list(kinds.items())[:2]
            raise StateUpdateError(
                f"reducers.{pointer}: {reducer} compares values of one kind, got a {first_kind} in {first} "
                f"and a {other_kind} in {other}; nothing was merged"
            )


def _combine(reducer: Reducer, acc: Any, value: Any) -> Any:
    """Two-way, associative: ``acc`` (absent or ``None`` = nothing yet) combined with ``value``."""
    if acc is _ABSENT or acc is None:
        return _unique(value) if reducer == "union" else value
    if reducer == "append":
        return [*acc, *value]
    if reducer == "union":
        return _unique([*acc, *value])
    if reducer == "sum":
        return acc + value
    if reducer == "max":
        return value if value > acc else acc
    if reducer == "min":
        return value if value < acc else acc
    return value


def _unique(items: list[Any], drop: frozenset[str] = frozenset()) -> list[Any]:
    seen = set(drop)
    out: list[Any] = []
    for item in items:
        key = _canonical(item)
        if key not in seen:
            seen.add(key)
            out.append(item)
    return out


# -- the merge -------------------------------------------------------------------------------


class _Merge:
    """One merge in progress: its reducers, how to resolve conflicts, the conflicts found."""

    def __init__(self, reducers: _Reducers, on_conflict: OnConflict) -> None:
        self.reducers = reducers
        self.on_conflict = on_conflict
        self.conflicts: list[MergeConflict] = []

    def conflict(self, path: str, base: Any, ours: Any, theirs: Any) -> Any:
        if base is _ABSENT:
            kind: ConflictKind = "add_add"
        elif ours is _ABSENT or theirs is _ABSENT:
            kind = "modify_delete"
        elif _kind(ours) != _kind(theirs):
            kind = "type_mismatch"
        else:
            kind = "both_modified"
        self.conflicts.append(self._conflict(path, kind, base, ours, theirs))
        return ours if self.on_conflict == "ours" else theirs

    def type_mismatch(self, path: str, ours: Any, theirs: Any) -> Any:
        self.conflicts.append(self._conflict(path, "type_mismatch", _ABSENT, ours, theirs))
        return ours if self.on_conflict == "ours" else theirs

    @staticmethod
    def _conflict(path: str, kind: ConflictKind, base: Any, ours: Any, theirs: Any) -> MergeConflict:
        sides = {"base": base, "ours": ours, "theirs": theirs}
        absent = tuple(side for side, value in sides.items() if value is _ABSENT)
        values = {side: None if value is _ABSENT else value for side, value in sides.items()}
        return MergeConflict(path, kind, values["base"], values["ours"], values["theirs"], absent)

    # ordered: RFC 7396, reducers at their paths

    def patch(self, target: Any, patch: Any, pointer: str, *, keep_nulls: bool = False) -> Any:
        if not isinstance(patch, dict):
            return patch
        result: JSONObject = dict(target) if isinstance(target, dict) else {}  # type: ignore[arg-type]
        track = pointer in self.reducers.above
        for key, value in patch.items():  # type: ignore[union-attr]
            child = f"{pointer}/{pointer_token(key)}" if track else ""
            reducer = self.reducers.at.get(child) if track else None
            if value is None:
                if keep_nulls:
                    result[key] = None
                else:
                    result.pop(key, None)
            elif reducer is not None:
                result[key] = _combine(reducer, result.get(key, _ABSENT), value)
            else:
                result[key] = self.patch(result.get(key), value, child, keep_nulls=keep_nulls)
        return result

    # reducers: associative fold, null is a value

    def fold(self, acc: JSONObject, nxt: JSONObject, pointer: str) -> JSONObject:
        result = dict(acc)
        track = pointer in self.reducers.above
        for key, value in nxt.items():
            current = result.get(key, _ABSENT)
            child = f"{pointer}/{pointer_token(key)}" if track else ""
            reducer = self.reducers.at.get(child) if track else None
            if reducer is not None:
                result[key] = _combine(reducer, current, value)
            elif isinstance(value, dict) and (
                isinstance(current, dict) or (current is _ABSENT and child in self.reducers.above)
            ):
                below = current if isinstance(current, dict) else {}
                result[key] = self.fold(below, value, child or f"{pointer}/{pointer_token(key)}")  # type: ignore[arg-type]
            elif current is not _ABSENT and (isinstance(current, dict) or isinstance(value, dict)):
                result[key] = self.type_mismatch(f"{pointer}/{pointer_token(key)}", current, value)
            else:
                result[key] = value
        return result

    # three_way

    def merge3(self, base: JSONObject, ours: JSONObject, theirs: JSONObject, pointer: str) -> JSONObject:
        result: JSONObject = {}
        for key in _keys(ours, theirs):
            value = self.merge3_value(
                base.get(key, _ABSENT), ours.get(key, _ABSENT), theirs.get(key, _ABSENT), pointer, key
            )
            if value is not _ABSENT:
                result[key] = value
        return result

    def merge3_value(self, base: Any, ours: Any, theirs: Any, pointer: str, key: str) -> Any:
        if _same(ours, base):
            return theirs
        if _same(theirs, base):
            return ours
        # Both sides changed it. A reducer counts both changes even when they are equal
        # (two increments of 1 add 2), so reducers come before "same on both sides".
        path = f"{pointer}/{pointer_token(key)}"
        reducer = self.reducers.at.get(path)
        if reducer is not None:
            return self.reduce3(reducer, base, ours, theirs, path)
        both_objects = isinstance(ours, dict) and isinstance(theirs, dict)
        if both_objects and path in self.reducers.above:
            return self.merge3(base if isinstance(base, dict) else {}, ours, theirs, path)  # type: ignore[arg-type]
        if _same(ours, theirs):
            return ours
        if both_objects:
            return self.merge3(base if isinstance(base, dict) else {}, ours, theirs, path)  # type: ignore[arg-type]
        return self.conflict(path, base, ours, theirs)

    def reduce3(self, reducer: Reducer, base: Any, ours: Any, theirs: Any, path: str) -> Any:
        """Both sides changed a reducer's path: combine their changes relative to the base."""
        if reducer == "last":
            return theirs
        if ours is _ABSENT or theirs is _ABSENT:
            return self.conflict(path, base, ours, theirs)  # a deletion cannot be summed or appended
        if reducer == "sum":
            return ours + theirs - (0 if base is _ABSENT or base is None else base)
        if reducer in ("max", "min"):
            return _combine(reducer, ours, theirs)
        before: list[Any] = base if isinstance(base, list) else []
        if reducer == "union":
            kept = {_canonical(x) for x in ours} & {_canonical(x) for x in theirs}
            removed = frozenset(k for k in map(_canonical, before) if k not in kept)
            return _unique([*ours, *theirs], drop=removed)
        n = len(before)
        if _same(ours[:n], before) and _same(theirs[:n], before):
            return [*before, *ours[n:], *theirs[n:]]
        return self.conflict(path, base, ours, theirs)  # append: a side rewrote the base's items


def _keys(ours: JSONObject, theirs: JSONObject) -> list[str]:
    return [*ours, *(k for k in theirs if k not in ours)]


def compute_merge(
    states: Sequence[ContextState],
    *,
    strategy: Strategy = "ordered",
    base: ContextState | None = None,
    reducers: Mapping[str, str] | None = None,
    on_conflict: OnConflict = "fail",
    field: str = "states",
    report_conflicts: bool = False,
) -> MergeResult:
    """Merge 2+ states (see the module docstring). Raises :class:`StateValidationError` for bad
    arguments, :class:`StateUpdateError` for values a reducer cannot combine, and
    :class:`MergeConflictError` for conflicts when ``on_conflict`` is ``'fail'`` — unless
    ``report_conflicts`` (a dry run): then they are returned, and the state, which holds
    theirs at each conflict, is not a result to use."""
    checked = check_merge_arguments(
        count=len(states),
        strategy=strategy,
        on_conflict=on_conflict,
        reducers=reducers,
        base_given=base is not None,
        field=field,
    )
    if strategy == "three_way" and base is None:
        raise _invalid(
            "strategy",
            "three_way needs a base: pass base (the state both sides started from, e.g. the revision you read); "
            "it is found automatically when every input is a context revision and they share a fork or merge "
            "ancestor (or all are revisions of one context)",
        )
    labelled = [(f"{field}[{i}]", s) for i, s in enumerate(states)]
    if base is not None:
        labelled.append(("base", base))
    _check_reducer_values(checked, labelled, null_deletes=strategy == "ordered")

    merge = _Merge(checked, on_conflict)
    merged: dict[str, JSONObject] = {}
    provenance: list[Provenance] = []
    for section in _SECTIONS:
        docs: list[JSONObject] = [getattr(s, section) for s in states]
        root = f"/{section}"
        if strategy == "ordered":
            acc = docs[0] if root not in checked.above else merge.patch({}, docs[0], root, keep_nulls=True)
            for doc in docs[1:]:
                acc = merge.patch(acc, doc, root)
            merged[section] = acc
            provenance += _provenance(root, docs, acc, None, null_deletes=True)
        elif strategy == "reducers":
            acc = merge.fold({}, docs[0], root)
            for doc in docs[1:]:
                acc = merge.fold(acc, doc, root)
            merged[section] = acc
            provenance += _provenance(root, docs, acc, None, null_deletes=False)
        else:
            assert base is not None  # checked above
            before: JSONObject = getattr(base, section)
            acc = docs[0]
            for doc in docs[1:]:
                acc = merge.merge3(before, acc, doc, root)
            merged[section] = acc
            provenance += _provenance(root, docs, acc, before, null_deletes=False)
    if merge.conflicts and on_conflict == "fail" and not report_conflicts:
        raise MergeConflictError(merge.conflicts)
    state = ContextState(
        data=merged["data"],
        metadata=merged["metadata"],
        timestamp=utcnow(),
        version=max((s.version for s in states), key=semver_key),
    )
    return MergeResult(state, merge.conflicts, provenance, strategy)


def _provenance(
    root: str, docs: Sequence[JSONObject], result: JSONObject, base: JSONObject | None, *, null_deletes: bool
) -> list[Provenance]:
    """Top-level paths more than one input set (or changed from ``base``), and whose value won."""
    touched: dict[str, list[int]] = {}
    for index, doc in enumerate(docs):
        for key, value in doc.items():
            if base is None or not _same(base.get(key, _ABSENT), value):
                touched.setdefault(key, []).append(index)
        if base is not None:
            for key in base:
                if key not in doc:
                    touched.setdefault(key, []).append(index)
    found: list[Provenance] = []
    for key, indexes in touched.items():
        if len(indexes) < 2:
            continue
        indexes.sort()
        got = result.get(key, _ABSENT)
        winner: int | None = None
        for index in reversed(indexes):
            value = docs[index].get(key, _ABSENT)
            if null_deletes and value is None:
                value = _ABSENT
            if _same(value, got):
                winner = index
                break
        found.append(Provenance(f"{root}/{pointer_token(key)}", tuple(indexes), winner))
    return found
