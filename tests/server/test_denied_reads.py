"""Every read tool and resource, through the SDK's in-memory client: a context the caller may
not read answers exactly as a missing one, after exactly the same store work (nothing of it read
or decrypted)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.shared.exceptions import MCPError

from groundhog_mcp import ContextState, StateManager
from groundhog_mcp.app import Settings, create_server
from groundhog_mcp.errors import EventHandlingError
from groundhog_mcp.models import Grant, Principal
from groundhog_mcp.security.crypto import Keyring, generate_key, parse_key
from groundhog_mcp.service import Event
from groundhog_mcp.store import SQLiteStore
from tests.service.test_access import CountingStore


async def _answer(client: Client, kind: str, target: str, arguments: dict[str, Any]) -> str:
    """What the client sees: the tool's error text, or the resource error, or the result."""
    if kind == "resource":
        try:
            result = await client.read_resource(target)
        except MCPError as exc:
            return f"resource error {exc.error.code}: {exc.error.message}"
        return repr(result)
    result = await client.call_tool(target, arguments)
    return ("error: " if result.is_error else "ok: ") + "".join(getattr(c, "text", "") for c in result.content)


async def test_every_read_tool_and_resource_answers_a_denied_name_like_a_missing_one(db_path: Path) -> None:
    store = CountingStore(SQLiteStore(db_path, cipher=Keyring(parse_key(generate_key(), source="test"))))
    reader = Principal("R", "default", grants=(Grant.parse("read:shared."),))
    manager = StateManager(store, principal=reader)  # type: ignore[arg-type]
    manager.denial_summary_interval = 3600  # no background summary row in the middle of a count
    manager.denials.window = 0.0  # every denial writes its own audit row: the same for both names
    await manager.start()
    try:
        owner = manager.with_principal(Principal())
        big = {"blob": "x" * 500_000, "items": list(range(20_000))}
        await owner.register("secret", state=ContextState(data=big))
        await owner.update("secret", merge_patch_={"n": 1})
        handlers = {"inc": {"action": "increment", "path": "/n", "max_attempts": 1}}
        await owner.register("secret.events", state=ContextState(data={"n": "NaN"}), handlers=handlers)
        await owner.register("shared.doc")
        try:
            await owner.emit_event("secret.events", Event("inc", {"pad": "y" * 100_000}))
        except EventHandlingError:
            pass
        else:
            raise AssertionError("the event should have been dead-lettered")
        letter_id = (await owner.list_dead_letters(name="secret.events"))[0].id

        server = create_server(Settings(database=str(db_path), tools="all"), manager)  # pyright: ignore[reportArgumentType]
        reads: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = [
            ("tool", "get_context", lambda n: {"name": n}),
            ("tool", "get_state", lambda n: {"name": n}),
            ("tool", "get_state", lambda n: {"name": n, "revision": 1}),
            ("tool", "get_state", lambda n: {"name": n, "path": "/blob"}),
            ("tool", "get_history", lambda n: {"name": n}),
            ("tool", "diff_states", lambda n: {"name": n, "from_revision": 1}),
            ("tool", "validate_state", lambda n: {"name": n}),
            ("tool", "get_metrics", lambda n: {"names": [n]}),
            ("tool", "merge_states", lambda n: {"inputs": [{"context": n}, {"context": "shared.doc"}]}),
            ("tool", "merge_states", lambda n: {"inputs": [{"context": "shared.doc"}, {"context": n, "revision": 1}]}),
            ("tool", "list_dead_letters", lambda n: {"name": f"{n}.events"}),
            ("tool", "replay_dead_letter", lambda n: {"id": letter_id if n == "secret" else letter_id + 100}),
        ]
        resources = ["groundhog://contexts/{}", "groundhog://contexts/{}/state", "groundhog://contexts/{}/history"]
        resources.append("groundhog://contexts/{}/revisions/1")
        async with Client(server) as client:
            cases: list[tuple[str, str, Callable[[str], dict[str, Any]]]] = reads + [
                ("resource", uri, lambda n: {}) for uri in resources
            ]
            for kind, target, arguments in cases:
                seen: list[tuple[str, list[str]]] = []
                for name in ("secret", "absent"):
                    store.calls.clear()
                    answer = await _answer(client, kind, target.format(name), arguments(name))
                    answer = re.sub(rf"\b{name}\b|#{letter_id}\b|#{letter_id + 100}\b", "X", answer)
                    seen.append((answer, store.calls[:]))
                assert seen[0] == seen[1], (target, seen)
                assert "ok: " not in seen[0][0] or target == "list_dead_letters", (target, seen)
                if target != "merge_states":  # (a merge reads and decrypts its readable input)
                    assert "cipher.open" not in seen[0][1], (target, seen)
    finally:
        await manager.close()
