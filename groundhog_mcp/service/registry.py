"""The specification's ``ContextRegistry`` and ``Context``, over a :class:`StateManager`."""

from __future__ import annotations

from collections.abc import Mapping

from groundhog_mcp.errors import EventHandlingError, InitializationError, NotFoundError
from groundhog_mcp.models import ContextConfig, ContextId, ContextInfo, ContextState, JSONObject
from groundhog_mcp.service.events import Event, EventHandler
from groundhog_mcp.service.state import EventResult, StateManager, WriteResult
from groundhog_mcp.store.base import StoredContext

__all__ = ["Context", "ContextRegistry", "ContextTemplate", "StagedContext", "info_of"]


class Context:
    """A named unit of state. Create it with a :class:`ContextConfig`, register it with a
    :class:`ContextRegistry`, then read and write its state."""

    def __init__(
        self,
        config: ContextConfig | None = None,
        *,
        schema: JSONObject | None = None,
        event_handlers: Mapping[str, EventHandler] | None = None,
    ) -> None:
        self.config = config
        self.schema = schema
        self.event_handlers: dict[str, EventHandler] = dict(event_handlers or {})
        self.id: ContextId | None = None
        self._manager: StateManager | None = None

    @property
    def name(self) -> str:
        return self._require_config().name

    async def initialize(self, config: ContextConfig) -> None:
        """Load the configuration; the initial state is ``config.state`` or an empty one."""
        if self._manager is not None:
            raise InitializationError(f"context {self.name!r} is already registered; initialize it before registering")
        self.config = config

    async def get_state(self) -> ContextState:
        manager, context_id = self._require_bound()
        return await manager.load_state(context_id)

    async def update_state(self, state: ContextState, *, expected_revision: int | None = None) -> WriteResult | None:
        """Write ``state`` as a new revision (inside an event handler: staged, committed with the event)."""
        manager, context_id = self._require_bound()
        return await manager.save_state(context_id, state, expected_revision=expected_revision)

    async def handle_event(self, event: Event) -> EventResult:
        """Handle ``event`` with this context's handler for its type (in-process handlers first, then
        the declarative or plugin handlers stored with the context), atomically, with retries and
        dead letters as for ``emit_event``."""
        manager, _ = self._require_bound()
        return await manager.emit_event(self.name, event, handlers=self.event_handlers)

    async def cleanup(self) -> None:
        """Release this handle. The stored context stays until it is unregistered."""
        self._manager = None

    def _bind(self, manager: StateManager, context_id: ContextId) -> None:
        self._manager = manager
        self.id = context_id

    def _require_config(self) -> ContextConfig:
        if self.config is None:
            raise InitializationError("context: no ContextConfig; pass one or call initialize(config) first")
        return self.config

    def _require_bound(self) -> tuple[StateManager, ContextId]:
        if self._manager is None or self.id is None:
            raise InitializationError("context: not registered (or cleaned up); register it with a ContextRegistry")
        return self._manager, self.id


class StagedContext(Context):
    """What a handler sees while an event is processed: reads the state as of the attempt,
    and ``update_state`` stages the new state, which commits together with the event record."""

    def __init__(self, stored: StoredContext) -> None:
        super().__init__(ContextConfig(name=stored.name, version=stored.version), schema=stored.schema)
        self.id = stored.id
        self._current = stored.state
        self.staged: ContextState | None = None

    async def get_state(self) -> ContextState:
        return self.staged or self._current

    async def update_state(self, state: ContextState, *, expected_revision: int | None = None) -> WriteResult | None:
        self.staged = state
        return None

    async def handle_event(self, event: Event) -> EventResult:
        raise EventHandlingError("event: a handler cannot emit events on the context it is handling")


class ContextTemplate(Context):
    """A context definition: configuration plus event handlers per event type."""

    def __init__(
        self,
        config: ContextConfig,
        event_handlers: Mapping[str, EventHandler] | None = None,
        *,
        schema: JSONObject | None = None,
    ) -> None:
        super().__init__(config, schema=schema, event_handlers=event_handlers)


def info_of(stored: StoredContext) -> ContextInfo:
    return ContextInfo(
        id=stored.id,
        name=stored.name,
        version=stored.version,
        state=stored.state,
        metadata=stored.metadata,
        revision=stored.revision,
        namespace=stored.namespace,
        settings=stored.settings,
        schema=stored.schema,
        created_at=stored.created_at,
        updated_at=stored.updated_at,
    )


class ContextRegistry:
    """Registers contexts and finds them again by id."""

    def __init__(self, state_manager: StateManager) -> None:
        self.state_manager = state_manager
        self._live: dict[ContextId, Context] = {}

    async def register_context(self, context: Context) -> ContextId:
        config = context._require_config()  # pyright: ignore[reportPrivateUsage]
        result = await self.state_manager.register(
            config.name,
            version=config.version,
            state=config.state,
            settings=config.settings,
            schema=context.schema,
            context_id=context.id,
        )
        stored = result.context if isinstance(result, WriteResult) else result
        context._bind(self.state_manager, stored.id)  # pyright: ignore[reportPrivateUsage]
        self._live[stored.id] = context
        return stored.id

    async def unregister_context(self, context_id: ContextId) -> None:
        stored = await self._stored(context_id)
        await self.state_manager.unregister(stored.name)
        context = self._live.pop(context_id, None)
        if context is not None:
            await context.cleanup()

    async def get_context(self, context_id: ContextId) -> Context:
        stored = await self._stored(context_id)
        context = self._live.get(context_id)
        if context is None or context._manager is None:  # pyright: ignore[reportPrivateUsage]
            context = context or Context(ContextConfig(name=stored.name, version=stored.version), schema=stored.schema)
            context._bind(self.state_manager, stored.id)  # pyright: ignore[reportPrivateUsage]
            self._live[stored.id] = context
        return context

    async def list_contexts(self) -> list[ContextInfo]:
        infos: list[ContextInfo] = []
        cursor: str | None = None
        while True:
            page = await self.state_manager.list(cursor=cursor, limit=self.state_manager.limits.max_page)
            infos += [info_of(s) for s in page.contexts]
            if page.next_cursor is None:
                return infos
            cursor = page.next_cursor

    async def _stored(self, context_id: ContextId) -> StoredContext:
        stored = await self.state_manager.store.get_by_id(context_id)
        missing = f"context_id: no context with id {context_id}"
        if stored is None or stored.namespace != self.state_manager.principal.namespace:
            raise NotFoundError(missing)
        await self.state_manager.authorize("read", stored.name, missing=missing)
        return stored
