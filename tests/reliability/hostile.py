"""The hostile seed table: inputs a careless or malicious client sends, and what each must produce.

Every case names the tool, the arguments and the words its error must contain (the field and
the rule). The fuzz tests replay the table in memory (SDK ``Client(server)``) and over stdio
(hand-written JSON-RPC lines), against the contexts :data:`SEED_CONTEXTS` creates.

Some values cannot travel through the SDK client (it serialises in JSON mode: NaN and
Infinity become ``null``, a lone surrogate raises ``UnicodeEncodeError``): those cases are
``memory=False`` and run over stdio only, where ``raw`` maps a placeholder string to the
literal written into the line (``NaN``, ``1e400``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from groundhog_mcp.models import ContextState, dumps

__all__ = [
    "MAX_STATE_BYTES",
    "SEED_CONTEXTS",
    "Hostile",
    "hostile_cases",
    "nested",
    "state_data_of_size",
]

MAX_STATE_BYTES = 1024 * 1024

TYPED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"count": {"type": "integer", "minimum": 0}, "label": {"type": "string", "maxLength": 20}},
    "required": ["count"],
}

# name -> register_context arguments; every case runs against these.
SEED_CONTEXTS: dict[str, dict[str, Any]] = {
    "alpha": {"state": {"data": {"n": 1, "items": [1, 2, 3], "text": "hello"}, "metadata": {"owner": "seed"}}},
    "typed": {"state": {"data": {"count": 0}}, "json_schema": TYPED_SCHEMA},
    "big": {"state": {"data": {}}},
    "accepted": {"state": {"data": {}}},
}

Outcome = Literal["error", "accepted"]


@dataclass(frozen=True)
class Hostile:
    """One hostile request.

    ``outcome='error'``: a tool error (or JSON-RPC error) containing every ``mentions``
    (case-insensitive), and no stored change. ``'accepted'``: valid if surprising JSON (NUL
    characters, a state of exactly the size limit): it must succeed and read back exactly; it
    only ever writes to the ``accepted`` / ``big`` contexts.
    """

    id: str
    tool: str
    arguments: dict[str, Any]
    mentions: tuple[str, ...] = ()
    outcome: Outcome = "error"
    memory: bool = True
    raw: dict[str, str] = field(default_factory=dict)
    # For an accepted state too large to read back inline: the state_size get_context must report.
    size: int | None = None
    # The stdio transport of the MCP SDK drops this line without a reply (see test_fuzz_stdio.py).
    stdio_dropped: str | None = None


def nested(depth: int) -> dict[str, Any]:
    """An object ``depth`` levels deep (the outermost object is level 1)."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def state_data_of_size(size: int, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """``data`` whose serialised state (data, metadata, timestamp, version) is exactly ``size`` bytes."""
    overhead = len(dumps(ContextState(data={"blob": ""}, metadata=metadata or {}).to_json()).encode("utf-8"))
    return {"blob": "x" * (size - overhead)}


_NAMES_REFUSED = {
    "empty": "",
    "slash": "a/b",
    "dotdot": "..",
    "dot": ".",
    "dotdot-slash": "../alpha",
    "too-long": "x" * 129,
    "cyrillic-a": "\u0430lpha",  # CYRILLIC SMALL LETTER A, looks like the Latin one
    "fullwidth": "\uff41\uff4c\uff50\uff48\uff41",
    "zero-width": "alpha\u200b",
    "nul": "alpha\x00",
    "newline": "al\npha",
    "space": " alpha",
    "percent": "alpha%2F",
    "rtl-override": "\u202ealpha",
}


def _name_cases() -> list[Hostile]:
    cases: list[Hostile] = []
    for label, name in _NAMES_REFUSED.items():
        cases.append(Hostile(f"get_state/name-{label}", "get_state", {"name": name}, ("name",)))
        cases.append(Hostile(f"update_state/name-{label}", "update_state", {"name": name, "data": {"x": 1}}, ("name",)))
        cases.append(Hostile(f"register_context/name-{label}", "register_context", {"name": name}, ("name",)))
        cases.append(Hostile(f"unregister_context/name-{label}", "unregister_context", {"name": name}, ("name",)))
    for label, name in {"int": 123, "null": None, "list": ["alpha"], "object": {"$ne": ""}, "bool": True}.items():
        cases.append(Hostile(f"get_state/name-{label}", "get_state", {"name": name}, ("name",)))
    cases.append(
        Hostile(
            "get_state/name-lone-surrogate",
            "get_state",
            {"name": "\ud800"},
            ("name",),
            memory=False,
            stdio_dropped="lone surrogate",
        )
    )
    cases.append(Hostile("get_state/missing", "get_state", {"name": "nobody"}, ("name", "no context")))
    return cases


def _number_cases() -> list[Hostile]:
    cases: list[Hostile] = []
    for label, literal, rule in (
        ("nan", "NaN", "NaN"),
        ("infinity", "Infinity", "Infinity"),
        ("minus-infinity", "-Infinity", "Infinity"),
        ("1e400", "1e400", "Infinity"),
        ("minus-1e400", "-1e400", "Infinity"),
    ):
        placeholder = f"@raw:{label}@"
        cases.append(
            Hostile(
                f"update_state/data-{label}",
                "update_state",
                {"name": "alpha", "data": {"v": placeholder}},
                ("data", rule),
                memory=False,
                raw={placeholder: literal},
            )
        )
        cases.append(
            Hostile(
                f"update_state/metadata-{label}",
                "update_state",
                {"name": "alpha", "metadata": {"v": [1, placeholder]}},
                ("metadata", rule),
                memory=False,
                raw={placeholder: literal},
            )
        )
        cases.append(
            Hostile(
                f"register_context/state-{label}",
                "register_context",
                {"name": f"fresh-{label}", "state": {"data": {"deep": {"v": placeholder}}}},
                ("data", rule),
                memory=False,
                raw={placeholder: literal},
            )
        )
    for label, value in (("2^64", 2**64), ("-2^63-1", -(2**63) - 1), ("10^30", 10**30), ("-10^30", -(10**30))):
        cases.append(
            Hostile(
                f"update_state/data-int-{label}",
                "update_state",
                {"name": "alpha", "data": {"v": value}},
                ("data", "64 bits"),
            )
        )
    cases.append(
        Hostile(
            "update_state/data-int-5000-digits",
            "update_state",
            {"name": "alpha", "data": {"v": 10**4999}},
            ("integer",),  # refused by the server's 64-bit rule, or by the transport's 4300-digit parse limit
            stdio_dropped="integer literal over 4300 digits",
        )
    )
    return cases


def _string_cases() -> list[Hostile]:
    return [
        Hostile(
            "update_state/data-lone-surrogate-value",
            "update_state",
            {"name": "alpha", "data": {"t": "ok \ud800"}},
            ("data", "surrogate"),
            memory=False,
            stdio_dropped="lone surrogate",
        ),
        Hostile(
            "update_state/data-lone-surrogate-key",
            "update_state",
            {"name": "alpha", "data": {"\udfff": 1}},
            ("data", "surrogate"),
            memory=False,
            stdio_dropped="lone surrogate",
        ),
        Hostile(
            "update_state/data-nul-value",
            "update_state",
            {"name": "accepted", "data": {"t": "a\x00b", "c": "\x01\x1b[2J\r"}},
            outcome="accepted",
        ),
        Hostile(
            "update_state/data-nul-key", "update_state", {"name": "accepted", "data": {"a\x00b": 1}}, outcome="accepted"
        ),
        Hostile(
            "update_state/metadata-nul",
            "update_state",
            {"name": "accepted", "metadata": {"k\x00": "v\x00"}},
            outcome="accepted",
        ),
    ]


def _depth_cases() -> list[Hostile]:
    cases: list[Hostile] = []
    for depth in (65, 150, 250):
        dropped = "nesting over ~200 levels" if depth >= 200 else None
        cases += [
            Hostile(
                f"update_state/data-depth-{depth}",
                "update_state",
                {"name": "alpha", "data": nested(depth)},
                ("data", "depth", "64"),
                stdio_dropped=dropped,
            ),
            Hostile(
                f"update_state/merge_patch-depth-{depth}",
                "update_state",
                {"name": "alpha", "merge_patch": {"x": nested(depth)}},
                ("depth", "64"),
                stdio_dropped=dropped,
            ),
            Hostile(
                f"update_state/metadata-depth-{depth}",
                "update_state",
                {"name": "alpha", "metadata": nested(depth)},
                ("metadata", "depth", "64"),
                stdio_dropped=dropped,
            ),
            Hostile(
                f"register_context/data-depth-{depth}",
                "register_context",
                {"name": f"deep-{depth}", "state": {"data": nested(depth)}},
                ("data", "depth", "64"),
                stdio_dropped=dropped,
            ),
        ]
    # The limit itself: 64 levels of data are fine (data is level 1 of the state's data object).
    cases.append(
        Hostile(
            "update_state/data-depth-64", "update_state", {"name": "accepted", "data": nested(64)}, outcome="accepted"
        )
    )
    return cases


def _size_cases() -> list[Hostile]:
    return [
        Hostile(
            "update_state/state-1MiB",
            "update_state",
            {"name": "big", "data": state_data_of_size(MAX_STATE_BYTES)},
            outcome="accepted",
            size=MAX_STATE_BYTES,
        ),
        Hostile(
            "update_state/state-1MiB+1",
            "update_state",
            {"name": "big", "data": state_data_of_size(MAX_STATE_BYTES + 1)},
            ("state", str(MAX_STATE_BYTES)),
        ),
        Hostile(
            "register_context/state-1MiB+1",
            "register_context",
            {"name": "too-big", "state": {"data": state_data_of_size(MAX_STATE_BYTES + 1)}},
            ("state", str(MAX_STATE_BYTES)),
        ),
        Hostile(
            "update_state/state-16MiB",
            "update_state",
            {"name": "big", "data": {"blob": "y" * (16 * 1024 * 1024)}},
            ("state", str(MAX_STATE_BYTES)),
        ),
    ]


def _argument_cases() -> list[Hostile]:
    return [
        # wrong types
        Hostile("update_state/data-string", "update_state", {"name": "alpha", "data": "x"}, ("data",)),
        Hostile("update_state/data-list", "update_state", {"name": "alpha", "data": [1]}, ("data",)),
        Hostile("update_state/data-number", "update_state", {"name": "alpha", "data": 5}, ("data",)),
        Hostile(
            "update_state/merge_patch-list", "update_state", {"name": "alpha", "merge_patch": [1]}, ("merge_patch",)
        ),
        Hostile(
            "update_state/expected_revision-string",
            "update_state",
            {"name": "alpha", "data": {}, "expected_revision": "one"},
            ("expected_revision",),
        ),
        Hostile(
            "update_state/expected_revision-negative",
            "update_state",
            {"name": "alpha", "data": {}, "expected_revision": -1},
            ("expected_revision",),
        ),
        Hostile(
            "update_state/expected_revision-fraction",
            "update_state",
            {"name": "alpha", "data": {}, "expected_revision": 1.5},
            ("expected_revision",),
        ),
        Hostile(
            "update_state/expected_revision-huge",
            "update_state",
            {"name": "alpha", "data": {}, "expected_revision": 2**70},
            ("expected_revision",),
        ),
        Hostile(
            "update_state/expected_revision-stale",
            "update_state",
            {"name": "alpha", "data": {}, "expected_revision": 0},
            ("conflict", "revision"),
        ),
        Hostile("register_context/state-number", "register_context", {"name": "fresh", "state": 5}, ("state",)),
        Hostile(
            "register_context/version-not-semver",
            "register_context",
            {"name": "fresh", "version": "1"},
            ("version", "semantic"),
        ),
        Hostile(
            "register_context/state-version-not-semver",
            "register_context",
            {"name": "fresh", "state": {"version": "latest"}},
            ("version", "semantic"),
        ),
        # unknown fields
        Hostile(
            "update_state/unknown-field",
            "update_state",
            {"name": "alpha", "data": {}, "dta": 1},
            ("dta", "not accepted"),
        ),
        Hostile(
            "register_context/state-unknown-field",
            "register_context",
            {"name": "fresh", "state": {"data": {}, "extra": 1}},
            ("extra",),
        ),
        Hostile("get_state/unknown-field-long", "get_state", {"name": "alpha", "x" * 5000: 1}, ("not accepted",)),
        # combinations the tool refuses
        Hostile(
            "update_state/data-and-merge_patch",
            "update_state",
            {"name": "alpha", "data": {}, "merge_patch": {}},
            ("data", "merge_patch"),
        ),
        Hostile("update_state/nothing", "update_state", {"name": "alpha"}, ("data",)),
        # RFC 6902
        Hostile(
            "update_state/patch-op", "update_state", {"name": "alpha", "patch": [{"op": "nope", "path": "/n"}]}, ("op",)
        ),
        Hostile("update_state/patch-string", "update_state", {"name": "alpha", "patch": "remove /n"}, ("patch",)),
        Hostile(
            "update_state/patch-failing-test",
            "update_state",
            {
                "name": "alpha",
                "patch": [{"op": "replace", "path": "/n", "value": 9}, {"op": "test", "path": "/n", "value": 1}],
            },
            ("test",),
        ),
        Hostile(
            "update_state/patch-remove-missing",
            "update_state",
            {"name": "alpha", "patch": [{"op": "remove", "path": "/missing"}]},
            ("patch", "missing"),
        ),
        Hostile(
            "update_state/patch-move-without-from",
            "update_state",
            {"name": "alpha", "patch": [{"op": "move", "path": "/m"}]},
            ("from",),
        ),
        Hostile(
            "update_state/patch-path-without-slash",
            "update_state",
            {"name": "alpha", "patch": [{"op": "add", "path": "n", "value": 1}]},
            ("patch", "must start with /"),
        ),
        Hostile(
            "update_state/patch-replace-root",
            "update_state",
            {"name": "alpha", "patch": [{"op": "replace", "path": "", "value": [1]}]},
            ("data",),
        ),
        # the context's own JSON Schema
        Hostile(
            "update_state/schema-minimum",
            "update_state",
            {"name": "typed", "data": {"count": -1}},
            ("count", "minimum"),
        ),
        Hostile("update_state/schema-required", "update_state", {"name": "typed", "data": {}}, ("count", "required")),
        Hostile(
            "update_state/schema-maxLength",
            "update_state",
            {"name": "typed", "data": {"count": 1, "label": "x" * 21}},
            ("label", "maxLength"),
        ),
        Hostile(
            "register_context/json_schema-invalid",
            "register_context",
            {"name": "fresh", "json_schema": {"type": "bogus"}},
            ("schema",),
        ),
        Hostile(
            "register_context/json_schema-remote-ref",
            "register_context",
            {"name": "fresh", "json_schema": {"$ref": "http://127.0.0.1:9/evil.json"}},
            ("schema", "$ref"),
        ),
        Hostile("register_context/taken", "register_context", {"name": "alpha"}, ("alpha", "exists")),
        # reads with out-of-range selectors
        Hostile("get_state/revision-0", "get_state", {"name": "alpha", "revision": 0}, ("revision",)),
        Hostile("get_state/revision-future", "get_state", {"name": "alpha", "revision": 99}, ("revision",)),
        Hostile("get_state/revision-huge", "get_state", {"name": "alpha", "revision": 2**70}, ("revision",)),
        Hostile("get_state/path-missing", "get_state", {"name": "alpha", "path": "/nope"}, ("path",)),
        Hostile("get_state/path-no-slash", "get_state", {"name": "alpha", "path": "items"}, ("path",)),
        Hostile("get_state/path-too-long", "get_state", {"name": "alpha", "path": "/" + "a" * 5000}, ("path",)),
        Hostile("get_history/limit-0", "get_history", {"name": "alpha", "limit": 0}, ("limit",)),
        Hostile("get_history/limit-101", "get_history", {"name": "alpha", "limit": 101}, ("limit",)),
        Hostile("list_contexts/limit-101", "list_contexts", {"limit": 101}, ("limit",)),
        Hostile("list_contexts/cursor-garbage", "list_contexts", {"cursor": "not a cursor!"}, ("cursor",)),
        Hostile("list_contexts/prefix-too-long", "list_contexts", {"prefix": "x" * 129}, ("prefix",)),
        Hostile("diff_states/from-future", "diff_states", {"name": "alpha", "from_revision": 99}, ("revision",)),
        Hostile("rollback_state/revision-future", "rollback_state", {"name": "alpha", "revision": 99}, ("revision",)),
        Hostile("rollback_state/revision-0", "rollback_state", {"name": "alpha", "revision": 0}, ("revision",)),
        Hostile("wait_for_change/timeout-61", "wait_for_change", {"timeout": 61}, ("timeout",)),
        Hostile("wait_for_change/timeout-negative", "wait_for_change", {"timeout": -1}, ("timeout",)),
        Hostile(
            "wait_for_change/timeout-nan",
            "wait_for_change",
            {"timeout": "@raw:nan@"},
            ("timeout",),
            memory=False,
            raw={"@raw:nan@": "NaN"},
        ),
        Hostile(
            "wait_for_change/contexts-bad-name", "wait_for_change", {"contexts": ["a/b"], "timeout": 0}, ("contexts",)
        ),
        Hostile(
            "wait_for_change/contexts-101",
            "wait_for_change",
            {"contexts": [f"c{i}" for i in range(101)], "timeout": 0},
            ("contexts",),
        ),
        Hostile("no_such_tool", "no_such_tool", {}, ("no_such_tool",)),
    ]


def hostile_cases(tools: set[str] | None = None) -> list[Hostile]:
    """The whole table; with ``tools``, only the cases for tools the server lists (plus unknown-tool)."""
    cases = _name_cases() + _number_cases() + _string_cases() + _depth_cases() + _size_cases() + _argument_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), "duplicate hostile case ids"
    if tools is None:
        return cases
    return [c for c in cases if c.tool in tools or c.tool == "no_such_tool"]
