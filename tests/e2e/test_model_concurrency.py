"""Model-based concurrency test (issue 4): eight concurrent clients, three server processes, one file.

Eight workers share three ``groundhog-mcp`` stdio processes on one SQLite file (processes 0 and
2 in the legacy protocol era, process 1 in whatever ``mode="auto"`` negotiates). Each worker runs
a seeded random mix over four contexts: ``get_state`` (current and past revisions),
``update_state`` in its three forms (``data`` replace, RFC 7396 ``merge_patch``, RFC 6902
``patch``, some with a ``test`` op, some with a ``metadata`` merge patch), each form with or without
compare-and-set (``expected_revision``), ``rollback_state`` and ``merge_states`` into a target
context; the fourth context is a ``fork_context`` of the first, and workers merge either into the
other with ``three_way`` and no base (found by the server from lineage). The test logs every
acknowledged write, every read and every refusal with the client's send and receive times, then
reads the whole history back through a fourth process (one that took no part in the workload)
and checks the log against a model built in the test:

- every acknowledged write appears exactly once in ``get_history`` (same sequence and op), and
  history holds nothing that was not acknowledged (no lost write, no phantom write);
- revisions are strictly increasing per context in sequence order, each write's
  ``previous_revision`` is the revision before it, and each client sees its own writes in order;
- replaying the acknowledged writes in sequence order through the model (replace, merge patch,
  JSON patch, rollback, ordered merge of the inputs at the revisions the server reported) gives,
  at every revision, the state the server stores there; each write's returned ``patch`` turns the
  previous revision's state into it; a merge's returned ``state`` is the model's;
- every read returned a state that existed at that revision (byte-equal to the stored revision,
  timestamp included), and was not stale: no write to a later revision had been acknowledged to
  anyone before the read was sent;
- a CAS conflict names the context's current revision: one that had been written, and no later
  one had been acknowledged before the conflicting call was sent; the diff it carries turns the
  expected revision's state into the current one;
- a three-way merge-back used the base the model finds from the lineage the log records (the
  fork point, or the last merge between the two), and wrote the model's three-way merge of the
  inputs at the revisions the server reported;
- refusals are only CAS conflicts and failed ``test`` ops; anything else is a violation.

The checker is a pure function of the log, so the test also proves it can fail: after a clean
run it plants one anomaly at a time into a copy of the real log (a write acknowledged twice, a
lost write, a read of a state that never existed, revisions going backwards, a stale conflict
revision, a write whose content differs from what the server stored, a stale read) and asserts
that each is reported.

The seed is random per run and printed (it is in every failure message); set
``GROUNDHOG_MODEL_SEED`` to replay a seed's choice of operations (the interleaving still varies).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonpatch  # type: ignore[import-untyped]
import jsonpointer  # type: ignore[import-untyped]
import pytest
from mcp import Client

from tests.e2e.harness import assert_error_text, call_ok, mcp_client, result_text

pytestmark = pytest.mark.e2e

PROCESS_MODES = ("legacy", "auto", "legacy")
WORKERS = 8
OPS_PER_WORKER = 40  # 320 operations in all
SOURCE, FORK = "model-a", "model-a-try"
CONTEXTS = ("model-a", "model-b", "model-c", FORK)  # FORK: a fork_context of SOURCE at setup
_ABSENT = object()
# Bounds that turn a hang into a failure; they measure nothing.
WHOLE_RUN_TIMEOUT_S = 120.0

CONFLICT = re.compile(r"expected revision (\d+) but context '([^']+)' is at revision (\d+)")
CONFLICT_DIFF = re.compile(r"changes since revision \d+ \(RFC 6902\): (\[.*\]); re-read", re.DOTALL)
TEST_FAILED = "'test' operation failed"
# A diff that does not fit the model's state fails in jsonpatch or, for a missing member, in jsonpointer.
PATCH_ERRORS = (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException)

Json = dict[str, Any]


# -- the log --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Write:
    """An acknowledged write (or the registration that created a context)."""

    worker: int
    context: str
    kind: str  # register | fork | replace | merge_patch | json_patch | rollback | merge | merge_back
    arguments: Json  # what was sent
    revision: int
    previous_revision: int | None
    sequence: int
    op: str  # as the server reported it
    patch: list[Json] | None  # the RFC 6902 diff the server returned (merge_states returns none)
    merged_state: Json | None = None  # merge_states: the state the server said it wrote
    merge_inputs: tuple[tuple[str, int], ...] = ()  # merge_states: (context, revision) per input
    merge_base: tuple[str, int] | None = None  # merge_states three_way: the base the server chose
    sent: float = 0.0
    received: float = 0.0


@dataclass(frozen=True)
class Read:
    worker: int
    context: str
    asked_revision: int | None
    revision: int
    current_revision: int
    state: Json
    sent: float
    received: float


@dataclass(frozen=True)
class Refusal:
    """A write the server refused: a CAS conflict or a failed ``test`` op."""

    worker: int
    context: str
    tool: str
    arguments: Json
    text: str
    expected_revision: int | None  # from the conflict message
    current_revision: int | None  # from the conflict message
    sent: float
    received: float


@dataclass
class Log:
    writes: list[Write] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # anything that was neither a result nor a refusal
    seconds: dict[str, float] = field(default_factory=dict)  # how long each phase took, for the summary


@dataclass
class ServerView:
    """What the database holds afterwards, read through a process that took no part in the workload."""

    history: dict[str, list[Json]]  # context -> get_history entries, newest first
    states: dict[str, dict[int, Json]]  # context -> revision -> state (data, metadata, timestamp, version)


# -- the model -------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396, written out here so the model does not share the server's implementation."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def apply_json_patch(data: Json, operations: list[Json]) -> Json:
    """The subset of RFC 6902 the workers send (add, copy at top-level keys, test); a failing
    test raises, like the server's, and then nothing applies."""
    result = copy.deepcopy(data)
    for operation in operations:
        key = operation["path"].removeprefix("/")
        if operation["op"] == "test":
            if result.get(key) != operation["value"]:
                raise ValueError(f"test failed at {operation['path']}")
        elif operation["op"] == "add":
            result[key] = copy.deepcopy(operation["value"])
        elif operation["op"] == "copy":
            source = operation["from"].removeprefix("/")
            if source not in result:
                raise ValueError(f"copy from a missing member {operation['from']}")
            result[key] = copy.deepcopy(result[source])
        else:
            raise AssertionError(f"the model does not know op {operation['op']}")
    return result


