"""The state manager: every read and write of context state goes through here.

A write follows the specification: validate → prepare → store (one transaction, with
the ``expected_revision`` check) → notify (after commit, on the change bus).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from groundhog_mcp.errors import (
    CompactedError,
    ConflictError,
    NotFoundError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import (
    Change,
    ContextId,
    ContextState,
    HistoryEntry,
    JSONObject,
    Principal,
    json_diff,
    utcnow,
)
from groundhog_mcp.service.bus import ChangeBus, Resync
from groundhog_mcp.service.feed import ChangeFeed
from groundhog_mcp.service.patching import apply_json_patch, merge_patch
from groundhog_mcp.service.validation import (
    Limits,
    check_name,
    check_schema_definition,
    check_semver,
    inspect_json,
    inspect_state,
    raise_if_invalid,
)
from groundhog_mcp.store.base import Mutation, NewContext, Store, StoredContext
from groundhog_mcp.store.sqlite import SQLiteStore

__all__ = ["MAX_WAIT_SECONDS", "ContextPage", "StateManager", "WriteResult"]

_T = TypeVar("_T")

MAX_WAIT_SECONDS = 60.0
_SCAN_PAGE = 500
_MAX_SCAN_PAGES = 20


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the context after it, and its change-feed entry."""

    context: StoredContext
    change: Change
    previous_revision: int | None


@dataclass(frozen=True)
class ContextPage:
    contexts: list[StoredContext]
    next_cursor: str | None


