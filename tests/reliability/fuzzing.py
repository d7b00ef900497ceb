"""The verdict on one fuzz case, the same in memory and over stdio.

A case is sent through a :class:`Caller` (SDK client or raw JSON-RPC lines); its :class:`Reply`
and the stored state before and after (read from the SQLite file, read-only) decide:

- ``error`` cases: a tool error or JSON-RPC error whose text is clear (tests/reliability/
  battery.py ``assert_clear_error``) and names what the case says; the store unchanged;
- ``accepted`` cases: success, exactly one new change, the value reads back exactly;
- always: the server answers a ping within 2 s afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import reprlib
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.reliability.battery import assert_clear_error
from tests.reliability.hostile import SEED_CONTEXTS, Hostile
from tests.reliability.schema_strategies import arguments_for

__all__ = ["Call", "FuzzTally", "GeneratedRun", "Reply", "StoreSnapshot", "judge", "read_back_with"]


class _ShortRepr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 4000:
            return f"<integer of about {int(x.bit_length() * 0.30103)} digits>"
        return super().repr_int(x, level)


_short = _ShortRepr()
_short.maxstring = 60
_short.maxlong = 40
_short.maxother = 60

# Contexts an 'accepted' case may write to: they are left out of the unchanged-state check.
WRITABLE = frozenset({"accepted", "big"})


@dataclass(frozen=True)
class Reply:
    is_error: bool
    text: str
    structured: dict[str, Any] | None = None
    rpc_error: dict[str, Any] | None = None


@dataclass(frozen=True)
class StoreSnapshot:
    last_sequence: int
    contexts: dict[str, tuple[Any, ...]]

    @classmethod
    def read(cls, database: Path) -> StoreSnapshot:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)) as db:
            (sequence,) = db.execute("SELECT coalesce(max(sequence), 0) FROM changes").fetchone()
            rows = db.execute(
                "SELECT name, id, revision, state, metadata, settings, schema, deleted_at FROM contexts"
                " ORDER BY name, id"
            ).fetchall()
        return cls(int(sequence), {f"{r[0]}#{r[1]}": tuple(r[2:]) for r in rows})

    def without_writable(self) -> dict[str, tuple[Any, ...]]:
        return {k: v for k, v in self.contexts.items() if k.split("#")[0] not in WRITABLE}


@dataclass
class FuzzTally:
    """Figures for the report: cases run, server deaths, unclear errors, other failures."""

    cases: int = 0
    errors: int = 0
    accepted: int = 0
    deaths: int = 0
    unclear: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self, transport: str) -> str:
        return (
            f"{transport}: {self.cases} cases ({self.errors} refused, {self.accepted} accepted), "
            f"{self.deaths} server deaths, {len(self.unclear)} unclear errors, {len(self.failures)} other failures"
        )

    def assert_clean(self) -> None:
        problems = self.unclear + self.failures
        assert not problems, f"{len(problems)} fuzz case(s) failed:\n" + "\n".join(problems[:40])


Call = Callable[[str, dict[str, Any]], Awaitable[Reply]]


def read_back_with(call: Call) -> Callable[[Hostile], Awaitable[str | None]]:
    """Checks that an accepted case's data or metadata reads back exactly; returns a problem or None."""

    async def read_back(case: Hostile) -> str | None:
        name = case.arguments["name"]
        reply = await call("get_state", {"name": name})
        if reply.is_error or reply.structured is None:
            return f"reading {name} back failed: {reply.text[:200]}"
        state = reply.structured.get("state")
        if state is None:
            if case.size is None:
                return f"get_state returned no state inline: {reply.text[:200]}"
            info = await call("get_context", {"name": name})
            size = (info.structured or {}).get("state_size")
            return None if size == case.size else f"state_size {size}, expected {case.size}"
        if "data" in case.arguments and state["data"] != case.arguments["data"]:
            return f"data reads back different: {json.dumps(state['data'], ensure_ascii=True)[:200]}"
        for key, value in case.arguments.get("metadata", {}).items():
            if state["metadata"].get(key) != value:
                return f"metadata {key!r} reads back as {state['metadata'].get(key)!r}"
        return None

    return read_back


def _describe(case: Hostile) -> str:
    return f"{case.id} {case.tool}({_short.repr(case.arguments)})"