def document(state: Json) -> Json:
    """The part of a state the model predicts (timestamps are the server's clock)."""
    return {"data": state["data"], "metadata": state["metadata"], "version": state["version"]}


def merge3(base: Json, ours: Json, theirs: Json) -> Json:
    """Three-way merge of JSON objects, conflicts settled for theirs (arrays are values)."""
    result: Json = {}
    for key in [*ours, *(k for k in theirs if k not in ours)]:
        b, o, t = base.get(key, _ABSENT), ours.get(key, _ABSENT), theirs.get(key, _ABSENT)
        if o == b:
            value = t
        elif t == b or o == t:
            value = o
        elif isinstance(o, dict) and isinstance(t, dict):
            value = merge3(b if isinstance(b, dict) else {}, o, t)  # type: ignore[arg-type]
        else:
            value = t
        if value is not _ABSENT:
            result[key] = value
    return result


Edge = tuple[str, int, str, int]  # context@revision descends from parent@revision


def lineage_edges(writes: list[Write]) -> list[Edge]:
    """What the log says each revision was forked or merged from."""
    edges: list[Edge] = []
    for write in writes:
        if write.kind == "fork":
            edges.append((write.context, write.revision, write.arguments["name"], write.arguments["revision"]))
        elif write.kind in ("merge", "merge_back"):
            taken: dict[str, int] = {}
            for context, revision in write.merge_inputs:
                if context != write.context:
                    taken[context] = max(taken.get(context, 0), revision)
            edges += [(write.context, write.revision, c, r) for c, r in taken.items()]
    return edges


