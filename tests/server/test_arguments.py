"""Strict arguments: for every tool from tools/list and every argument (and every field of an
argument object), a value of a JSON type the input schema does not allow is refused before the
tool runs, naming the argument, the expected type and the type given; nothing is written."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mcp import Client

from groundhog_mcp.app import Settings, create_server
from tests.server.conftest import call

JSON_TYPES = ("boolean", "integer", "number", "string", "object", "array", "null")
# A valid value for each required argument, so that the wrong one is the only problem.
VALID = {
    "name": "t",
    "new_name": "t2",
    "from_revision": 1,
    "revision": 1,
    "type": "inc",
    "id": 1,
    "inputs": [{"context": "t"}, {"context": "t"}],
    "action": "take",
}


def accepted(schema: dict[str, Any], defs: dict[str, Any]) -> set[str]:
    """The JSON types a (sub)schema of a tool's inputSchema accepts."""
    if "$ref" in schema:
        return accepted(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        return set().union(*(accepted(s, defs) for s in schema["anyOf"]))
    if "enum" in schema or "const" in schema:
        values = schema.get("enum", [schema.get("const")])
        return {{bool: "boolean", int: "integer", float: "number", str: "string"}[type(v)] for v in values}
    declared = schema.get("type")
    if declared is None:
        return set(JSON_TYPES)  # any JSON value
    types = {declared} if isinstance(declared, str) else set(declared)
    return types | ({"integer"} if "number" in types else set())


def wrong_values(schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(JSON type, value)`` for each JSON type the schema refuses: bool for int, strings that
    lax parsing would turn into what is expected, 2.0 for an int, an object for a string, …"""
    allowed = accepted(schema, defs)
    as_text = (
        '{"a": 1}' if "object" in allowed else "[]" if "array" in allowed else "true" if "boolean" in allowed else "3"
    )
    samples: dict[str, Any] = {
        "boolean": True,
        "integer": 3,
        "number": 2.0 if "integer" in allowed else 2.5,
        "string": as_text,
        "object": {"a": 1},
        "array": ["a"],
        "null": None,
    }
    for json_type in JSON_TYPES:
        if json_type not in allowed and not (json_type == "number" and "number" in allowed):
            yield json_type, samples[json_type]
    if "integer" in allowed and "number" not in allowed:
        assert samples["number"] == 2.0  # 2.0 for an integer: a number, even without a fraction


def inner_attempts(argument: str, schema: dict[str, Any], defs: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    """Wrong types one level down: in each field of an object model argument (or of the items of
    an array of them), in the items of an array, in the values of a map."""
    for option in schema.get("anyOf", [schema]):
        declared = option.get("type")
        in_array = declared == "array" or (isinstance(declared, list) and "array" in declared)
        target = option.get("items", {}) if in_array else option
        if "$ref" in target:
            model = defs[target["$ref"].rsplit("/", 1)[-1]]
            for field, field_schema in model.get("properties", {}).items():
                for json_type, value in wrong_values(field_schema, defs):
                    nested = {field: value}
                    where = f"{argument}.0.{field}" if in_array else f"{argument}.{field}"
                    yield where, json_type, [nested, nested] if in_array else nested
        elif in_array and target:
            for json_type, value in wrong_values(target, defs):
                yield f"{argument}.0", json_type, [value]
        elif isinstance(option.get("additionalProperties"), dict) and option["additionalProperties"]:
            for json_type, value in wrong_values(option["additionalProperties"], defs):
                yield f"{argument}.k", json_type, {"k": value}


def fingerprint(database: Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(database.parent.glob(database.name + "*"))
        if not f.name.endswith("-shm")  # the WAL index changes on reads too; it holds no data
    }


async def test_every_argument_of_every_tool_refuses_every_wrong_json_type(db_path: Path) -> None:
    server = create_server(Settings(database=str(db_path), tools="all"))
    async with Client(server) as client:
        handlers = {"inc": {"action": "increment", "path": "/n"}}
        await call(client, "register_context", name="t", state={"data": {"n": 1}}, event_handlers=handlers)
        await call(client, "update_state", name="t", data={"n": 2})
        before = fingerprint(db_path)
        tools = (await client.list_tools()).tools
        assert len(tools) == 22
        cases = 0
        covered: set[str] = set()
        for tool in tools:
            schema = tool.input_schema
            defs: dict[str, Any] = schema.get("$defs", {})
            required = {key: VALID[key] for key in schema.get("required", [])}
            for argument, argument_schema in schema["properties"].items():
                attempts = [(argument, json_type, value) for json_type, value in wrong_values(argument_schema, defs)]
                attempts += inner_attempts(argument, argument_schema, defs)
                for where, json_type, value in attempts:
                    top = where.split(".", 1)[0]
                    arguments = {**required, top: value}
                    result = await client.call_tool(tool.name, arguments)
                    text = "".join(getattr(c, "text", "") for c in result.content)
                    assert result.is_error, (tool.name, where, value, text)
                    assert text.startswith(f"Error executing tool {tool.name}: invalid_argument: "), text
                    assert f"{where}: expected " in text and f", got {json_type}" in text, (tool.name, where, text)
                    assert "Traceback" not in text
                    cases += 1
                    covered.add(f"{tool.name}:{where}")
        assert fingerprint(db_path) == before  # nothing was written by any refused call
        assert cases > 400, cases
        assert {
            "update_state:expected_revision",
            "unregister_context:purge",
            "register_context:state.data",
            "merge_states:inputs.0.revision",
            "merge_states:base.context",
            "merge_states:reducers.k",
            "register_context:event_handlers.k",
            "wait_for_change:contexts.0",
            "audit_log:since",
        } <= covered
        # The documented examples, one by one.
        for arguments, message in [
            (
                {"name": "t", "data": {}, "expected_revision": True},
                "expected_revision: expected integer, got boolean",
            ),
            (
                {"name": "t", "data": {}, "expected_revision": "2"},
                "expected_revision: expected integer, got string",
            ),
            (
                {"name": "t", "data": {}, "expected_revision": 2.0},
                "expected_revision: expected integer, got number",
            ),
            ({"name": "t", "data": '{"n": 9}'}, "data: expected object, got string"),
        ]:
            result = await client.call_tool("update_state", arguments)
            assert result.is_error
            assert "".join(getattr(c, "text", "") for c in result.content) == (
                f"Error executing tool update_state: invalid_argument: {message}"
            )
        result = await client.call_tool("unregister_context", {"name": "t", "purge": "yes"})
        assert result.is_error and "purge: expected boolean, got string" in str(result.content)
        assert fingerprint(db_path) == before
        # Right types still pass: an integer where a number is expected, an RFC 3339 string for a time.
        await call(client, "wait_for_change", timeout=0)
        await call(client, "audit_log", since="2026-01-01T00:00:00Z")