async def judge(
    case: Hostile,
    reply: Reply,
    *,
    database: Path,
    before: StoreSnapshot,
    read_back: Callable[[Hostile], Awaitable[str | None]],
    tally: FuzzTally,
) -> None:
    """Record the verdict on one case in ``tally`` (never raises for a case's failure)."""
    tally.cases += 1
    after = StoreSnapshot.read(database)
    where = _describe(case)
    if case.outcome == "error":
        if not reply.is_error:
            tally.failures.append(f"{where}: accepted, should be refused; got {reply.text[:300]}")
        else:
            tally.errors += 1
            try:
                assert_clear_error(reply.text, case.tool, *case.mentions)
            except AssertionError as exc:
                tally.unclear.append(f"{where}: {exc}")
        if after != before:
            tally.failures.append(
                f"{where}: the store changed (sequence {before.last_sequence} -> {after.last_sequence})"
            )
        return
    if reply.is_error:
        tally.failures.append(f"{where}: refused, should be accepted: {reply.text[:300]}")
        return
    tally.accepted += 1
    if after.without_writable() != before.without_writable():
        tally.failures.append(f"{where}: an accepted write changed another context")
    if after.last_sequence != before.last_sequence + 1:
        tally.failures.append(f"{where}: {after.last_sequence - before.last_sequence} changes instead of 1")
    problem = await read_back(case)
    if problem:
        tally.failures.append(f"{where}: {problem}")


# "field: rule" — the house style of every refusal (DESIGN.md section 3).
_FIELD_RULE = re.compile(r"^(Error executing tool \w+: )?(invalid arguments: )?[^\n:]{1,200}: \S")


class GeneratedRun:
    """Schema-generated calls (tests/reliability/schema_strategies.py) against one server.

    ``tools`` is the ``tools/list`` result as JSON; ``call`` and ``alive`` are blocking (the
    transport lives on a portal thread, since Hypothesis drives a plain function). Each
    example draws a tool and its arguments — names are often those of the seed contexts, so
    calls get past "no such context" — and checks: a refusal is a clear ``field: rule``
    message and changes nothing; a success has structured output, and a read-only tool
    (``readOnlyHint``) changes nothing; the server answers a ping within 2 s.
    """

    def __init__(
        self,
        tools: list[dict[str, Any]],
        *,
        call: Callable[[str, dict[str, Any]], Reply],
        alive: Callable[[], None],
        database: Path,
    ) -> None:
        self.call = call
        self.alive = alive
        self.database = database
        self.tally = FuzzTally()
        self.per_tool: dict[str, int] = {}
        self.tools: dict[str, tuple[st.SearchStrategy[dict[str, Any]], bool, bool]] = {}
        for tool in tools:
            schema = tool["inputSchema"]
            read_only = bool((tool.get("annotations") or {}).get("readOnlyHint"))
            polls = "timeout" in schema.get("properties", {})
            self.tools[tool["name"]] = (arguments_for(schema), read_only, polls)

    def summary(self, transport: str) -> str:
        return f"generated arguments, {self.tally.summary(transport)}; calls per tool: {self.per_tool}"

    def example(self, data: st.DataObject) -> None:
        tool = data.draw(st.sampled_from(sorted(self.tools)), label="tool")
        strategy, read_only, polls = self.tools[tool]
        arguments = dict(data.draw(strategy, label="arguments"))
        if isinstance(arguments.get("name"), str) and data.draw(st.booleans(), label="real name"):
            arguments["name"] = data.draw(st.sampled_from(sorted(SEED_CONTEXTS)), label="name")
        if polls:
            arguments = _bounded(arguments)
        self.per_tool[tool] = self.per_tool.get(tool, 0) + 1
        tally = self.tally
        tally.cases += 1

        before = StoreSnapshot.read(self.database)
        reply = self.call(tool, arguments)
        after = StoreSnapshot.read(self.database)
        if reply.is_error:
            tally.errors += 1
            try:
                assert_clear_error(reply.text, tool)
                assert _FIELD_RULE.match(reply.text), f"{tool}: not a 'field: rule' message: {reply.text[:300]}"
            except AssertionError as exc:
                tally.unclear.append(str(exc))
                raise
            assert after == before, f"{tool}({arguments}) was refused but changed the store: {reply.text[:300]}"
        else:
            tally.accepted += 1
            assert reply.structured is not None, f"{tool}: success without structured output"
            if read_only:
                assert after == before, f"read-only {tool}({arguments}) changed the store"
        try:
            self.alive()
        except Exception:
            tally.deaths += 1
            raise


def _bounded(arguments: dict[str, Any]) -> dict[str, Any]:
    """Long polls would only make the run slow: cap a numeric timeout (absent means the default)."""
    timeout = arguments.get("timeout", 0)
    if isinstance(timeout, int | float) and not isinstance(timeout, bool):
        return {**arguments, "timeout": min(max(timeout, 0), 0.05)}
    return arguments
