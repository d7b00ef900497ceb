"""SQLite's full-text index of state text, kept in step with state updates by the store core.

``context_text`` (schema 9) holds the words of the string values of each plaintext state's data.
Triggers index a context row when it is inserted and forget it when it is deleted; an update of
``contexts.state`` is indexed here (schema 12 dropped the update trigger), in the write's own
transaction: the old words out before the update, the new ones in after it. The table is
contentless, so a row's words are removed by giving exactly the words it was indexed with: both
statements take them from the stored state with the same SQL the triggers use, never from Python.

Most agent updates change numbers or flags and leave every string of the data as it was; the
trigger still walked the old and the new state and rewrote the index's pages. :func:`same_text`
tells from an update's RFC 6902 patch when the words cannot have changed, and the update then
skips the index. PostgreSQL indexes the same text by expression: nothing to do there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, LiteralString

from groundhog_mcp.models import ContextId, ContextState, JSONObject, pointer_tokens
from groundhog_mcp.store.adapter import StoreAdapter, Tx

__all__ = ["INDEX_TEXT", "UNINDEX_TEXT", "TextIndex", "same_text"]

_WORDS: Final = "(SELECT group_concat(value, ' ') FROM json_tree(contexts.state, '$.data') WHERE type = 'text')"
UNINDEX_TEXT: Final[LiteralString] = (
    f"INSERT INTO context_text (context_text, rowid, body) SELECT 'delete', rowid, {_WORDS}"
    " FROM contexts WHERE id = %s AND typeof(state) = 'text'"
)
INDEX_TEXT: Final[LiteralString] = (
    f"INSERT INTO context_text (rowid, body) SELECT rowid, {_WORDS}"
    " FROM contexts WHERE id = %s AND typeof(state) = 'text'"
)
# The operations that change nothing but the value at their path (outside the data: not indexed).
_OUTSIDE_DATA_OPS: Final = ("add", "remove", "replace")
_MISSING: Final = object()


class TextIndex(StoreAdapter):
    """The index maintenance of a state update (a no-op for a backend without ``TEXT_INDEX``)."""

    # Whether this backend keeps ``context_text`` (SQLite).
    TEXT_INDEX = False

    def _words_may_change(
        self, stored: object, new: object, patch: Sequence[JSONObject] | None, current: ContextState
    ) -> bool:
        """Whether an update of a state stored as ``stored`` to ``new`` by ``patch`` (from
        ``current``) may change its words in the index: only a plaintext state has any."""
        if not self.TEXT_INDEX:
            return False
        old_text, new_text = isinstance(stored, str), isinstance(new, str)
        if old_text and new_text:
            return not same_text(patch, current.document())
        return old_text or new_text

    async def _unindex_text(self, tx: Tx, context_ids: Sequence[ContextId]) -> None:
        """Before an update of these contexts' states: forget their words."""
        if self.TEXT_INDEX:
            await _each(tx, UNINDEX_TEXT, context_ids)

    async def _index_text(self, tx: Tx, context_ids: Sequence[ContextId]) -> None:
        """After an update of these contexts' states: index their words."""
        if self.TEXT_INDEX:
            await _each(tx, INDEX_TEXT, context_ids)


async def _each(tx: Tx, sql: LiteralString, context_ids: Sequence[ContextId]) -> None:
    if len(context_ids) == 1:
        await tx.execute(sql, (context_ids[0],))
    elif context_ids:
        await tx.executemany(sql, [(i,) for i in context_ids])


def same_text(patch: Sequence[JSONObject] | None, before: JSONObject) -> bool:
    """Whether ``patch`` (RFC 6902, from the state document ``before``: ``{data, metadata,
    version}``) leaves every string of the data as it was, in the same place: it only replaces
    values that hold no string with values that hold none (so no path shifts), or changes what
    lies outside the data. False whenever that cannot be told (no patch, a pointer that does
    not resolve, a move or copy)."""
    if patch is None:
        return False
    for operation in patch:
        path = operation.get("path")
        op = operation.get("op")
        if not isinstance(path, str) or not path.startswith("/"):
            return False  # "" is the whole document
        if path != "/data" and not path.startswith("/data/"):
            if op not in _OUTSIDE_DATA_OPS:
                return False  # a move or copy may take its value from the data
            continue
        if op != "replace" or "value" not in operation:
            return False
        old = _resolve(before, path)
        if old is _MISSING or _holds_string(old) or _holds_string(operation["value"]):
            return False
    return True


def _resolve(document: Any, pointer: str) -> Any:
    """The value at JSON Pointer ``pointer`` (RFC 6901) in ``document``, or ``_MISSING``."""
    value = document
    for key in pointer_tokens(pointer):
        if isinstance(value, dict):
            if key not in value:
                return _MISSING
            value = value[key]  # pyright: ignore[reportUnknownVariableType]
        elif isinstance(value, list):
            if not (key.isascii() and key.isdigit()) or (len(key) > 1 and key[0] == "0") or int(key) >= len(value):  # pyright: ignore[reportUnknownArgumentType]
                return _MISSING
            value = value[int(key)]  # pyright: ignore[reportUnknownVariableType]
        else:
            return _MISSING
    return value  # pyright: ignore[reportUnknownVariableType]


def _holds_string(value: Any) -> bool:
    """Whether ``value`` is a string or holds one at any depth (object keys are not indexed)."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            return True
        if isinstance(item, dict):
            pending.extend(item.values())  # pyright: ignore[reportUnknownArgumentType, reportUnknownMemberType]
        elif isinstance(item, list):
            pending.extend(item)  # pyright: ignore[reportUnknownArgumentType]
    return False