def model_merge_base(heads: tuple[tuple[str, int], ...], earlier: list[Write]) -> tuple[str, int] | None:
    """The best common ancestor of ``heads`` (the latest committed of several): ``git merge-base``."""
    edges = lineage_edges(earlier)
    sequence = {(w.context, w.revision): w.sequence for w in earlier}

    def ancestors(context: str, revision: int) -> dict[str, int]:
        reach = {context: revision}
        changed = True
        while changed:
            changed = False
            for child, child_revision, parent, parent_revision in edges:
                if child in reach and child_revision <= reach[child] and reach.get(parent, 0) < parent_revision:
                    reach[parent] = parent_revision
                    changed = True
        return reach

    reaches = [ancestors(*head) for head in heads]
    common = {c: min(r[c] for r in reaches) for c in reaches[0] if all(c in r for r in reaches)}
    best = [
        (c, r)
        for c, r in common.items()
        if not any(ancestors(*other).get(c, 0) >= r for other in common.items() if other != (c, r))
    ]
    return max(best, key=lambda point: sequence.get(point, -1)) if best else None


def expected_state(write: Write, model: dict[str, dict[int, Json]], earlier: list[Write]) -> Json | str:
    """The state ``write`` must have produced, or why the model cannot tell."""
    history = model.setdefault(write.context, {})
    if write.kind == "register":
        return {"data": {}, "metadata": {}, "version": "1.0.0"} | write.arguments.get("state", {})
    if write.kind == "fork":
        source = model.get(write.arguments["name"], {}).get(write.arguments["revision"])
        return copy.deepcopy(source) if source is not None else "its fork point is not a revision the model knows"
    if write.kind == "merge_back":
        base = model_merge_base(write.merge_inputs, earlier)
        if base != write.merge_base:
            return f"the server merged from base {write.merge_base}, the model's merge base is {base}"
        states = [model.get(c, {}).get(r) for c, r in (*write.merge_inputs, base)]
        if any(state is None for state in states):
            return "an input or the base is not a revision the model knows"
        ours, theirs, common = states  # type: ignore[misc]
        return {
            "data": merge3(common["data"], ours["data"], theirs["data"]),
            "metadata": merge3(common["metadata"], ours["metadata"], theirs["metadata"]),
            "version": max(ours["version"], theirs["version"]),
        }
    if write.kind == "merge":
        inputs: list[Json] = []
        for context, revision in write.merge_inputs:
            if revision not in model.get(context, {}):
                return f"merge input {context}@{revision} is not a revision the model knows"
            inputs.append(model[context][revision])
        merged = copy.deepcopy(inputs[0])
        for later in inputs[1:]:
            merged["data"] = merge_patch(merged["data"], later["data"])
            merged["metadata"] = merge_patch(merged["metadata"], later["metadata"])
        merged["version"] = max(s["version"] for s in inputs)  # all 1.0.0 here
        return merged
    if write.previous_revision is None or write.previous_revision not in history:
        return f"its previous revision {write.previous_revision} is not a revision the model knows"
    previous = history[write.previous_revision]
    if write.kind == "rollback":
        restored = write.arguments["revision"]
        if restored not in history:
            return f"the rolled-back-to revision {restored} is not a revision the model knows"
        return copy.deepcopy(history[restored])
    state = copy.deepcopy(previous)
    if write.kind == "replace":
        state["data"] = copy.deepcopy(write.arguments["data"])
    elif write.kind == "merge_patch":
        state["data"] = merge_patch(state["data"], write.arguments["merge_patch"])
    elif write.kind == "json_patch":
        try:
            state["data"] = apply_json_patch(state["data"], write.arguments["patch"])
        except ValueError as exc:
            return f"the model says its patch cannot apply to revision {write.previous_revision} ({exc})"
    if "metadata" in write.arguments:
        state["metadata"] = merge_patch(state["metadata"], write.arguments["metadata"])
    return state


