"""Path watches: whether a committed change touches a watched JSON Pointer.

``wait_for_changes(paths=…)`` and the path resources (``…/state?path=…``, server/path_watch.py)
filter changes with :func:`touches`: a change touches a watched path when its diff changes the
path itself, an ancestor or a descendant of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from groundhog_mcp.errors import StateValidationError, ValidationIssue
from groundhog_mcp.models import Change, JSONObject, pointer_tokens
from groundhog_mcp.store.base import FEED_PATCH_MAX_OPS

__all__ = ["MAX_MATCHED_OPERATIONS", "MAX_WATCH_PATHS", "parse_watch_paths", "touches"]

MAX_WATCH_PATHS = 32
MAX_MATCHED_OPERATIONS = 1_000
"""A diff with more operations touches every watched path (bounded matching work per change)."""
_MAX_POINTER_CHARS = 1024


def _tokens(pointer: str) -> tuple[str, ...]:
    return tuple(pointer_tokens(pointer))


def parse_watch_paths(paths: Sequence[str] | None, field: str = "paths") -> tuple[tuple[str, ...], ...] | None:
    """Watched JSON Pointers into the state document (``/data/...``, ``/metadata/...``), as tokens."""
    if paths is None:
        return None
    if not 1 <= len(paths) <= MAX_WATCH_PATHS:
        raise StateValidationError(
            [ValidationIssue("", f"give 1 to {MAX_WATCH_PATHS} JSON Pointers; got {len(paths)}")], field=field
        )
    parsed: list[tuple[str, ...]] = []
    for i, path in enumerate(paths):
        if len(path) > _MAX_POINTER_CHARS or (path and not path.startswith("/")):
            raise StateValidationError(
                [
                    ValidationIssue(
                        "",
                        f"must be a JSON Pointer into the state document starting with / (e.g. /data/plan), "
                        f"at most {_MAX_POINTER_CHARS} characters",
                    )
                ],
                field=f"{field}[{i}]",
            )
        parsed.append(_tokens(path))
    return tuple(parsed)


def _related(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """One path is the other, an ancestor or a descendant of it."""
    n = min(len(a), len(b))
    return a[:n] == b[:n]


def touches(change: Change, watched: tuple[tuple[str, ...], ...]) -> bool:
    """Whether ``change`` touches a watched path (the path itself, an ancestor or a descendant).

    A change without a diff (register, unregister, fork, import), a diff the change feed kept only
    in part (the first operations of a large one) and a diff of more than
    :data:`MAX_MATCHED_OPERATIONS` operations count as touching every path."""
    patch = change.patch
    if patch is None or len(patch) > MAX_MATCHED_OPERATIONS or _maybe_truncated(patch):
        return True
    for op in patch:
        for key in ("path", "from"):
            pointer = op.get(key)
            if isinstance(pointer, str) and any(_related(_tokens(pointer), w) for w in watched):
                return True
    return False


def _maybe_truncated(patch: list[JSONObject]) -> bool:
    # feed_patch keeps op and path only (no values) of a large diff, and then only the first
    # FEED_PATCH_MAX_OPS operations: with that many, more may have been dropped.
    return len(patch) >= FEED_PATCH_MAX_OPS and all(set(op) <= {"op", "path"} for op in patch)
