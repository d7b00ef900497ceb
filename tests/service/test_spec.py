"""The specification's two integration tests, ported step for step."""

from __future__ import annotations

import uuid

from groundhog_mcp import Context, ContextConfig, ContextRegistry, ContextState, StateManager


class TestContext(Context):
    """The specification's ``TestContext::new()``: a context with a plain configuration."""

    __test__ = False

    def __init__(self) -> None:
        super().__init__(ContextConfig(name="test-context", version="1.0.0"))


async def test_context_lifecycle(manager: StateManager) -> None:
    registry = ContextRegistry(manager)
    context = TestContext()

    # Test registration
    context_id = await registry.register_context(context)
    assert await registry.get_context(context_id) is not None

    # Test state management
    context = await registry.get_context(context_id)
    state = ContextState.new()
    await context.update_state(state)

    loaded_state = await context.get_state()
    assert state == loaded_state

    # Test cleanup
    await context.cleanup()
    await registry.unregister_context(context_id)


async def test_state_synchronization(manager: StateManager) -> None:
    state_manager = manager
    context_id = uuid.uuid4()

    # Test state saving
    state = ContextState.new().with_data("key", "value").with_metadata("version", "1.0.0")

    await state_manager.save_state(context_id, state)

    # Test state loading
    loaded_state = await state_manager.load_state(context_id)

    assert state == loaded_state

    # Test state merging
    states = [state, state]
    merged = await state_manager.merge_states(states)

    assert await state_manager.validate_state(merged) is None