def check(log: Log, view: ServerView) -> list[str]:
    """Every way the log and the database disagree with the model; empty when they agree."""
    problems: list[str] = list(log.errors)
    by_revision: dict[tuple[str, int], list[Write]] = {}
    for write in log.writes:
        by_revision.setdefault((write.context, write.revision), []).append(write)
    for (context, revision), writes in sorted(by_revision.items()):
        if len(writes) > 1:
            problems.append(f"{context}@{revision} was acknowledged {len(writes)} times: {[w.kind for w in writes]}")

    # History: each acknowledged write exactly once, nothing else.
    for context in CONTEXTS:
        entries = view.history.get(context, [])
        seen: dict[int, int] = {}
        for entry in entries:
            seen[entry["revision"]] = seen.get(entry["revision"], 0) + 1
        for revision, count in seen.items():
            if count > 1:
                problems.append(f"{context}@{revision} appears {count} times in get_history")
        newest_first = [(e["revision"], e["sequence"]) for e in entries]
        if newest_first != sorted(newest_first, reverse=True) or len(set(newest_first)) != len(newest_first):
            problems.append(f"{context}: get_history is not in strictly decreasing revision/sequence order")
        history = {e["revision"]: e for e in entries}
        acknowledged = {r: ws[0] for (c, r), ws in by_revision.items() if c == context}
        for revision, write in sorted(acknowledged.items()):
            entry = history.get(revision)
            if entry is None:
                problems.append(f"acknowledged write {context}@{revision} ({write.kind}) is missing from history")
            elif (entry["sequence"], entry["op"]) != (write.sequence, write.op):
                problems.append(
                    f"{context}@{revision}: history says sequence {entry['sequence']} op {entry['op']}, "
                    f"the client was acknowledged sequence {write.sequence} op {write.op}"
                )
        for revision in sorted(set(history) - set(acknowledged)):
            problems.append(f"history has {context}@{revision} that no client was acknowledged")

    # Revisions strictly increasing per context, in commit (sequence) order and per client.
    for context in CONTEXTS:
        ordered = sorted((w for w in log.writes if w.context == context), key=lambda w: w.sequence)
        revisions = [w.revision for w in ordered]
        if any(b <= a for a, b in itertools.pairwise(revisions)):
            problems.append(f"{context}: revisions are not strictly increasing in sequence order: {revisions}")
        for write in ordered:
            if write.kind not in ("register", "fork") and write.previous_revision != write.revision - 1:
                problems.append(
                    f"{context}@{write.revision}: previous_revision {write.previous_revision}, not {write.revision - 1}"
                )
        by_ack = sorted(log.writes, key=lambda w: w.received)
        for worker in range(WORKERS):
            own = [w.revision for w in by_ack if (w.worker, w.context) == (worker, context)]
            if own != sorted(own):
                problems.append(f"worker {worker} saw its own writes to {context} go backwards: {own}")

    # The model: replay acknowledged writes in commit order.
    model: dict[str, dict[int, Json]] = {}
    committed = sorted(log.writes, key=lambda w: w.sequence)
    for index, write in enumerate(committed):
        label = f"{write.context}@{write.revision} ({write.kind} by worker {write.worker})"
        if write.kind in ("merge", "merge_back"):
            label += f" of {list(write.merge_inputs)}"
        expected = expected_state(write, model, committed[:index])
        if isinstance(expected, str):
            problems.append(f"{label}: {expected}")
            continue
        model.setdefault(write.context, {})[write.revision] = expected
        stored = view.states.get(write.context, {}).get(write.revision)
        if stored is None:
            problems.append(f"{label}: the server has no state at that revision")
        elif document(stored) != expected:
            problems.append(f"{label}: the server stores {document(stored)}, the model says {expected}")
        if write.merged_state is not None and document(write.merged_state) != expected:
            problems.append(f"{label}: merge_states returned {document(write.merged_state)}, the model says {expected}")
        previous = model[write.context].get(write.previous_revision or -1)
        if write.patch is not None and previous is not None:
            try:
                patched = jsonpatch.apply_patch(previous, write.patch)
            except PATCH_ERRORS as exc:
                problems.append(f"{label}: its returned patch does not apply to the previous revision ({exc})")
            else:
                if patched != expected:
                    problems.append(f"{label}: its returned patch gives {patched}, not {expected}")

    # Reads: a state that existed at that revision, and not stale.
    acked_at: dict[str, list[tuple[float, int]]] = {}
    for write in log.writes:
        acked_at.setdefault(write.context, []).append((write.received, write.revision))
    for read in log.reads:
        label = f"read of {read.context}@{read.revision} by worker {read.worker}"
        stored = view.states.get(read.context, {}).get(read.revision)
        if stored is None or stored != read.state:
            problems.append(f"{label} returned {read.state}, a state that never existed at that revision")
        if read.asked_revision is None:
            newer = [r for t, r in acked_at.get(read.context, []) if t < read.sent and r > read.revision]
            if newer or read.current_revision != read.revision:
                problems.append(
                    f"{label} is stale: revision {max(newer, default=read.current_revision)} was "
                    "acknowledged before it was sent"
                )

    # CAS conflicts: the current revision, and the diff since the expected one.
    for refusal in log.refusals:
        if refusal.current_revision is None:
            continue
        label = f"conflict on {refusal.context} (worker {refusal.worker}, {refusal.tool})"
        current, expected = refusal.current_revision, refusal.expected_revision
        states = model.get(refusal.context, {})
        if current not in states:
            problems.append(f"{label} names revision {current}, which was never written")
            continue
        if current == expected:
            problems.append(f"{label}: the expected revision {expected} was the current one")
        newer = [r for t, r in acked_at.get(refusal.context, []) if t < refusal.sent and r > current]
        if newer:
            problems.append(
                f"{label} names revision {current} as current, but {max(newer)} was acknowledged before the call"
            )
        written_after = [w for w in log.writes if (w.context, w.revision) == (refusal.context, current)]
        if written_after and written_after[0].sent > refusal.received:
            problems.append(f"{label} names revision {current}, written only after the conflict was answered")
        diff = CONFLICT_DIFF.search(refusal.text)
        if diff is not None and expected in states:
            try:
                patched = jsonpatch.apply_patch(states[expected], json.loads(diff.group(1)))
            except PATCH_ERRORS as exc:
                patched = f"an error ({exc})"
            if patched != states[current]:
                problems.append(
                    f"{label}: its diff since revision {expected} gives {patched}, not revision {current}: "
                    f"{states[current]}; the message: {refusal.text}"
                )
    return problems


