"""The three ways to change a state's data: replace, RFC 7396 merge patch, RFC 6902 patch."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import jsonpointer

from groundhog_mcp.errors import (
    LimitExceededError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import JSONObject, pointer_tokens

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


def apply_json_patch(
    document: JSONObject, operations: list[JSONObject], field: str = "patch", *, max_copy_bytes: int | None = None
) -> JSONObject:
    """RFC 6902, atomically: either every operation applies (``test`` included) or none does.

    ``max_copy_bytes`` bounds what the ``copy`` operations may add in total (serialised): a few
    operations copying the document into itself would otherwise double it each time, to
    gigabytes, before any size check could see the result. Errors name the operation by index
    and never quote the data."""
    try:
        patch = jsonpatch.JsonPatch(operations)
    except (jsonpatch.InvalidJsonPatch, jsonpointer.JsonPointerException) as exc:
        raise StateValidationError([ValidationIssue("", f"not a valid RFC 6902 patch ({exc})")], field=field) from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise StateValidationError(
            [ValidationIssue("", f"not a valid RFC 6902 patch ({type(exc).__name__})")], field=field
        ) from None
    result: Any = copy.deepcopy(document)
    copied = 0
    for index, operation in enumerate(patch._ops):  # pyright: ignore[reportAttributeAccessIssue]
        where = f"operation {index} ({operation.operation.get('op')} at {str(operation.location)[:100]!r})"
        try:
            if max_copy_bytes is not None and isinstance(operation, jsonpatch.CopyOperation):
                copied += _serialised_size(jsonpointer.resolve_pointer(result, operation.operation["from"]))
                if copied > max_copy_bytes:
                    raise LimitExceededError(
                        f"{field}: too_large at {where}: the patch's copy operations add more than "
                        f"{max_copy_bytes} bytes (the state size limit); nothing was changed"
                    )
            result = operation.apply(result)
        except jsonpatch.JsonPatchTestFailed:
            raise StateUpdateError(
                f"{field}: a 'test' operation failed ({where}: the value there differs); nothing was changed"
            ) from None
        except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException, KeyError, IndexError) as exc:
            reason = "a path it needs does not exist in the data"
            if type(exc) is jsonpatch.JsonPatchConflict:
                reason = str(exc)[:150]
            raise StateUpdateError(f"{field}: cannot apply {where}: {reason}; nothing was changed") from None
        except jsonpatch.InvalidJsonPatch as exc:
            raise StateValidationError(
                [ValidationIssue("", f"not a valid RFC 6902 patch ({exc})")], field=field
            ) from None
        except (TypeError, ValueError) as exc:
            raise StateValidationError(
                [ValidationIssue("", f"cannot apply {where} ({type(exc).__name__})")], field=field
            ) from None
    if not isinstance(result, dict):
        raise StateValidationError(
            [ValidationIssue("", "the patch would replace the data object with a non-object")], field=field
        )
    return result  # type: ignore[return-value]


def _serialised_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


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
    except jsonpointer.JsonPointerException:
        # jsonpointer's message quotes the whole document it searched: name the missing step instead.
        raise NotFoundError(
            f"{field}: {pointer[:200]!r} does not exist in the state ({_missing_step(document, pointer)})"
        ) from None


def _missing_step(document: Any, pointer: str) -> str:
    """Which part of ``pointer`` is missing, and what is there instead (by kind, never by value)."""
    at: Any = document
    walked = ""
    for part, key in zip(pointer.split("/")[1:], pointer_tokens(pointer), strict=True):
        if isinstance(at, dict) and key in at:
            at = at[key]
        elif isinstance(at, list) and key.isdigit() and int(key) < len(at) and (key == "0" or key[0] != "0"):
            at = at[int(key)]
        else:
            kind = "an object" if isinstance(at, dict) else "an array" if isinstance(at, list) else "not a container"
            return f"{(walked + '/' + part)[:200]!r} is missing; {walked or 'the root'!s:.200} is {kind}"
        walked += "/" + part
    return "it does not resolve"
