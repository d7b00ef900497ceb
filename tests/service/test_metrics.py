"""Per-context metrics belong to one namespace: same-named contexts of two tenants stay apart."""

from __future__ import annotations

from groundhog_mcp import ContextState, Principal, StateManager


async def test_same_name_in_two_namespaces_keeps_separate_figures(manager: StateManager) -> None:
    team_a = manager.with_principal(Principal(name="ann", namespace="team-a"))
    team_b = manager.with_principal(Principal(name="bob", namespace="team-b"))
    await team_a.register("notes", state=ContextState(data={"n": 0}))
    await team_b.register("notes", state=ContextState(data={"n": 0}))
    for n in range(3):
        await team_a.update("notes", data={"n": n + 1})
    (a,) = (await team_a.collect_metrics(["notes"]))[1]
    (b,) = (await team_b.collect_metrics(["notes"]))[1]
    assert (a.state_updates, a.write_latency.count) == (3, 3)
    assert (b.state_updates, b.write_latency.count) == (0, 0)