# -- the workers -----------------------------------------------------------------------------------


@dataclass
class Knowledge:
    """What one worker believes about a context: from its reads and its own acknowledged writes."""

    revision: int = 1
    counter: int | None = None
    revisions: set[int] = field(default_factory=lambda: {1})


class Worker:
    def __init__(self, index: int, client: Client, seed: int, log: Log) -> None:
        self.index = index
        self.client = client
        self.rng = random.Random(f"{seed}/{index}")
        self.log = log
        self.known = {name: Knowledge() for name in CONTEXTS}

    async def run(self, ready: asyncio.Barrier) -> None:
        for name in CONTEXTS:
            await self.read(name, None)
        await ready.wait()
        for i in range(OPS_PER_WORKER):
            await self.step(i)

    def cas(self, name: str) -> dict[str, int]:
        return {"expected_revision": self.known[name].revision} if self.rng.random() < 0.5 else {}

    async def step(self, i: int) -> None:
        rng = self.rng
        name = rng.choice(CONTEXTS)
        value = self.index * 1000 + i  # unique per write: every write changes something
        roll = rng.random()
        if roll < 0.22:
            await self.read(name, None)
        elif roll < 0.30:
            await self.read(name, rng.choice(sorted(self.known[name].revisions)))
        elif roll < 0.45:
            data = {"counter": value, "owner": f"w{self.index}", "items": [value, i]}
            await self.update(name, "replace", {"data": data, **self.cas(name), **self.metadata(i)})
        elif roll < 0.60:
            patch: Json = {"counter": value, f"w{self.index}": i, "nested": {"by": self.index, f"k{i % 3}": i}}
            if rng.random() < 0.3:
                patch["nested"][f"k{(i + 1) % 3}"] = None  # RFC 7396 delete
                patch["owner"] = None
            await self.update(name, "merge_patch", {"merge_patch": patch, **self.cas(name), **self.metadata(i)})
        elif roll < 0.75:
            operations: list[Json] = []
            known = self.known[name].counter
            if known is not None and rng.random() < 0.4:
                operations.append({"op": "test", "path": "/counter", "value": known})
            operations += [
                {"op": "add", "path": "/counter", "value": value},
                {"op": "add", "path": f"/w{self.index}", "value": i},
                {"op": "copy", "from": "/counter", "path": "/counter_copy"},
            ]
            await self.update(name, "json_patch", {"patch": operations, **self.cas(name), **self.metadata(i)})
        elif roll < 0.82:
            revision = rng.choice(sorted(self.known[name].revisions))
            arguments = {"name": name, "revision": revision, **self.cas(name)}
            await self.write("rollback_state", name, "rollback", arguments)
        elif roll < 0.91:
            # Merge the fork back into its source, or the source into the fork: no base given.
            target, other = rng.choice([(SOURCE, FORK), (FORK, SOURCE)])
            inputs = [{"context": target}, {"context": other}]
            arguments = {"inputs": inputs, "strategy": "three_way", "on_conflict": "theirs", "target": target}
            await self.write("merge_states", target, "merge_back", arguments | self.cas(target))
        else:
            first, second = rng.sample(CONTEXTS, 2)
            inputs = [
                {"context": first, "revision": rng.choice(sorted(self.known[first].revisions))},
                {"context": second},  # its current revision, resolved by the server
            ]
            arguments = {"inputs": inputs, "strategy": "ordered", "target": name, **self.cas(name)}
            await self.write("merge_states", name, "merge", arguments)

    def metadata(self, i: int) -> Json:
        if self.rng.random() < 0.3:
            return {"metadata": {"last_writer": self.index, f"m{self.index}": i, "drop": None}}
        return {}

    async def update(self, name: str, kind: str, arguments: Json) -> None:
        await self.write("update_state", name, kind, {"name": name, **arguments})

    async def read(self, name: str, revision: int | None) -> None:
        arguments: Json = {"name": name} | ({"revision": revision} if revision is not None else {})
        sent = time.monotonic()
        result = await self.client.call_tool("get_state", arguments)
        received = time.monotonic()
        if result.is_error or result.structured_content is None:
            self.log.errors.append(f"worker {self.index}: get_state({arguments}) failed: {result_text(result)}")
            return
        out = result.structured_content
        self.log.reads.append(
            Read(self.index, name, revision, out["revision"], out["current_revision"], out["state"], sent, received)
        )
        known = self.known[name]
        known.revisions.add(out["revision"])
        if revision is None and out["revision"] >= known.revision:
            known.revision = out["revision"]
            known.counter = out["state"]["data"].get("counter")

    async def write(self, tool: str, name: str, kind: str, arguments: Json) -> None:
        sent = time.monotonic()
        result = await self.client.call_tool(tool, arguments)
        received = time.monotonic()
        if result.is_error:
            self.refused(tool, name, arguments, result_text(result), sent, received)
            return
        out = result.structured_content
        assert out is not None, f"{tool}: no structured output"
        merged = out.get("state") if tool == "merge_states" else None
        inputs = tuple((i["context"], i["revision"]) for i in out.get("inputs", ()))
        base = out.get("base") if tool == "merge_states" else None
        self.log.writes.append(
            Write(
                worker=self.index,
                context=name,
                kind=kind,
                arguments=arguments,
                revision=out["revision"],
                previous_revision=out["previous_revision"],
                sequence=out["sequence"],
                op=out.get("op", "merge"),
                patch=out.get("patch"),
                merged_state=merged,
                merge_inputs=inputs,
                merge_base=(base["context"], base["revision"]) if base else None,
                sent=sent,
                received=received,
            )
        )
        known = self.known[name]
        known.revisions.add(out["revision"])
        if out["revision"] > known.revision:
            known.revision = out["revision"]
            known.counter = None  # this worker has not seen the resulting data

    def refused(self, tool: str, name: str, arguments: Json, text: str, sent: float, received: float) -> None:
        try:
            assert_error_text(text, tool)
        except AssertionError as exc:
            self.log.errors.append(f"worker {self.index}: {exc}")
            return
        conflict = CONFLICT.search(text)
        if conflict is not None and conflict.group(2) == name and "expected_revision" in arguments:
            expected, current = int(conflict.group(1)), int(conflict.group(3))
            if expected != arguments["expected_revision"]:
                self.log.errors.append(f"worker {self.index}: conflict names expected {expected}: {text}")
            self.log.refusals.append(
                Refusal(self.index, name, tool, arguments, text, expected, current, sent, received)
            )
            self.known[name].revisions.add(current)
            return
        if TEST_FAILED in text and any(op["op"] == "test" for op in arguments.get("patch", ())):
            self.log.refusals.append(Refusal(self.index, name, tool, arguments, text, None, None, sent, received))
            return
        self.log.errors.append(f"worker {self.index}: {tool}({arguments}) failed unexpectedly: {text}")


