"""State format migration: format versions, upcasters, and rewriting states to a newer format.

A context declares its *state format* at registration, in ``settings.state_format``:

* inline: ``{"version": "3.0.0", "migrations": [{"from": "1.0.0", "to": "2.0.0", "patch": [...]},
  {"from": "2.0.0", "to": "3.0.0", "plugin": "split-owner"}], "schemas": {"1.0.0": {...}}}``;
* or by name: ``"example-task"`` (or ``{"name": "example-task"}``), the packaged file
  ``schemas/formats/example-task.json`` of the same shape (``schemas/state_format.schema.json``).

``version`` is the current format version. A step (``from`` → ``to``) is either an RFC 6902
``patch`` of the data object or a ``plugin``: a Python callable ``upcast(data) -> data`` from the
entry-point group ``groundhog_mcp.migrations``. Metadata passes through unchanged. Every version
has at most one step out of it, and following the steps from any version must reach the current
one: a cycle or a gap is an error at registration. ``schemas`` holds the JSON Schema of the data
at older versions; at the current version the context's own JSON Schema applies (and the
format's, when it gives one).

Reads upcast an old state on the fly (history and stored bytes stay as they are);
``migrate_context`` rewrites states to the new format as new revisions: it checks every selected
context first (upcast + validation against the target version's schema) and writes only when all
of them passed, so a failing upcaster changes nothing.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata, resources
from typing import TYPE_CHECKING, Any, cast

import jsonpatch
import jsonpointer

from groundhog_mcp.errors import (
    ContextError,
    LimitExceededError,
    MigrationError,
    NotFoundError,
    StateUpdateError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.models import NAME_PATTERN, ContextState, JSONObject, dumps, is_semver, utcnow
from groundhog_mcp.schemas import load_schema
from groundhog_mcp.service.access import check_prefix, list_visible
from groundhog_mcp.service.merge import semver_key
from groundhog_mcp.service.patching import apply_json_patch
from groundhog_mcp.service.validation import Limits, check_name, check_schema_definition, inspect_json, schema_issues
from groundhog_mcp.service.writes import mutation, state_diff
from groundhog_mcp.store.base import Mutation, Mutator, StoredContext

if TYPE_CHECKING:
    from groundhog_mcp.service.state import StateManager

__all__ = [
    "ENTRY_POINT_GROUP",
    "SETTINGS_KEY",
    "ContextMigration",
    "MigrationReport",
    "Progress",
    "StateFormat",
    "Step",
    "UpcastCache",
    "dry_run_chains",
    "format_of",
    "load_format_file",
    "load_upcaster",
    "migrate",
    "parse_state_format",
    "upcast",
]

ENTRY_POINT_GROUP = "groundhog_mcp.migrations"
SETTINGS_KEY = "state_format"
_FIELD = f"settings.{SETTINGS_KEY}"
_PAGE = 500

Upcaster = Callable[[JSONObject], Any]
Progress = Callable[[int, int | None, str], Awaitable[None]]
"""``progress(done, total, message)``; ``total`` is None while contexts are still being counted."""


@dataclass(frozen=True)
class Step:
    """One upcaster: ``source`` → ``target``, by RFC 6902 ``patch`` of the data or by ``plugin``."""

    source: str
    target: str
    patch: list[JSONObject] | None = field(default=None, compare=False)
    plugin: str | None = None

    @property
    def label(self) -> str:
        return f"{self.source} -> {self.target}"

    def apply(self, data: JSONObject, *, max_bytes: int | None = None) -> JSONObject:
        if self.patch is not None:
            return apply_json_patch(data, self.patch, field="patch", max_copy_bytes=max_bytes)
        assert self.plugin is not None
        result = load_upcaster(self.plugin)(copy.deepcopy(data))
        if not isinstance(result, dict):
            raise ValueError(f"upcaster {self.plugin!r} returned a {type(result).__name__}, not the data object")
        return cast(JSONObject, result)


@dataclass(frozen=True)
class StateFormat:
    """A parsed state format: current version, steps by source version, data schemas by version."""

    version: str
    steps: Mapping[str, Step] = field(default_factory=dict[str, Step])
    schemas: Mapping[str, JSONObject] = field(default_factory=dict[str, JSONObject], compare=False)
    name: str | None = None

    def versions(self) -> list[str]:
        known = {self.version, *self.steps, *(s.target for s in self.steps.values()), *self.schemas}
        return sorted(known, key=semver_key)

    def chain(self, source: str, target: str | None = None) -> list[Step] | None:
        """The steps from ``source`` to ``target`` (default: the current version), or None."""
        target = target or self.version
        steps: list[Step] = []
        at = source
        while at != target:
            step = self.steps.get(at)
            if step is None or len(steps) > len(self.steps):
                return None
            steps.append(step)
            at = step.target
        return steps

    def version_problem(self, version: str) -> str | None:
        """Why a state at ``version`` cannot be stored in this format (None: it can)."""
        if version == self.version or self.chain(version) is not None:
            return None
        return (
            f"{version} is not a format version of this context (versions {', '.join(self.versions())}, "
            f"current {self.version}); write the current version"
        )

    def schemas_for(self, version: str, context_schema: JSONObject | None) -> list[JSONObject]:
        """The JSON Schemas the data of a state at ``version`` must satisfy."""
        found = [self.schemas[version]] if version in self.schemas else []
        if version == self.version and context_schema is not None:
            found.append(context_schema)
        return found

    def check_plugins(self) -> None:
        """Every plugin step names an installed upcaster (checked at registration)."""
        for index, step in enumerate(self._ordered_steps()):
            if step.plugin is not None:
                try:
                    load_upcaster(step.plugin)
                except ValueError as exc:
                    raise _invalid(f"/migrations/{index}/plugin", str(exc)) from None

    def _ordered_steps(self) -> list[Step]:
        return sorted(self.steps.values(), key=lambda s: semver_key(s.source))


def _invalid(pointer: str, message: str, field: str = _FIELD) -> StateValidationError:
    return StateValidationError([ValidationIssue(pointer, message)], field=field)


def parse_state_format(spec: Any, *, field: str = _FIELD) -> StateFormat:
    """Parse and check a declaration (``settings.state_format``); raises a clear error naming the part."""
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise _invalid(
            "", "must be a format name or an object {version, migrations?, schemas?} (or {name})", field=field
        )
    spec = cast(JSONObject, spec)
    issues = list(schema_issues(load_schema("state_format"), spec))
    if issues:
        raise StateValidationError(issues, field=field)
    if "name" in spec:
        extra = sorted(set(spec) - {"name", "description", "$schema"})
        if extra:
            raise _invalid(
                "",
                f"a named format takes only name (got also {', '.join(extra)}); its versions, migrations "
                f"and schemas come from the file schemas/formats/{spec['name']}.json",
                field=field,
            )
        return load_format_file(str(spec["name"]))
    return _build(spec, field=field)


def _build(spec: JSONObject, *, field: str, name: str | None = None) -> StateFormat:
    version = spec.get("version")
    if not isinstance(version, str):
        raise _invalid("/version", "is required: the current format version (semver)", field=field)
    steps: dict[str, Step] = {}
    for index, item in enumerate(cast(list[JSONObject], spec.get("migrations", []))):
        source, target = str(item["from"]), str(item["to"])
        pointer = f"/migrations/{index}"
        if source == target:
            raise _invalid(pointer, f"a step from {source} to itself", field=field)
        if source in steps:
            raise _invalid(
                pointer,
                f"a second step out of {source} (already {steps[source].label}); each version has at most one",
                field=field,
            )
        patch = item.get("patch")
        if patch is not None:
            try:
                jsonpatch.JsonPatch(patch)
            except (
                jsonpatch.InvalidJsonPatch,
                jsonpointer.JsonPointerException,
                TypeError,
                ValueError,
                KeyError,
            ) as exc:
                raise _invalid(f"{pointer}/patch", f"not a valid RFC 6902 patch ({exc})", field=field) from None
            for number, operation in enumerate(cast(list[JSONObject], patch)):
                needed = {"move": "from", "copy": "from", "add": "value", "replace": "value", "test": "value"}
                key = needed.get(str(operation.get("op")))
                if key is not None and key not in operation:
                    raise _invalid(
                        f"{pointer}/patch/{number}", f"a '{operation['op']}' operation needs '{key}'", field=field
                    )
        steps[source] = Step(source, target, patch=patch, plugin=item.get("plugin"))
    schemas = cast(dict[str, JSONObject], spec.get("schemas", {}))
    for schema_version, schema in schemas.items():
        try:
            check_schema_definition(schema)
        except StateValidationError as exc:
            raise _invalid(f"/schemas/{schema_version}", str(exc), field=field) from None
    fmt = StateFormat(version=version, steps=steps, schemas=schemas, name=name)
    _check_chains(fmt, field)
    return fmt


def _check_chains(fmt: StateFormat, field: str) -> None:
    """Every version must lead to the current one: no cycle, no gap, no step out of the current."""
    if fmt.version in fmt.steps:
        raise _invalid(
            "/migrations",
            f"a step out of the current version ({fmt.steps[fmt.version].label}); "
            "the current version must be the end of every chain",
            field=field,
        )
    for start in [*fmt.steps, *fmt.schemas]:
        path = [start]
        at = start
        while at != fmt.version:
            step = fmt.steps.get(at)
            if step is None:
                chain = " -> ".join(path)
                raise _invalid(
                    "/migrations",
                    f"a gap: the chain {chain} stops at {at}, which has no step out of it and is not the "
                    f"current version {fmt.version}",
                    field=field,
                )
            at = step.target
            if at in path:
                raise _invalid("/migrations", f"a cycle: {' -> '.join([*path, at])}", field=field)
            path.append(at)


@functools.cache
def _format_files() -> dict[str, Any]:
    folder = resources.files("groundhog_mcp.schemas").joinpath("formats")
    if not folder.is_dir():
        return {}
    return {entry.name[: -len(".json")]: entry for entry in folder.iterdir() if entry.name.endswith(".json")}


@functools.cache
def load_format_file(name: str) -> StateFormat:
    """The format in the packaged file ``schemas/formats/<name>.json``."""
    import re

    if not re.fullmatch(NAME_PATTERN, name):
        raise _invalid("/name", f"must match {NAME_PATTERN}; got {name[:80]!r}")
    entry = _format_files().get(name)
    if entry is None:
        known = ", ".join(sorted(_format_files())) or "none"
        raise _invalid("/name", f"no format file schemas/formats/{name}.json (known formats: {known})")
    where = f"schemas/formats/{name}.json"
    try:
        spec = json.loads(entry.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _invalid("", f"not JSON ({exc})", field=where) from None
    if not isinstance(spec, dict):
        raise _invalid("", "must be a JSON object", field=where)
    spec = cast(JSONObject, spec)
    issues = list(schema_issues(load_schema("state_format"), spec))
    if issues:
        raise StateValidationError(issues, field=where)
    if spec.get("name", name) != name:
        raise _invalid("/name", f"is {spec['name']!r}; the file's name says {name!r}", field=where)
    return _build(spec, field=where, name=name)


@functools.lru_cache(maxsize=512)
def _format_from_text(text: str) -> StateFormat:
    return parse_state_format(json.loads(text))


def format_of(settings: Mapping[str, Any]) -> StateFormat | None:
    """The state format a context declares in its settings (None: it declares none)."""
    spec = settings.get(SETTINGS_KEY)
    if spec is None:
        return None
    return _format_from_text(dumps(spec))


@functools.cache
def _upcaster_entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


@functools.cache
def load_upcaster(name: str) -> Upcaster:
    """The callable registered as ``name`` in the entry-point group ``groundhog_mcp.migrations``."""
    entry_point = _upcaster_entry_points().get(name)
    if entry_point is None:
        known = ", ".join(sorted(_upcaster_entry_points())) or "none installed"
        raise ValueError(f"no upcaster plugin {name!r} in entry-point group {ENTRY_POINT_GROUP} (known: {known})")
    try:
        loaded = entry_point.load()
        upcaster = loaded() if isinstance(loaded, type) else loaded
    except Exception as exc:
        raise ValueError(f"upcaster plugin {name!r} could not be loaded ({type(exc).__name__}: {exc})") from exc
    if not callable(upcaster):
        raise ValueError(f"upcaster plugin {name!r} is not callable (it must take the data object and return it)")
    return cast(Upcaster, upcaster)


def upcast(
    fmt: StateFormat,
    state: ContextState,
    *,
    context: str,
    target: str | None = None,
    limits: Limits | None = None,
    max_bytes: int | None = None,
) -> tuple[ContextState, list[Step]]:
    """``state`` brought to format version ``target`` (default: current) by running the chain of
    steps; the timestamp and metadata are kept. Raises :class:`MigrationError` naming the step.

    Every step is bounded: its copy operations and its result may not exceed ``max_bytes``
    (default: the state size limit), else the error says ``too_large``."""
    target = target or fmt.version
    if state.version == target:
        return state, []
    steps = fmt.chain(state.version, target)
    if steps is None:
        raise MigrationError(
            context,
            None,
            f"no migration path from format version {state.version} to {target} "
            f"(versions {', '.join(fmt.versions())}, current {fmt.version})",
        )
    limits = limits or Limits()
    max_bytes = max_bytes or limits.max_state_bytes
    data = state.data
    for step in steps:
        where = (step.source, step.target)
        try:
            data = step.apply(data, max_bytes=max_bytes)
            problems = inspect_json(data, limits)
        except LimitExceededError as exc:
            raise MigrationError(context, where, str(exc), too_large=True) from None
        except ContextError as exc:
            raise MigrationError(context, where, str(exc)) from None
        except Exception as exc:
            raise MigrationError(context, where, f"{type(exc).__name__}: {str(exc)[:200]}") from None
        if problems:
            shown = "; ".join(str(p) for p in problems[:5])
            raise MigrationError(context, where, f"the upcaster produced invalid JSON: {shown}")
        size = len(dumps(data).encode("utf-8"))
        if size > max_bytes:
            raise MigrationError(
                context,
                where,
                f"too_large: the upcast data is {size} bytes, over the limit of {max_bytes} bytes "
                "(the state size limit); nothing was changed",
                too_large=True,
            )
    return replace(state, data=data, version=target), steps


_DRY_RUN_BASE_BYTES = 16 * 1024
_DRY_RUN_GROWTH = 64


def dry_run_chains(fmt: StateFormat, limits: Limits, example: ContextState | None = None) -> None:
    """Run every chain of ``fmt`` at registration, on an empty data object (and on ``example``
    when it is stored in an older version), so that a chain that blows data up is refused before
    any state is read through it. A step that fails on the sample (a path it expects is missing)
    is fine here: that depends on real data, and every real upcast is bounded anyway. What
    refuses the format: a result over ``16 KiB + 64 x`` the sample's size, or over the state
    size limit."""
    samples = [ContextState(data={}, version=source) for source in fmt.steps]
    if example is not None and example.version != fmt.version:
        samples.append(example)
    for sample in samples:
        size = len(dumps(sample.data).encode("utf-8"))
        bound = min(limits.max_state_bytes, _DRY_RUN_BASE_BYTES + _DRY_RUN_GROWTH * size)
        try:
            upcast(fmt, sample, context="(registration dry run)", limits=limits, max_bytes=bound)
        except MigrationError as exc:
            if exc.too_large:
                step = f"{exc.step[0]} -> {exc.step[1]}" if exc.step else "?"
                raise _invalid(
                    "/migrations",
                    f"the chain from {sample.version} grows a {size}-byte data object past {bound} bytes at step "
                    f"{step} (dry run at registration; the bound is 16 KiB + 64 x the input, and at most the "
                    "state size limit)",
                ) from None


class UpcastCache:
    """Recent upcast results, so that reading an old-format state does not rerun its chain.

    Keyed by (context id, revision, stored version, target version): a revision's stored state
    never changes, and a context's format is fixed at registration (a new registration has a new
    id). Bounded by entries and by the serialised bytes it holds; least recently used go first.
    The states it hands out are shared: callers must not modify them in place."""

    def __init__(self, *, max_entries: int = 64, max_bytes: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, int, str, str], tuple[ContextState, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # used from the event loop and from write threads
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, int, str, str]) -> ContextState | None:
        with self._lock:
            found = self._entries.get(key)
            if found is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return found[0]

    def put(self, key: tuple[str, int, str, str], state: ContextState, size: int) -> None:
        if size > self.max_bytes // 4:
            return  # one huge state would evict everything else
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (state, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, dropped) = self._entries.popitem(last=False)
                self._bytes -= dropped

    def __len__(self) -> int:
        return len(self._entries)


# -- rewriting contexts to a new format (migrate_context) -----------------------------------------


@dataclass(frozen=True)
class ContextMigration:
    """One context brought (or, in a dry run, to be brought) to a new format version."""

    name: str
    from_version: str
    to_version: str
    steps: list[str]
    revision: int
    previous_revision: int | None
    patch: list[JSONObject]


@dataclass(frozen=True)
class MigrationReport:
    """What ``migrate_context`` did or, with ``dry_run``, would do."""

    dry_run: bool
    to_version: str | None
    matched: int
    migrated: int
    unchanged: int
    without_format: int
    contexts: list[ContextMigration]


class _AlreadyMigrated(Exception):
    """Raised inside a write transaction: another writer migrated the context meanwhile."""


Checker = Callable[[ContextState, StoredContext], list[ValidationIssue]]


def _migrated_state(
    current: StoredContext, fmt: StateFormat, to_version: str | None, check: Checker, limits: Limits
) -> tuple[ContextState, list[Step]]:
    target = to_version or fmt.version
    new, steps = upcast(fmt, current.state, context=current.name, target=target, limits=limits)
    issues = check(new, current)
    if issues:
        last = steps[-1]
        shown = "; ".join(str(i) for i in issues[:5])
        raise MigrationError(
            current.name, (last.source, last.target), f"the result breaks the schema of format {target}: {shown}"
        )
    return new, steps


async def migrate(
    manager: StateManager,
    name: str | None = None,
    *,
    prefix: str | None = None,
    to_version: str | None = None,
    dry_run: bool = False,
    expected_revision: int | None = None,
    progress: Progress | None = None,
) -> MigrationReport:
    """Rewrite the state of context ``name``, or of every context whose name starts with
    ``prefix``, in its current state format version (or ``to_version``), one new revision each
    (op ``migrate``). Only contexts this principal may read are selected; one it may not
    administer (``admin``) refuses the whole call before any write.

    Two phases. *Check*: every selected context is read, upcast and validated against the
    target version's schema; the first failure raises :class:`MigrationError` naming context,
    step and cause, and nothing has been written (``dry_run`` stops here and reports the RFC 6902
    diff per context). *Write*: one compare-and-set write per context; the upcast runs again
    inside each write transaction, so a write that landed after the check is migrated too, never
    overwritten. Only a database failure in the write phase (disk full, locked past the busy
    timeout) can stop it midway; the error then says how many contexts were already rewritten;
    those are consistent (reads upcast the rest) and a rerun finishes the job.
    """
    from groundhog_mcp.service.reads import state_issues  # reads builds on this module's formats

    if name is not None:
        check_name(name)
        await manager.authorize("admin", name)
    if prefix:
        check_prefix(prefix)
    caller = manager.caller

    async def list_page(prefix: str, after: str | None, limit: int) -> list[StoredContext]:
        # Only contexts this principal may read are selected (the others stay invisible);
        # among those, one it may not administer refuses the whole call before any write.
        page = await list_visible(manager.store, caller.principal, prefix, after, limit)
        for context in page:
            await manager.authorize("admin", context.name)
        return page

    def check(state: ContextState, context: StoredContext) -> list[ValidationIssue]:
        return state_issues(state, context.schema, context.settings, manager.limits)

    if (name is None) == (prefix is None):
        raise _invalid("", "give exactly one of name (one context) or prefix ('' selects all)", field="name")
    if expected_revision is not None and name is None:
        raise _invalid("", "only used with name (one context), not with prefix", field="expected_revision")
    if to_version is not None and not is_semver(to_version):
        raise _invalid("", f"must be a semantic version like 2.0.0; got {to_version[:40]!r}", field="to_version")

    planned: list[ContextMigration] = []
    matched = unchanged = without_format = 0

    def plan_page(page: Sequence[StoredContext]) -> tuple[list[ContextMigration], int, int]:
        found: list[ContextMigration] = []
        same = plain = 0
        for context in page:
            fmt = format_of(context.settings)
            if fmt is None:
                if name is not None:
                    raise MigrationError(
                        context.name,
                        None,
                        "it declares no state format (settings.state_format at registration); nothing to migrate",
                    )
                plain += 1
                continue
            if context.state.version == (to_version or fmt.version):
                same += 1
                continue
            new, steps = _migrated_state(context, fmt, to_version, check, manager.limits)
            found.append(
                ContextMigration(
                    name=context.name,
                    from_version=context.state.version,
                    to_version=new.version,
                    steps=[s.label for s in steps],
                    revision=context.revision,
                    previous_revision=None,
                    # A real run reports the diff each write made; only a dry run needs it now.
                    patch=state_diff(context.state, new) if dry_run else [],
                )
            )
        return found, same, plain

    async def check_page(page: Sequence[StoredContext]) -> tuple[list[ContextMigration], int, int]:
        try:
            return await asyncio.to_thread(plan_page, page)
        except MigrationError as exc:
            raise MigrationError(
                exc.context, exc.step, exc.cause, note="; no context was written", too_large=exc.too_large
            ) from None

    if name is not None:
        found, unchanged, without_format = await check_page([await manager.get(name)])
        planned += found
        matched = 1
    else:
        after: str | None = None
        while True:
            page = await list_page(prefix or "", after, _PAGE)
            if not page:
                break
            found, same, plain = await check_page(page)
            planned += found
            unchanged += same
            without_format += plain
            matched += len(page)
            after = page[-1].name
            if progress is not None:
                await progress(matched, None, f"checked {matched} contexts, {len(planned)} to migrate")
            if len(page) < _PAGE:
                break

    if dry_run or not planned:
        if progress is not None:
            message = (
                f"dry run: {len(planned)} of {matched} contexts to migrate"
                if dry_run
                else f"nothing to migrate among {matched} contexts"
            )
            await progress(matched, matched, message)
        return MigrationReport(dry_run, to_version, matched, len(planned), unchanged, without_format, planned)

    def mutator_for(plan: ContextMigration) -> Mutator:
        def apply(current: StoredContext) -> Mutation:
            fmt = format_of(current.settings)
            if fmt is None or current.state.version == (to_version or fmt.version):
                raise _AlreadyMigrated
            new, _ = _migrated_state(current, fmt, to_version, check, manager.limits)
            new = replace(new, timestamp=utcnow())
            return mutation(current, new, op="migrate")

        return apply

    done: list[ContextMigration] = []
    every = max(1, len(planned) // 20)
    for index, plan in enumerate(planned, start=1):
        try:
            result = await manager.writer.mutate(caller, plan.name, expected_revision, mutator_for(plan))
        except _AlreadyMigrated:
            unchanged += 1
            continue
        except NotFoundError:
            if name is not None:
                raise
            continue  # unregistered since the check: nothing left to migrate
        except ContextError as exc:
            if not done:
                raise
            note = (
                f"; {len(done)} of {len(planned)} contexts were already rewritten before this failure (the "
                "others are unchanged and still read upcast); fix the cause and run migrate_context again"
            )
            if isinstance(exc, MigrationError):
                raise MigrationError(exc.context, exc.step, exc.cause, note=note, too_large=exc.too_large) from None
            raise StateUpdateError(f"migrate: context {plan.name!r}: {exc}{note}") from exc
        done.append(
            replace(
                plan,
                revision=result.context.revision,
                previous_revision=result.previous_revision,
                patch=result.change.patch or [],
            )
        )
        if progress is not None and (index % every == 0 or index == len(planned)):
            await progress(index, len(planned), f"migrated {index} of {len(planned)} contexts")
    return MigrationReport(False, to_version, matched, len(done), unchanged, without_format, done)
