"""The write machinery: a mutation committed through the store's one write sequence (inside the
transaction when the caller calls it cheap, else computed in a worker thread first by the store),
then announced on the change feed; and the one place a mutation's diff is built.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from groundhog_mcp.errors import ContextError, NotFoundError
from groundhog_mcp.models import Change, ContextState, JSONObject, json_diff
from groundhog_mcp.service.audit import AuditTrail
from groundhog_mcp.service.caller import Caller
from groundhog_mcp.service.feed import ChangeFeed
from groundhog_mcp.service.metrics import MetricsRecorder, metric_key
from groundhog_mcp.store.base import EventRecord, Mutation, NewContext, Store, StoredContext

__all__ = ["WriteResult", "Writer", "mutation", "state_diff"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class WriteResult:
    """A committed write: the context after it, and its change-feed entry."""

    context: StoredContext
    change: Change
    previous_revision: int | None


def state_diff(before: ContextState, after: ContextState) -> list[JSONObject]:
    """The RFC 6902 patch from one state document to another (what a change and a diff show)."""
    return json_diff(before.document(), after.document())


def mutation(current: StoredContext, state: ContextState, op: str = "update", *, text: str | None = None) -> Mutation:
    """The write of ``state`` over ``current``: the state and its patch from the current one;
    ``text``: ``state`` serialised, as :func:`~groundhog_mcp.service.reads.check_written` returns it."""
    return Mutation(state, state_diff(current.state, state), op=op, text=text)


class Writer:
    """Commits writes for a caller: mutate, register, and any store write that yields a change."""

    def __init__(
        self,
        store: Store,
        feed: ChangeFeed,
        metrics: MetricsRecorder,
        audit: AuditTrail,
        pending: set[asyncio.Task[Any]],
    ) -> None:
        self.store = store
        self.feed = feed
        self.metrics = metrics
        self.audit = audit
        self.pending = pending  # the manager's: close() waits for these writes

    async def register(
        self, caller: Caller, new: NewContext, *, if_exists: Literal["error", "return"]
    ) -> WriteResult | StoredContext:
        stored, change = await self.committed(
            self.store.register(new, actor=caller.principal.name, if_exists=if_exists, audit=self.audit.note(caller)),
            lambda r: r[1],
        )
        if change is None:
            return stored
        return WriteResult(stored, change, None)

    async def mutate(
        self,
        caller: Caller,
        name: str,
        expected_revision: int | None,
        mutator: Callable[[StoredContext], Mutation],
        *,
        event: EventRecord | None = None,
        detail: str | None = None,
        inline: Callable[[StoredContext], bool] | None = None,
    ) -> WriteResult:
        """``inline(current)`` true: the mutation is cheap on that context and may run inside the
        write transaction (the store prepares any other in a worker thread first)."""
        namespace = caller.principal.namespace
        started = time.perf_counter()
        try:
            stored, change = await self.committed(
                self.store.mutate(
                    namespace,
                    name,
                    expected_revision,
                    mutator,
                    actor=caller.principal.name,
                    event=event,
                    audit=self.audit.note(caller, detail),
                    lease_token=caller.lease_token,
                    inline=inline,
                ),
                lambda r: r[1],
            )
        except ContextError as exc:
            self.metrics.count_error(type(exc).__name__, metric_key(namespace, name))
            if isinstance(exc, NotFoundError):
                await self.expire_if_due(caller, name)
            raise
        finally:
            self.metrics.observe_write(metric_key(namespace, name), time.perf_counter() - started)
        return WriteResult(stored, change, change.revision - 1)

    async def expire_if_due(self, caller: Caller, name: str) -> None:
        """``caller`` just missed context ``name``: if it expired, record its removal now (once;
        the feed then tells watchers), as the caller (groundhog_mcp/store/expiry.py)."""
        await self.committed(
            self.store.expire(
                caller.principal.namespace,
                name,
                actor=caller.principal.name,
                audit=self.audit.note(caller, "expired"),
            ),
            lambda change: change,
        )

    async def committed(self, write: Awaitable[_T], change_of: Callable[[_T], Change | None]) -> _T:
        """Run a write to completion even if the caller is cancelled, then hand its change to the feed.

        A cancelled client must not leave a committed change unannounced, so the write
        and the wake-up run in their own task; the feed publishes changes in sequence order.
        """

        async def write_then_publish() -> _T:
            result = await write
            change = change_of(result)
            if change is not None:
                self.feed.committed(change)
            return result

        task = asyncio.ensure_future(write_then_publish())
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return await asyncio.shield(task)