# -- the run ---------------------------------------------------------------------------------------


async def read_back(client: Client) -> ServerView:
    view = ServerView(history={}, states={})
    for name in CONTEXTS:
        entries: list[Json] = []
        before: int | None = None
        while True:
            page = await call_ok(
                client, "get_history", {"name": name, "limit": 100} | ({"before": before} if before else {})
            )
            entries += page["revisions"]
            before = page["next_before"]
            if before is None:
                break
        view.history[name] = entries
        view.states[name] = {}
        for revision in sorted({e["revision"] for e in entries}):
            out = await call_ok(client, "get_state", {"name": name, "revision": revision})
            view.states[name][revision] = out["state"]
    return view


async def run_workload(database: Path, env: dict[str, str], tmp_path: Path, seed: int) -> tuple[Log, ServerView]:
    """Start the worker processes and the read-back process together, run the workers, read back."""
    log = Log()
    started = time.monotonic()
    modes = [*PROCESS_MODES, "legacy"]  # the last one only reads the history back, afterwards
    clients: dict[int, Client] = {}
    all_up = asyncio.Event()
    done = asyncio.Event()

    async def serve(p: int, mode: str) -> None:
        # Each client is entered and left in its own task (anyio cancel scopes require it).
        stderr_path = tmp_path / f"server-{p}.stderr"
        async with mcp_client(database, mode=mode, stderr_path=stderr_path, env=env) as client:
            clients[p] = client
            if len(clients) == len(modes):
                all_up.set()
            await done.wait()

    async with asyncio.TaskGroup() as group:
        for p, mode in enumerate(modes):
            group.create_task(serve(p, mode))
        try:
            await all_up.wait()
            log.seconds["start-up"] = time.monotonic() - started
            writers = [clients[p] for p in range(len(PROCESS_MODES))]
            for name in CONTEXTS[:-1]:
                initial = {"data": {"counter": 0, "origin": name}, "metadata": {"created_by": "setup"}}
                created = await call_ok(writers[0], "register_context", {"name": name, "state": initial})
                register = Write(-1, name, "register", {"state": initial}, 1, None, created["sequence"], "register", [])
                log.writes.append(dataclasses.replace(register, revision=created["revision"]))
            forked = await call_ok(writers[0], "fork_context", {"name": SOURCE, "new_name": FORK})
            fork_point = forked["forked_from"]
            log.writes.append(
                Write(-1, FORK, "fork", fork_point, forked["revision"], None, forked["sequence"], "register", [])
            )
            ready = asyncio.Barrier(WORKERS)
            workers = [Worker(w, writers[w % len(writers)], seed, log) for w in range(WORKERS)]
            async with asyncio.TaskGroup() as workload:
                for worker in workers:
                    workload.create_task(worker.run(ready))
            log.seconds["workload"] = time.monotonic() - started - log.seconds["start-up"]
            view = await read_back(clients[len(modes) - 1])
            log.seconds["read-back"] = time.monotonic() - started - log.seconds["start-up"] - log.seconds["workload"]
        finally:
            done.set()
    return log, view