def _encode_cursor(name: str) -> str:
    return base64.urlsafe_b64encode(name.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> str:
    try:
        name = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        check_name(name)
    except (binascii.Error, UnicodeDecodeError, ValueError, StateValidationError):
        raise StateValidationError(
            [ValidationIssue("", "not a cursor this server issued; pass next_cursor from a previous page")],
            field="cursor",
        ) from None
    return name


class StateManager:
    """Durable, versioned context state over a :class:`~groundhog_mcp.store.base.Store`.

    Open one with ``async with StateManager.open(path) as manager`` (SQLite), or build it
    over any store and call :meth:`start` / :meth:`close`.
    """

    def __init__(
        self,
        store: Store,
        *,
        limits: Limits | None = None,
        principal: Principal | None = None,
        bus: ChangeBus | None = None,
        poll_interval: float = 0.05,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.principal = principal or Principal()
        self.bus = bus or ChangeBus()
        self.feed = ChangeFeed(store, self.bus, interval=poll_interval)
        self._pending: set[asyncio.Task[Any]] = set()

    @classmethod
    @asynccontextmanager
    async def open(cls, database: str | Path, **kwargs: Any) -> AsyncGenerator[StateManager]:
        """A manager over a SQLite file (created if missing), closed on exit."""
        manager = cls(SQLiteStore(database), **kwargs)
        await manager.start()
        try:
            yield manager
        finally:
            await manager.close()

    async def start(self) -> None:
        """Open the store and follow its change feed from the current sequence."""
        await self.store.open()
        self.bus.last_sequence = await self.store.last_sequence()
        await self.feed.start(self.bus.last_sequence)

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.feed.stop()
        await self.store.close()

    # -- the specification's API ------------------------------------------------------------

    async def save_state(
        self, context_id: ContextId, state: ContextState, *, expected_revision: int | None = None
    ) -> WriteResult:
        """Store ``state`` as the context's new revision, exactly as given.

        A context id not seen before is created (named after the id), as the
        specification's ``save_state`` on a fresh ``ContextId`` expects.
        """
        await self.validate_state(state)
        existing = await self.store.get_by_id(context_id)
        if existing is None:
            created = await self._register(
                NewContext(
                    id=context_id,
                    namespace=self.principal.namespace,
                    name=str(context_id),
                    version="1.0.0",
                    metadata={},
                    settings={},
                    schema=None,
                    handlers={},
                    state=state,
                ),
                if_exists="error",
            )
            assert isinstance(created, WriteResult)  # if_exists="error" never returns an existing context
            return created

        def replace_state(current: StoredContext) -> Mutation:
            self._raise_if_invalid_state(state, current.schema)
            return Mutation(state, json_diff(current.state.document(), state.document()))

        return await self._mutate(existing.name, expected_revision, replace_state)

    async def load_state(self, context_id: ContextId) -> ContextState:
        stored = await self.store.get_by_id(context_id)
        if stored is None or stored.namespace != self.principal.namespace:
            raise NotFoundError(f"context_id: no context with id {context_id}")
        return stored.state

    async def merge_states(self, states: Sequence[ContextState]) -> ContextState:
        """Fold ``states`` in order with RFC 7396 (later wins); metadata merges the same way."""
        if len(states) < 2:
            raise StateValidationError(
                [ValidationIssue("", f"merge needs at least 2 states, got {len(states)}")], field="states"
            )
        data: Any = {}
        metadata: Any = {}
        for state in states:
            data = merge_patch(data, state.data)
            metadata = merge_patch(metadata, state.metadata)
        version = max((s.version for s in states), key=_semver_key)
        return ContextState(data=data, metadata=metadata, timestamp=utcnow(), version=version)

    async def validate_state(self, state: ContextState, *, schema: JSONObject | None = None) -> None:
        """Raise :class:`StateValidationError` listing every problem; return None if valid."""
        self._raise_if_invalid_state(state, schema)

    def check_state(self, state: ContextState, schema: JSONObject | None = None) -> list[ValidationIssue]:
        return inspect_state(state, self.limits, schema)

    # -- name-addressed operations (what the MCP tools call) --------------------------------

    async def register(
        self,
        name: str,
        *,
        version: str = "1.0.0",
        state: ContextState | None = None,
        metadata: JSONObject | None = None,
        settings: JSONObject | None = None,
        schema: JSONObject | None = None,
        handlers: JSONObject | None = None,
        if_exists: Literal["error", "return"] = "error",
        context_id: ContextId | None = None,
    ) -> WriteResult | StoredContext:
        """Create a context; with ``if_exists="return"`` an existing one is returned as is."""
        check_name(name)
        check_semver(version)
        metadata = metadata or {}
        settings = settings or {}
        raise_if_invalid(inspect_json(metadata, self.limits), "metadata")
        raise_if_invalid(inspect_json(settings, self.limits), "settings")
        if schema is not None:
            raise_if_invalid(inspect_json(schema, self.limits), "schema")
            check_schema_definition(schema)
        state = state or ContextState.new()
        self._raise_if_invalid_state(state, schema)
        new = NewContext(
            id=context_id or uuid.uuid4(),
            namespace=self.principal.namespace,
            name=name,
            version=version,
            metadata=metadata,
            settings=settings,
            schema=schema,
            handlers=handlers or {},
            state=state,
        )
        return await self._register(new, if_exists=if_exists)

    async def unregister(self, name: str, *, expected_revision: int | None = None, purge: bool = False) -> Change:
        check_name(name)
        change = await self._committed(
            self.store.unregister(
                self.principal.namespace, name, expected_revision, purge=purge, actor=self.principal.name
            ),
            lambda c: c,
        )
        return change

    async def get(self, name: str) -> StoredContext:
        check_name(name)
        stored = await self.store.get(self.principal.namespace, name)
        if stored is None:
            raise NotFoundError(f"name: no context named {name!r}")
        return stored

    async def list(self, *, prefix: str = "", cursor: str | None = None, limit: int = 50) -> ContextPage:
        if prefix:
            _check_prefix(prefix)
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")],
                field="limit",
            )
        after = _decode_cursor(cursor) if cursor else None
        rows = await self.store.list(self.principal.namespace, prefix=prefix, after=after, limit=limit + 1)
        next_cursor = _encode_cursor(rows[limit - 1].name) if len(rows) > limit else None
        return ContextPage(rows[:limit], next_cursor)

    async def read(self, name: str, revision: int | None = None) -> tuple[StoredContext, int, ContextState]:
        """The current state, or the state at ``revision``: ``(context, revision, state)``."""
        context = await self.get(name)
        if revision is None or revision == context.revision:
            return context, context.revision, context.state
        return context, revision, await self._revision_state(context, revision)

    async def update(
        self,
        name: str,
        *,
        data: JSONObject | None = None,
        merge_patch_: JSONObject | None = None,
        patch: list[JSONObject] | None = None,
        metadata: JSONObject | None = None,
        version: str | None = None,
        expected_revision: int | None = None,
    ) -> WriteResult:
        """Apply exactly one of ``data`` (replace), ``merge_patch_`` (RFC 7396), ``patch`` (RFC 6902)."""
        check_name(name)
        given = [f for f, v in (("data", data), ("merge_patch", merge_patch_), ("patch", patch)) if v is not None]
        if len(given) > 1 or (not given and metadata is None and version is None):
            raise StateValidationError(
                [
                    ValidationIssue(
                        "",
                        "give exactly one of data (replace), merge_patch (RFC 7396) or patch (RFC 6902)"
                        + (f"; got {', '.join(given)}" if given else "; got none (and no metadata)"),
                    )
                ],
                field="update",
            )
        for field, value in (
            ("data", data),
            ("merge_patch", merge_patch_),
            ("patch", patch),
            ("metadata", metadata),
        ):
            if value is not None:
                raise_if_invalid(inspect_json(value, self.limits), field)
        if version is not None:
            check_semver(version)
        if expected_revision == 0:
            return await self._create_from_update(name, data, merge_patch_, patch, metadata, version)

        def apply(current: StoredContext) -> Mutation:
            new_data: JSONObject = current.state.data
            if data is not None:
                new_data = data
            elif merge_patch_ is not None:
                new_data = merge_patch(current.state.data, merge_patch_)
            elif patch is not None:
                new_data = apply_json_patch(current.state.data, patch)
            new_metadata = current.state.metadata if metadata is None else merge_patch(current.state.metadata, metadata)
            state = ContextState(
                data=new_data,
                metadata=new_metadata,
                timestamp=utcnow(),
                version=version or current.state.version,
            )
            self._raise_if_invalid_state(state, current.schema)
            return Mutation(state, json_diff(current.state.document(), state.document()))

        return await self._mutate(name, expected_revision, apply)

    async def _create_from_update(
        self,
        name: str,
        data: JSONObject | None,
        merge_patch_: JSONObject | None,
        patch: list[JSONObject] | None,
        metadata: JSONObject | None,
        version: str | None,
    ) -> WriteResult:
        """``expected_revision=0``: the context must not exist yet; create it with this state."""
        if data is None:
            data = merge_patch(None, merge_patch_) if merge_patch_ is not None else {}
            if patch is not None:
                data = apply_json_patch({}, patch)
        state = ContextState(data=data or {}, metadata=merge_patch(None, metadata or {}), version=version or "1.0.0")
        try:
            result = await self.register(name, state=state, if_exists="error")
        except ConflictError as exc:
            raise ConflictError(name, 0, exc.current_revision) from None
        assert isinstance(result, WriteResult)  # if_exists="error" never returns an existing context
        return result

    async def check(
        self, name: str, *, data: JSONObject | None = None, metadata: JSONObject | None = None
    ) -> tuple[StoredContext, list[ValidationIssue]]:
        """Validate a candidate (or the current) state of ``name`` without writing."""
        context = await self.get(name)
        candidate = ContextState(
            data=context.state.data if data is None else data,
            metadata=context.state.metadata if metadata is None else metadata,
            timestamp=context.state.timestamp,
            version=context.state.version,
        )
        return context, inspect_state(candidate, self.limits, context.schema)

    async def history(self, name: str, *, before: int | None = None, limit: int = 20) -> list[HistoryEntry]:
        if not 1 <= limit <= self.limits.max_history_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_history_page}; got {limit}")],
                field="limit",
            )
        context = await self.get(name)
        return await self.store.history(context.id, before=before, limit=limit)

    async def diff(self, name: str, from_revision: int, to_revision: int | None = None) -> list[JSONObject]:
        context = await self.get(name)
        source = await self._revision_state(context, from_revision, field="from_revision")
        target = (
            context.state
            if to_revision is None or to_revision == context.revision
            else await self._revision_state(context, to_revision, field="to_revision")
        )
        return json_diff(source.document(), target.document())

    async def rollback(self, name: str, revision: int, *, expected_revision: int | None = None) -> WriteResult:
        """Restore ``revision``'s data and metadata as a *new* revision."""
        context = await self.get(name)
        old = await self._revision_state(context, revision)

        def restore(current: StoredContext) -> Mutation:
            state = ContextState(data=old.data, metadata=old.metadata, timestamp=utcnow(), version=old.version)
            self._raise_if_invalid_state(state, current.schema)
            return Mutation(state, json_diff(current.state.document(), state.document()), op="rollback")

        return await self._mutate(name, expected_revision, restore)

    async def changes_after(self, sequence: int, *, limit: int = 100) -> list[Change]:
        changes = await self.store.changes_after(sequence, limit=limit)
        return [c for c in changes if c.namespace == self.principal.namespace]

    async def wait_for_changes(
        self,
        names: Sequence[str] | None = None,
        *,
        after_sequence: int | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - the wait is the operation itself, bounded and validated here
        limit: int = 100,
    ) -> tuple[list[Change], int]:
        """Changes after ``after_sequence`` to ``names`` (or to any of your contexts), waiting up
        to ``timeout`` seconds for the first. Returns ``(changes, cursor)``; pass ``cursor`` as the
        next ``after_sequence``. ``after_sequence=None`` means "from now"."""
        wanted = set(names) if names else None
        for name in wanted or ():
            check_name(name, field="contexts")
        if not 0 <= timeout <= MAX_WAIT_SECONDS:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 0 and {MAX_WAIT_SECONDS} seconds; got {timeout}")],
                field="timeout",
            )
        if not 1 <= limit <= self.limits.max_page:
            raise StateValidationError(
                [ValidationIssue("", f"must be between 1 and {self.limits.max_page}; got {limit}")], field="limit"
            )

        def matches(change: Change) -> bool:
            return change.namespace == self.principal.namespace and (wanted is None or change.name in wanted)

        subscription = self.bus.subscribe()
        try:
            # "From now" is the last committed change, which the feed may not have published yet.
            cursor = await self.store.last_sequence() if after_sequence is None else after_sequence
            found, cursor = await self._scan_feed(cursor, matches, limit)
            if found:
                return found, cursor
            try:
                async with asyncio.timeout(timeout):
                    while True:
                        item = await subscription.get()
                        if isinstance(item, Resync) or item.sequence > cursor + 1:
                            # Fell behind, or missed something: read the feed itself.
                            found, cursor = await self._scan_feed(cursor, matches, limit)
                        elif item.sequence > cursor:
                            cursor = item.sequence
                            found = [item] if matches(item) else []
                        if found:
                            return found, cursor
            except TimeoutError:
                return [], cursor
        finally:
            subscription.close()

    async def _scan_feed(self, cursor: int, matches: Callable[[Change], bool], limit: int) -> tuple[list[Change], int]:
        """Matching changes after ``cursor`` up to what the feed has published (bounded pages)."""
        found: list[Change] = []
        head = self.feed.cursor
        for _ in range(_MAX_SCAN_PAGES):
            if cursor >= head:
                break
            page = await self.store.changes_after(cursor, limit=_SCAN_PAGE)
            if not page:
                break
            for change in page:
                if change.sequence > head:
                    return found, cursor
                cursor = change.sequence
                if matches(change):
                    found.append(change)
                    if len(found) >= limit:
                        return found, cursor
        return found, cursor

    # -- internals --------------------------------------------------------------------------

    def _raise_if_invalid_state(self, state: ContextState, schema: JSONObject | None) -> None:
        raise_if_invalid(inspect_state(state, self.limits, schema), "state")

    async def _revision_state(self, context: StoredContext, revision: int, field: str = "revision") -> ContextState:
        if revision == context.revision:
            return context.state
        if revision < 1 or revision > context.revision:
            raise NotFoundError(
                f"{field}: context {context.name!r} has no revision {revision} (current revision is {context.revision})"
            )
        found = await self.store.read_revision(context.id, revision)
        if isinstance(found, int):
            raise CompactedError(context.name, revision, found)
        if found is None:
            raise NotFoundError(
                f"{field}: revision {revision} of context {context.name!r} belongs to an earlier registration "
                "of this name or was purged"
            )
        return found.state

    async def _register(self, new: NewContext, *, if_exists: Literal["error", "return"]) -> WriteResult | StoredContext:
        stored, change = await self._committed(
            self.store.register(new, actor=self.principal.name, if_exists=if_exists), lambda r: r[1]
        )
        if change is None:
            return stored
        return WriteResult(stored, change, None)

    async def _mutate(
        self, name: str, expected_revision: int | None, mutator: Callable[[StoredContext], Mutation]
    ) -> WriteResult:
        stored, change = await self._committed(
            self.store.mutate(self.principal.namespace, name, expected_revision, mutator, actor=self.principal.name),
            lambda r: r[1],
        )
        return WriteResult(stored, change, change.revision - 1)

    async def _committed(self, write: Awaitable[_T], change_of: Callable[[_T], Change | None]) -> _T:
        """Run a write to completion even if the caller is cancelled, then wake the change feed.

        A cancelled client must not leave a committed change unannounced, so the write
        and the wake-up run in their own task; the feed publishes changes in sequence order.
        """

        async def write_then_publish() -> _T:
            result = await write
            if change_of(result) is not None:
                self.feed.wake()
            return result

        task = asyncio.ensure_future(write_then_publish())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return await asyncio.shield(task)


def _check_prefix(prefix: str) -> None:
    if len(prefix) > 128 or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in prefix):
        raise StateValidationError(
            [
                ValidationIssue(
                    "", f"must be the start of a context name (A-Z a-z 0-9 . _ -, ≤ 128); got {prefix[:80]!r}"
                )
            ],
            field="prefix",
        )


def _semver_key(version: str) -> tuple[int, int, int, int, str]:
    core, _, pre = version.split("+")[0].partition("-")
    major, minor, patch = (int(p) for p in core.split("."))
    # A pre-release sorts before its release.
    return major, minor, patch, 0 if pre else 1, pre
