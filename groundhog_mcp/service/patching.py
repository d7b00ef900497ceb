"""The three ways to change a state's data: replace, RFC 7396 merge patch, RFC 6902 patch."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import jsonpointer

from groundhog_mcp.errors import NotFoundError, StateUpdateError, StateValidationError, ValidationIssue
from groundhog_mcp.models import JSONObject

__all__ = ["apply_json_patch", "merge_patch", "resolve_pointer"]


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():  # type: ignore[union-attr]
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_json_patch(document: JSONObject, operations: list[JSONObject], field: str = "patch") -> JSONObject:
    """RFC 6902, atomically: either every operation applies (``test`` included) or none does."""
    try:
        patch = jsonpatch.JsonPatch(operations)
        result = patch.apply(document, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise StateUpdateError(f"{field}: a 'test' operation failed ({exc}); nothing was changed") from None
    except jsonpatch.JsonPatchConflict as exc:
        raise StateUpdateError(f"{field}: cannot apply ({exc}); nothing was changed") from None
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise StateValidationError([ValidationIssue("", f"not a valid RFC 6902 patch ({exc})")], field=field) from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise StateValidationError(
            [ValidationIssue("", f"not a valid RFC 6902 patch ({type(exc).__name__}: {exc})")], field=field
        ) from None
    if not isinstance(result, dict):
        raise StateValidationError(
            [ValidationIssue("", "the patch would replace the data object with a non-object")], field=field
        )
    return result  # type: ignore[return-value]


def resolve_pointer(document: Any, pointer: str, field: str = "path") -> Any:
    """The value at an RFC 6901 JSON Pointer, or a clear error naming the missing step."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise StateValidationError(
            [ValidationIssue("", f"must be a JSON Pointer starting with '/' (RFC 6901); got {pointer[:80]!r}")],
            field=field,
        )
    try:
        return jsonpointer.resolve_pointer(document, pointer)
    except jsonpointer.JsonPointerException as exc:
        raise NotFoundError(f"{field}: {pointer[:200]!r} does not exist in the state ({exc})") from None