def plant_anomalies(log: Log, view: ServerView) -> dict[str, tuple[Log, ServerView]]:
    """One doctored copy of the real log per kind of anomaly the checker must catch."""
    updates = [w for w in log.writes if w.kind in ("replace", "merge_patch", "json_patch")]
    deep = [w for w in log.writes if w.kind not in ("register", "fork") and w.revision >= 3]
    assert updates and deep and log.reads, "the run produced too few writes or reads to doctor"
    planted: dict[str, tuple[Log, ServerView]] = {}

    def copied() -> tuple[Log, ServerView]:
        return copy.deepcopy(log), copy.deepcopy(view)

    doctored, v = copied()
    doctored.writes.append(updates[0])
    planted["acknowledged 2 times"] = (doctored, v)

    doctored, v = copied()
    lost = updates[-1]
    v.history[lost.context] = [e for e in v.history[lost.context] if e["revision"] != lost.revision]
    planted["is missing from history"] = (doctored, v)

    backs = [w for w in log.writes if w.kind == "merge_back"]
    if backs:
        doctored, v = copied()
        back = backs[-1]
        wrong = (SOURCE, 1) if back.merge_base != (SOURCE, 1) else (FORK, 1)
        doctored.writes[doctored.writes.index(back)] = dataclasses.replace(back, merge_base=wrong)
        planted["the model's merge base is"] = (doctored, v)

    doctored, v = copied()
    read = doctored.reads[0]
    doctored.reads[0] = dataclasses.replace(read, state=read.state | {"data": {"never": "written"}})
    planted["never existed at that revision"] = (doctored, v)

    doctored, v = copied()
    a, b = sorted((w for w in doctored.writes if w.context == deep[0].context), key=lambda w: w.sequence)[-2:]
    doctored.writes[doctored.writes.index(a)] = dataclasses.replace(a, sequence=b.sequence)
    doctored.writes[doctored.writes.index(b)] = dataclasses.replace(b, sequence=a.sequence)
    planted["not strictly increasing in sequence order"] = (doctored, v)

    doctored, v = copied()
    w = deep[-1]  # a conflict acknowledged revision w.revision - 1 as current, sent after w was acknowledged
    doctored.refusals.append(
        Refusal(
            0, w.context, "update_state", {}, "planted", w.revision - 2, w.revision - 1, w.received + 1, w.received + 2
        )
    )
    planted["was acknowledged before the call"] = (doctored, v)

    doctored, v = copied()
    changed = updates[len(updates) // 2]
    index = doctored.writes.index(changed)
    if changed.kind == "replace":
        arguments = changed.arguments | {"data": {"counter": -1}}
    elif changed.kind == "merge_patch":
        arguments = changed.arguments | {"merge_patch": {"counter": -1}}
    else:
        arguments = changed.arguments | {"patch": [{"op": "add", "path": "/counter", "value": -1}]}
    doctored.writes[index] = dataclasses.replace(changed, arguments=arguments)
    planted["the model says"] = (doctored, v)

    doctored, v = copied()
    w = deep[-1]
    stale = Read(
        0,
        w.context,
        None,
        w.revision - 1,
        w.revision - 1,
        v.states[w.context][w.revision - 1],
        w.received + 1,
        w.received + 2,
    )
    doctored.reads.append(stale)
    planted["is stale"] = (doctored, v)
    return planted


async def test_concurrent_clients_agree_with_the_model(database: Path, sdk_env: dict[str, str], tmp_path: Path) -> None:
    seed = int(os.environ.get("GROUNDHOG_MODEL_SEED") or random.randrange(2**32))
    print(f"\nmodel concurrency seed: {seed} (GROUNDHOG_MODEL_SEED={seed} replays its operations)")
    # Every revision is read back at the end: keep the whole history (retention has its own tests).
    env = {**sdk_env, "GROUNDHOG_KEEP_REVISIONS": "0"}
    started = time.monotonic()
    async with asyncio.timeout(WHOLE_RUN_TIMEOUT_S):
        log, view = await run_workload(database, env, tmp_path, seed)

    kinds: dict[str, int] = {}
    for write in log.writes:
        kinds[write.kind] = kinds.get(write.kind, 0) + 1
    conflicts = sum(r.current_revision is not None for r in log.refusals)
    print(
        f"{len(log.writes)} acknowledged writes {kinds}, {len(log.reads)} reads, {conflicts} CAS conflicts, "
        f"{len(log.refusals) - conflicts} failed test ops, in {time.monotonic() - started:.1f} s "
        f"({', '.join(f'{k} {v:.1f} s' for k, v in log.seconds.items())})"
    )
    problems = check(log, view)
    if problems:
        dump = tmp_path / "model-log.json"
        dump.write_text(json.dumps({"seed": seed, "log": dataclasses.asdict(log), "view": dataclasses.asdict(view)}))
        raise AssertionError(
            f"seed {seed}: {len(problems)} violations (the log and the server's history: {dump}):\n"
            + "\n".join(problems[:40])
        )
    # The workload exercised what it claims to (else the checks above proved little).
    kinds_wanted = {"replace", "merge_patch", "json_patch", "rollback", "merge", "fork", "merge_back"}
    assert kinds_wanted <= set(kinds), f"seed {seed}: {kinds}"
    assert conflicts > 0, f"seed {seed}: no CAS conflict happened; the clients did not contend"
    assert len(log.reads) >= WORKERS * len(CONTEXTS)

    # The checker can fail: each planted anomaly is reported.
    for needle, (doctored, doctored_view) in plant_anomalies(log, view).items():
        found = check(doctored, doctored_view)
        assert any(needle in p for p in found), f"seed {seed}: planted '{needle}' went unnoticed; found {found[:5]}"
