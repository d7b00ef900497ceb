"""The state manager: the facade every read and write of context state goes through.

A write follows the specification: validate → prepare → store (one transaction, with
the ``expected_revision`` check) → notify (after commit, on the change bus). The concerns live
in their own modules, each acting for the manager's :class:`~groundhog_mcp.service.caller.Caller`:
:mod:`~groundhog_mcp.service.access` (grants), :mod:`~groundhog_mcp.service.audit` (the audit
log and denials), :mod:`~groundhog_mcp.service.writes` (the write machinery and the one place a
diff is built), :mod:`~groundhog_mcp.service.reads` (revisions, upcasting, state checks),
:mod:`~groundhog_mcp.service.updates` and :mod:`~groundhog_mcp.service.definition` (writes by
name), :mod:`~groundhog_mcp.service.handling` (events and dead letters),
:mod:`~groundhog_mcp.service.branches`, :mod:`~groundhog_mcp.service.merging`,
:mod:`~groundhog_mcp.service.migration`, :mod:`~groundhog_mcp.service.leases` and
:mod:`~groundhog_mcp.service.metrics`. Most methods *are* those modules' functions, bound here
(``update = updates.update``): each signature and docstring is written once, beside its code.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from groundhog_mcp.errors import AccessDeniedError, NotFoundError, ValidationIssue
from groundhog_mcp.models import Change, ContextId, ContextState, HistoryEntry, JSONObject, Principal, Right
from groundhog_mcp.security.audit import Signer
from groundhog_mcp.service import (
    branches,
    definition,
    feed,
    handling,
    leases,
    merging,
    metrics,
    migration,
    reads,
    updates,
)
from groundhog_mcp.service.access import ContextPage, authorize, check_prefix, list_page, missing, sees
from groundhog_mcp.service.audit import AuditPage, AuditTrail, AuditVerification, DenialLog, verify_audit_chain
from groundhog_mcp.service.bus import ChangeBus
from groundhog_mcp.service.caller import Caller
from groundhog_mcp.service.expiry import expire_if_due
from groundhog_mcp.service.feed import MAX_WAIT_SECONDS, ChangeFeed
from groundhog_mcp.service.handling import EventResult
from groundhog_mcp.service.merge import OnConflict, Strategy, compute_merge
from groundhog_mcp.service.metrics import MetricsRecorder
from groundhog_mcp.service.migration import UpcastCache
from groundhog_mcp.service.reads import StateReader
from groundhog_mcp.service.search import FindPage, find_contexts
from groundhog_mcp.service.validation import (
    Limits,
    check_name,
    check_schema_definition,
    inspect_state,
    raise_if_invalid,
)
from groundhog_mcp.service.writes import Writer, WriteResult
from groundhog_mcp.store import open_store
from groundhog_mcp.store.base import Lease, LeaseGrant, ParentRef, Store, StoredContext

__all__ = ["MAX_WAIT_SECONDS", "Caller", "ContextPage", "EventResult", "StateManager", "WriteResult"]


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
        event_max_attempts: int = 3,
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.caller = Caller(principal or Principal())
        self.bus = bus or ChangeBus()
        self.feed = ChangeFeed(store, self.bus, interval=poll_interval)
        self.event_max_attempts = event_max_attempts
        self.metrics = MetricsRecorder()
        self.upcasts = UpcastCache()
        self._pending: set[asyncio.Task[Any]] = set()  # writes the caller may not wait for
        self._denial_flusher: asyncio.Task[None] | None = None
        self.audit = AuditTrail(store, self.metrics, self._pending)
        self.writer = Writer(store, self.feed, self.metrics, self.audit, self._pending)
        self.reader = StateReader(store, self.limits, self.upcasts)

    @property
    def principal(self) -> Principal:
        """Who this manager acts as (its caller's principal)."""
        return self.caller.principal

    @property
    def denials(self) -> DenialLog:
        return self.audit.denials

    @denials.setter
    def denials(self, log: DenialLog) -> None:
        self.audit.denials = log

    @property
    def denial_summary_interval(self) -> float:
        """Seconds between looks for denial counts whose minute has passed."""
        return self.audit.interval

    @denial_summary_interval.setter
    def denial_summary_interval(self, seconds: float) -> None:
        self.audit.interval = seconds

    def with_caller(self, caller: Caller) -> StateManager:
        """A view of this manager acting for ``caller``: same store, bus, feed, metrics and
        pending writes (so :meth:`close` on this manager waits for the view's writes too).
        Never start or close the view itself."""
        view = copy.copy(self)  # shallow on purpose: the view shares the manager's parts
        view.caller = caller
        return view

    def with_principal(self, principal: Principal) -> StateManager:
        """A view of this manager acting as ``principal`` (see :meth:`with_caller`)."""
        return self.with_caller(dataclasses.replace(self.caller, principal=principal))

    def with_lease(self, token: int | None) -> StateManager:
        """A view of this manager whose writes present lease ``token`` (None: this manager)."""
        if token is None:
            return self
        return self.with_caller(dataclasses.replace(self.caller, lease_token=token))

    @classmethod
    @asynccontextmanager
    async def open(cls, database: str | Path, **kwargs: Any) -> AsyncGenerator[StateManager]:
        """A manager over a database (a SQLite file, created if missing, or a postgresql:// URL),
        closed on exit."""
        manager = cls(open_store(database), **kwargs)
        await manager.start()
        try:
            yield manager
        finally:
            await manager.close()

    async def start(self) -> None:
        """Open the store and follow its change feed from the current sequence."""
        await self.store.open()
        await self.store.ensure_search_indexes()
        self.bus.last_sequence = await self.store.last_sequence()
        await self.feed.start(self.bus.last_sequence)
        self._denial_flusher = asyncio.create_task(self.audit.summarise_forever(), name="groundhog-audit-denials")

    async def close(self) -> None:
        if self._denial_flusher is not None:
            self._denial_flusher.cancel()
            await asyncio.gather(self._denial_flusher, return_exceptions=True)
            self._denial_flusher = None
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self.flush_denials()  # a clean shutdown loses no count
        await self.feed.stop()
        await self.store.close()

    # An operation whose whole body would be one call of a concern module's function with the same
    # arguments *is* that function, bound here as a method (its first parameter is the manager):
    # its signature and documentation live once, beside its code.

    # -- the specification's API ------------------------------------------------------------

    save_state = updates.save_state
    load_state = reads.load_state

    async def merge_states(
        self,
        states: Sequence[ContextState],
        *,
        strategy: Strategy = "ordered",
        base: ContextState | None = None,
        reducers: Mapping[str, str] | None = None,
        on_conflict: OnConflict = "fail",
    ) -> ContextState:
        """Merge 2+ states; by default an RFC 7396 fold in order (later wins), metadata the same way.

        ``strategy="three_way"`` needs ``base``; ``reducers`` maps JSON Pointers into the state
        document (``/data/tags``) to ``append|union|sum|max|min|last``; ``on_conflict`` is
        ``fail|ours|theirs`` (see :mod:`groundhog_mcp.service.merge`). For conflicts, provenance,
        inputs named by context and revision, or writing the result, use :meth:`merge`.
        """
        result = await asyncio.to_thread(
            compute_merge, states, strategy=strategy, base=base, reducers=reducers, on_conflict=on_conflict
        )
        return result.state

    async def validate_state(self, state: ContextState, *, schema: JSONObject | None = None) -> None:
        """Raise :class:`StateValidationError` listing every problem; return None if valid."""
        if schema is not None:
            await asyncio.to_thread(check_schema_definition, schema)
        await asyncio.to_thread(lambda: raise_if_invalid(inspect_state(state, self.limits, schema), "state"))

    def check_state(self, state: ContextState, schema: JSONObject | None = None) -> list[ValidationIssue]:
        return inspect_state(state, self.limits, schema)

    # -- writes by name (service/updates.py, definition.py) ---------------------------------

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
        forked_from: ParentRef | None = None,
    ) -> WriteResult | StoredContext:
        """Create a context; with ``if_exists="return"`` an existing one is returned as is
        (``forked_from``: set by :meth:`fork`; see :func:`groundhog_mcp.service.updates.register`)."""
        return await updates.register(
            self,
            name,
            version=version,
            state=state,
            metadata=metadata,
            settings=settings,
            schema=schema,
            handlers=handlers,
            if_exists=if_exists,
            context_id=context_id,
            forked_from=forked_from,
        )

    update = updates.update
    rollback = updates.rollback
    unregister = updates.unregister
    update_context = definition.update_definition

    # -- reads by name (service/reads.py, search.py, feed.py) -------------------------------

    async def get(self, name: str) -> StoredContext:
        check_name(name)
        # Before the lookup: a context you may not read is never read nor decoded, so it costs
        # exactly what a missing one costs (grants depend on the name only).
        await self.authorize("read", name)
        stored = await self.store.get(self.principal.namespace, name)
        if stored is None:
            await expire_if_due(self, name)
            raise NotFoundError(missing(name))
        return stored

    async def list(self, *, prefix: str = "", cursor: str | None = None, limit: int = 50) -> ContextPage:
        """The live contexts this principal may read, by name, a page at a time."""
        return await list_page(self.store, self.principal, self.limits.max_page, prefix, cursor, limit)

    async def find(self, **request: Any) -> FindPage:
        """Search the contexts this principal may read: :func:`~groundhog_mcp.service.search.find_contexts`."""
        return await find_contexts(self, **request)

    async def read(
        self, name: str, revision: int | None = None, *, as_of: datetime | None = None
    ) -> tuple[StoredContext, int, ContextState]:
        """The current state, or the state at ``revision`` (or in force at time ``as_of``):
        ``(context, revision, state)``; a state stored in an older format version is upcast to the
        context's current one."""
        context, at, state, _ = await self.read_upcast(name, revision, as_of=as_of)
        return context, at, state

    read_upcast = reads.read_upcast
    check = reads.check
    history = reads.history

    async def diff(
        self,
        name: str,
        from_revision: int | None,
        to_revision: int | None = None,
        *,
        from_as_of: datetime | None = None,
        to_as_of: datetime | None = None,
    ) -> list[JSONObject]:
        """The RFC 6902 diff between two revisions, each given by number or by time (``*_as_of``)."""
        return (await self.diff_between(name, from_revision, to_revision, from_as_of=from_as_of, to_as_of=to_as_of))[2]

    diff_between = reads.diff

    async def changes_after(self, sequence: int, *, limit: int = 100) -> list[Change]:
        changes = await self.store.changes_after(sequence, limit=limit)
        return [c for c in changes if sees(self.principal, c)]

    wait_for_changes = feed.wait_for_changes

    # -- branches (service/branches.py), merge (merging.py), migration (migration.py) -------

    fork = branches.fork_context
    forked_from = branches.context_lineage
    merge = merging.merge
    migrate = migration.migrate
    lineage = branches.context_parents

    # -- events and dead letters (service/handling.py), metrics (metrics.py) ----------------

    emit_event = handling.emit_event
    list_dead_letters = handling.list_dead_letters
    replay_dead_letter = handling.replay_dead_letter
    collect_metrics = metrics.collect

    # -- access (service/access.py) and the audit log (service/audit.py) -------------------

    async def authorize(self, right: Right, name: str, *, missing: str | None = None, itemize: bool = True) -> None:
        """The one place where a grant is checked: return if this principal has ``right`` on
        context ``name``, raise otherwise. Every name-addressed operation calls it (reads need
        ``read``; register, update, merge into a target, events, rollback and dead-letter replay
        need ``write``; unregister and migrate need ``admin``).

        It runs before any read of the context (grants depend on the name only), so a denied
        request does the same store work whether the context exists or not, and never reads or
        decodes it. A ``read`` the principal lacks raises exactly what a missing context raises
        (:class:`NotFoundError` with ``missing``, by default the text of :meth:`get`). A lacking
        ``write``/``admin`` raises :class:`AccessDeniedError` naming the grant.

        Every denial is counted in the metrics and the audit log (see :meth:`audit_denied`);
        ``itemize=False`` (for a name the caller did not give but the store told: a context id,
        a dead letter id) only counts it, so that answer too costs what a missing id costs.
        """
        await authorize(self.audit, self.caller, right, name, missing_text=missing, itemize=itemize)

    async def audit_denied(
        self,
        operation: str,
        name: str | None,
        error: AccessDeniedError,
        *,
        principal: Principal | None = None,
        itemize: bool = True,
    ) -> None:
        """Record a denied request (as ``principal``, default this manager's); call it where
        :class:`AccessDeniedError` is raised, then raise.

        Counted exactly in the metrics. In the audit log a principal gets at most one row per
        minute (:class:`~groundhog_mcp.service.audit.DenialLog`): the first denial of a minute is
        written now, in its own transaction; the others are counted and their count written with
        the principal's next row. Recorded once per error (``error.audited``). A failure to
        record is logged, never raised instead of the denial."""
        await self.audit.denied(self.caller, operation, name, error, principal=principal, itemize=itemize)

    async def flush_denials(self) -> None:
        """Write the count of every denial not yet in the audit log now (one summary row per
        principal with a count), whether or not its minute has passed."""
        await self.audit.write_summaries(everything=True)

    async def audit_log(
        self,
        *,
        context: str | None = None,
        prefix: str = "",
        principal: str | None = None,
        operation: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 50,
        newest_first: bool = True,
    ) -> AuditPage:
        """The audit rows of this principal's namespace, a page at a time, filtered by context
        (exact name or name prefix), principal, operation and time (``since`` ≤ t < ``until``).

        Needs the ``admin`` grant on ``context``, else on ``prefix`` (no filter: on every context).
        Denials without a context are listed only without a context or prefix filter."""
        if context is not None:
            check_name(context, field="context")
        if prefix:
            check_prefix(prefix)
        await self.authorize("admin", context if context is not None else prefix)
        return await self.audit.page(
            self.principal.namespace,
            max_page=self.limits.max_page,
            context=context,
            prefix=prefix,
            principal=principal,
            operation=operation,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
            newest_first=newest_first,
        )

    async def verify_audit(self, key: Signer) -> AuditVerification:
        """``groundhog-mcp audit verify`` of this namespace's own chain, for admins of the whole
        namespace: it reads no other namespace's row, and its answer (a row count, the first
        broken row) is about this namespace only."""
        await self.authorize("admin", "")
        return await verify_audit_chain(self.store, key, namespace=self.principal.namespace)

    # -- leases (service/leases.py) ---------------------------------------------------------

    take_lease = leases.take_lease

    async def renew_lease(self, name: str, token: int | None, *, ttl_seconds: float | None = None) -> LeaseGrant:
        """Extend the live lease ``token`` to ``ttl_seconds`` from now."""
        return await leases.lease_action(self, name, "renew", token=token, ttl_seconds=ttl_seconds)

    async def release_lease(self, name: str, token: int | None) -> LeaseGrant:
        """Release lease ``token`` (a release of a lease already released does nothing)."""
        return await leases.lease_action(self, name, "release", token=token)

    def leased(
        self,
        name: str,
        *,
        ttl_seconds: float | None = None,
        wait_seconds: float = 0,
        holder: str | None = None,
    ) -> AbstractAsyncContextManager[StateManager]:
        """``async with manager.leased(name) as agent:`` take the lease; every write through
        ``agent`` (a view of this manager) presents its token; release it at the end."""
        return leases.leased(self, name, ttl_seconds=ttl_seconds, wait_seconds=wait_seconds, holder=holder)

    async def lease_of(self, context: StoredContext) -> Lease | None:
        """The lease held on ``context`` now (read with :meth:`get`), None when it is free."""
        return await leases.held_lease(self.store, context)

    async def last_writes(self, contexts: Sequence[StoredContext]) -> dict[str, HistoryEntry]:
        """The newest revision of each of ``contexts`` (read with :meth:`get` or :meth:`list`):
        who wrote it, when and how, by name; one store query for a whole page. Unlike
        :meth:`history`, an entry's ``parents`` are not read (empty)."""
        names = {context.id: context.name for context in contexts}
        found = await self.store.last_writes(self.principal.namespace, list(names))
        return {names[context_id]: entry for context_id, entry in found.items()}

    async def leases_of(self, contexts: Sequence[StoredContext]) -> dict[str, Lease]:
        """The leases held now on ``contexts`` (read with :meth:`get` or :meth:`list`), by name;
        one store query for a whole page."""
        return await leases.held_leases(self.store, contexts)
