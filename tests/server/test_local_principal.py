"""stdio's local principal: namespace ``default`` with every right, unless configured otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from groundhog_mcp.app import Settings, create_server, load_settings
from groundhog_mcp.errors import InitializationError
from groundhog_mcp.models import ALL_RIGHTS, Grant, Principal
from tests.server.conftest import call, fail


def test_grants_from_the_environment_and_their_errors(tmp_path: Path) -> None:
    default = load_settings(env={}, config_file=_empty(tmp_path)).local_principal()
    assert default == Principal("local", "default", ALL_RIGHTS)
    settings = load_settings(
        env={"GROUNDHOG_GRANTS": "read:, write:notes.", "GROUNDHOG_PRINCIPAL": "desk"}, config_file=_empty(tmp_path)
    )
    assert settings.local_principal() == Principal("desk", "default", (Grant("", "read"), Grant("notes.", "write")))
    with pytest.raises(InitializationError, match=r"grants: .*grant 'read:notes/'.*names cannot contain '/'"):
        load_settings(env={"GROUNDHOG_GRANTS": "read:notes/"}, config_file=_empty(tmp_path))


async def test_a_configured_read_only_principal_cannot_write(db_path: Path) -> None:
    writer = create_server(Settings(database=str(db_path), tools="all"))
    async with Client(writer) as client:
        await call(client, "register_context", name="notes.todo")
        await call(client, "register_context", name="private")
    grants = ["read:notes.", "write:notes.mine"]
    reader = create_server(Settings(database=str(db_path), principal="viewer", grants=grants, tools="all"))
    async with Client(reader) as client:
        assert (await call(client, "get_state", name="notes.todo"))["revision"] == 1
        text = await fail(client, "update_state", name="notes.todo", data={"x": 1})
        assert text.endswith("access: the write grant on 'notes.todo' is missing for principal 'viewer'")
        await call(client, "register_context", name="notes.mine")
        listed = await call(client, "list_contexts")
        assert [c["name"] for c in listed["contexts"]] == ["notes.mine", "notes.todo"]
        hidden = await fail(client, "get_context", name="private")
        assert hidden == "Error executing tool get_context: name: no context named 'private'"


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.toml"
    path.write_text("", encoding="utf-8")
    return path
