"""Deliberately broken variants of groundhog-mcp, to show inside the suite that each check can fail.

A :class:`Defect` is a few lines of Python appended to one module of the package: functions,
then assignments that put them in place of the real ones (``StoreCore._check_expected =
_no_cas``). One defect definition serves two ways of running the server:

- **a process**: :func:`build` copies the installed ``groundhog_mcp`` package into a folder,
  appends the defect to the copy's module and writes an executable ``groundhog-mcp`` launcher
  next to it, so ``GROUNDHOG_E2E_COMMAND=<copy>/groundhog-mcp`` (tests/e2e/harness.py) points
  every process-level test at the broken build. The launcher drops the editable-install finder
  (``pip install -e .`` puts it ahead of ``sys.path``) and refuses to start if the copy is not
  what got imported.
- **in this process** (``in_process=True``): :func:`apply_in_process` runs the same source in a
  copy of the module's namespace and monkeypatches the real module or class, undone after the
  test — for the tests that drive the server through the SDK's in-memory ``Client(server)``.

The pytest side (the ``broken_build`` marker and the ``build`` fixture) is
tests/reliability/broken_plugin.py. Production code is not changed for any of this: if a
module no longer has what a defect replaces, building it fails with a message naming the file.
"""

from __future__ import annotations

import importlib
import shutil
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import groundhog_mcp

__all__ = ["DEFECTS", "Defect", "apply_in_process", "build"]


@dataclass(frozen=True)
class Defect:
    """One planted bug: ``source`` is appended to ``module`` (a path inside the package), then each
    ``(owner, attribute, function)`` of ``replaces`` is assigned (``owner`` ``""``: the module)."""

    name: str
    summary: str
    module: str
    source: str
    replaces: tuple[tuple[str, str, str], ...]
    in_process: bool = False

    @property
    def dotted(self) -> str:
        return "groundhog_mcp." + self.module.removesuffix(".py").replace("/", ".")

    def patch_source(self) -> str:
        lines = [f"\n\n# --- reliability battery, planted defect {self.name!r}: {self.summary} ---", self.source]
        for owner, attribute, function in self.replaces:
            lines.append(f"{owner + '.' if owner else ''}{attribute} = {function}")
        return "\n".join(lines) + "\n"

    def check_fits(self, text: str) -> None:
        for owner, attribute, _ in self.replaces:
            if "." in owner:  # an attribute of a library module the package uses
                names = (attribute,)
            else:
                names = (f"class {owner}" if owner else "", f"def {attribute}" if owner else attribute)
            for name in names:
                if name and name not in text:
                    raise RuntimeError(
                        f"the planted defect {self.name!r} no longer fits groundhog_mcp/{self.module} "
                        f"({name!r} is gone): update tests/reliability/broken_build.py"
                    )


_ACK_BEFORE_COMMIT = Defect(
    "ack_before_commit",
    "a batch of writes is answered before its COMMIT, which runs only when the next batch begins",
    "store/sqlite_writer.py",
    """
_real_run_batch = GroupCommitter._run_batch


def _run_batch_after_committing_the_last(self, first):
    conn = self._connection()
    if conn.in_transaction:
        conn.execute("COMMIT")  # the previous batch's deferred commit
    _real_run_batch(self, first)


def _answer_without_commit(self, conn, done, failed):
    # No COMMIT here: the caller answers the client while the batch is still uncommitted.
    self._answer(done, failed)
""",
    (
        ("GroupCommitter", "_run_batch", "_run_batch_after_committing_the_last"),
        ("GroupCommitter", "_commit", "_answer_without_commit"),
    ),
)

_NO_CAS = Defect(
    "no_cas",
    "expected_revision is ignored: every write applies, whatever revision the caller read",
    "store/core.py",
    """
async def _no_cas(self, tx, current, expected):
    return None
""",
    (("StoreCore", "_check_expected", "_no_cas"),),
)

_NO_IDEMPOTENCY = Defect(
    "no_idempotency",
    "emit_event's idempotency_key is neither looked up nor recorded",
    "store/core.py",
    """
_real_mutate = StoreCore.mutate


async def _mutate_forgetting_keys(self, namespace, name, expected_revision, mutator, *, actor, event=None, **more):
    if event is not None:
        event = dataclasses.replace(event, idempotency_key=None)
    return await _real_mutate(self, namespace, name, expected_revision, mutator, actor=actor, event=event, **more)


async def _find_no_event(self, tx, context_id, key):
    return None
""",
    (("StoreCore", "mutate", "_mutate_forgetting_keys"), ("StoreCore", "_find_event", "_find_no_event")),
)

_UNTRANSLATED_STORAGE_ERRORS = Defect(
    "untranslated_storage_errors",
    "SQLite errors reach the client as SQLite words them (no disk-full, lock or read-only message)",
    "store/sqlite.py",
    """
def _untranslated(self, exc):
    return StateUpdateError(f"database: {exc}; nothing was written")
""",
    (("SQLiteStore", "_translate", "_untranslated"),),
)

_UNEXPECTED_READ_ERROR = Defect(
    "unexpected_read_error",
    "reading a past revision raises an unexpected (non-ContextError) exception",
    "store/core.py",
    """
async def _failing_read_revision(self, context_id, revision):
    raise RuntimeError("injected fault: reading a past revision failed")
""",
    (("StoreCore", "read_revision", "_failing_read_revision"),),
)

_UNCLEAR_MISSING_CONTEXT = Defect(
    "unclear_missing_context",
    "a context that does not exist is answered with a generic internal error instead of 'name: no context named'",
    "service/state.py",
    """
def _missing_unclearly(name):
    raise RuntimeError("injected fault: a context the code did not expect to be missing")
""",
    (("", "missing", "_missing_unclearly"),),
    in_process=True,
)

_CRASH_ON_MISSING_CONTEXT = Defect(
    "crash_on_missing_context",
    "the server process exits when a context does not exist",
    "service/state.py",
    """
def _missing_or_die(name):
    import os

    os._exit(70)
""",
    (("", "missing", "_missing_or_die"),),
)

_LISTING_QUOTES_METADATA = Defect(
    "listing_quotes_metadata",
    "resources/list describes each context with the description stored in its metadata",
    "server/resources.py",
    """
_real_list_resources = _list_resources


async def _list_resources_quoting_metadata(ctx, params):
    result = await _real_list_resources(ctx, params)
    manager = ctx.lifespan_context.request_manager(ctx.request)
    described = []
    for resource in result.resources:
        if resource.uri.startswith("groundhog://contexts/"):
            context = await manager.get(resource.name)
            note = str(context.metadata.get("description", ""))
            resource = resource.model_copy(update={"description": f"{resource.description}: {note}"})
        described.append(resource)
    return result.model_copy(update={"resources": described})
""",
    (("", "_list_resources", "_list_resources_quoting_metadata"),),
)

_PROMPT_RENDERS_RAW_TEXT = Defect(
    "prompt_renders_raw_text",
    "prompts render stored state as 'key: value' lines, the stored text unquoted",
    "server/prompts.py",
    """
def _readable(value, limit, how_to_read_all, prefix=""):
    if isinstance(value, dict):
        return "\\n".join(_readable(v, limit, how_to_read_all, f"{prefix}{k}.") for k, v in value.items())[:limit]
    return f"{prefix.rstrip('.')}: {value}"
""",
    (("", "_bounded", "_readable"),),
    in_process=True,
)

_SDK_STDIO = Defect(
    "sdk_stdio",
    "stdio is served by the SDK's plain stdio_server: lines its parser refuses are dropped without a reply",
    "server/stdio.py",
    """
def _sdk_stdio():
    return stdio_server()
""",
    (("", "hardened_stdio", "_sdk_stdio"),),
)

_CRASH_ON_UNUSABLE_ID = Defect(
    "crash_on_unusable_id",
    "the stdio reader exits on a request whose id is neither a string nor an integer",
    "server/stdio.py",
    """
_real_misread_request = misread_request


def _misread_or_die(line):
    answer = _real_misread_request(line)
    if answer is not None:
        import os

        os._exit(70)
    return answer
""",
    (("", "misread_request", "_misread_or_die"),),
)

_SDK_PROMPT_ERRORS = Defect(
    "sdk_prompt_errors",
    "prompts/get errors are the SDK's own (no -32602 naming the unknown prompt or the missing argument)",
    "server/build.py",
    """
_sdk_get_prompt = MCPServer.get_prompt
""",
    (("GroundhogServer", "get_prompt", "_sdk_get_prompt"),),
)

_NO_DEPTH_LIMIT = Defect(
    "no_depth_limit",
    "stored JSON is accepted at any nesting depth",
    "service/updates.py",
    """
import dataclasses

_real_check_json_inputs = check_json_inputs


def _check_json_inputs_any_depth(inputs, limits, *, budget=None):
    return _real_check_json_inputs(inputs, dataclasses.replace(limits, max_depth=10_000), budget=budget)
""",
    (("", "check_json_inputs", "_check_json_inputs_any_depth"),),
)

_FETCHES_REMOTE_REF = Defect(
    "fetches_remote_ref",
    "a JSON Schema $ref to a URL is fetched (jsonschema's old automatic retrieval)",
    "service/json_schema.py",
    """
def _fetch_remote(uri):
    import json
    import urllib.request

    with urllib.request.urlopen(uri, timeout=2) as response:
        return Resource.from_contents(json.loads(response.read()))
""",
    (("", "_refuse_remote", "_fetch_remote"),),
    in_process=True,
)

_RAW_SURROGATES_IN_ERRORS = Defect(
    "raw_surrogates_in_errors",
    "error messages quote lone surrogates raw, so they cannot be encoded as UTF-8",
    "errors.py",
    """
def _as_given(text):
    return text
""",
    (("", "_printable", "_as_given"),),
    in_process=True,
)

_NO_SURROGATE_CHECK = Defect(
    "no_surrogate_check",
    "strings with lone surrogates are not refused by the structural check",
    "service/validation.py",
    """
def _never_lone(text):
    return False
""",
    (("", "_lone_surrogate", "_never_lone"),),
    in_process=True,
)

_START_ERRORS_UNHANDLED = Defect(
    "start_errors_unhandled",
    "a database the server cannot open raises an unexpected exception instead of the message naming the file",
    "store/sqlite.py",
    """
_real_open_sync = SQLiteStore._open_sync


def _open_sync_unhandled(self):
    try:
        _real_open_sync(self)
    except InitializationError as exc:
        raise RuntimeError(f"start-up failed: {exc}") from None
""",
    (("SQLiteStore", "_open_sync", "_open_sync_unhandled"),),
)

_NO_QUICK_CHECK = Defect(
    "no_quick_check",
    "no PRAGMA quick_check at start-up: a corrupt table page behind a valid header is served",
    "store/sqlite_open.py",
    """
def _pages_unchecked(conn, path):
    return None
""",
    (("", "check_pages", "_pages_unchecked"),),
)

_ADOPTS_FOREIGN_FILE = Defect(
    "adopts_foreign_file",
    "another application's SQLite file gets groundhog's tables added",
    "store/sqlite_open.py",
    """
def _foreign_welcome(conn, path):
    return None
""",
    (("", "refuse_foreign", "_foreign_welcome"),),
)

_NO_READ_ONLY_CAUSE = Defect(
    "no_read_only_cause",
    "a start error on a read-only file system blames the file, not the directory WAL must write",
    "store/sqlite_open.py",
    """
def _no_cause(path):
    return ""
""",
    (("", "read_only_cause", "_no_cause"),),
)

_REFUSES_EMPTY_FILE = Defect(
    "refuses_empty_file",
    "a zero-byte file is refused as not a database",
    "store/sqlite_open.py",
    """
_real_refuse_foreign = refuse_foreign


def _refuse_foreign_or_empty(conn, path):
    if path.exists() and path.stat().st_size == 0:
        raise InitializationError(f"database: {path} is not a usable SQLite database (empty file)")
    _real_refuse_foreign(conn, path)
""",
    (("", "refuse_foreign", "_refuse_foreign_or_empty"),),
)

_LOGS_FRAME_LOCALS = Defect(
    "logs_frame_locals",
    "logged tracebacks carry every frame's local variables (state contents among them)",
    "app.py",
    """
class _TransformerShowingLocals(structlog.tracebacks.ExceptionDictTransformer):
    def __init__(self, *args, **kwargs):
        kwargs["show_locals"] = True
        super().__init__(*args, **kwargs)
""",
    (("structlog.tracebacks", "ExceptionDictTransformer", "_TransformerShowingLocals"),),
)

_SHARED_REPLAY = Defect(
    "shared_replay",
    "every streamable-HTTP session stores and replays events in one shared event store",
    "server/event_store.py",
    """
def _one_store_for_all_sessions(manager, store):
    shared = store.for_session()
    admit = manager._admit_session

    def admit_shared(*args, **kwargs):
        transport = admit(*args, **kwargs)
        if transport is not None:
            transport._event_store = shared
        return transport

    manager._admit_session = admit_shared
""",
    (("", "scope_events_by_session", "_one_store_for_all_sessions"),),
)

_BACKTRACKING_PATTERNS = Defect(
    "backtracking_patterns",
    "JSON Schema patterns run on Python's backtracking re instead of RE2",
    "service/schema_engine.py",
    """
import re as _backtracking_re


def _backtracking_search(pattern, text):
    return _backtracking_re.search(pattern, text) is not None
""",
    (("", "_search", "_backtracking_search"),),
)

DEFECTS: dict[str, Defect] = {
    d.name: d
    for d in (
        _ACK_BEFORE_COMMIT,
        _NO_CAS,
        _NO_IDEMPOTENCY,
        _UNTRANSLATED_STORAGE_ERRORS,
        _UNEXPECTED_READ_ERROR,
        _UNCLEAR_MISSING_CONTEXT,
        _CRASH_ON_MISSING_CONTEXT,
        _LISTING_QUOTES_METADATA,
        _PROMPT_RENDERS_RAW_TEXT,
        _SDK_STDIO,
        _CRASH_ON_UNUSABLE_ID,
        _SDK_PROMPT_ERRORS,
        _NO_DEPTH_LIMIT,
        _FETCHES_REMOTE_REF,
        _RAW_SURROGATES_IN_ERRORS,
        _NO_SURROGATE_CHECK,
        _START_ERRORS_UNHANDLED,
        _NO_QUICK_CHECK,
        _ADOPTS_FOREIGN_FILE,
        _NO_READ_ONLY_CAUSE,
        _REFUSES_EMPTY_FILE,
        _LOGS_FRAME_LOCALS,
        _SHARED_REPLAY,
        _BACKTRACKING_PATTERNS,
    )
}

_LAUNCHER = """\
#!{python}
import runpy
import sys
from pathlib import Path

here = str(Path(__file__).resolve().parent)
sys.path.insert(0, here)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
import groundhog_mcp  # noqa: E402

if not groundhog_mcp.__file__.startswith(here):
    sys.exit(f"broken build: imported {{groundhog_mcp.__file__}} instead of the copy in {{here}}")
sys.argv[0] = "groundhog-mcp"
runpy.run_module("groundhog_mcp", run_name="__main__", alter_sys=True)
"""


def build(defects: Defect | str | Sequence[Defect | str], destination: Path) -> Path:
    """A copy of the installed package carrying ``defects``; returns its executable ``groundhog-mcp``."""
    chosen = [defects] if isinstance(defects, Defect | str) else list(defects)
    package = destination / "groundhog_mcp"
    # With the bytecode (copytree keeps the sources' times, so it stays valid): a process of the
    # copy then compiles only the patched module, not the whole package (~0.2 s of CPU a start).
    shutil.copytree(Path(groundhog_mcp.__file__).parent, package)
    for defect in chosen:
        defect = DEFECTS[defect] if isinstance(defect, str) else defect
        module = package / defect.module
        text = module.read_text(encoding="utf-8")
        defect.check_fits(text)
        module.write_text(text + defect.patch_source(), encoding="utf-8")
    launcher = destination / "groundhog-mcp"
    launcher.write_text(_LAUNCHER.format(python=sys.executable), encoding="utf-8")
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return launcher


def apply_in_process(defect: Defect, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant ``defect`` in the imported package until ``monkeypatch`` is undone."""
    module = importlib.import_module(defect.dotted)
    source_file = Path(module.__file__ or "")
    defect.check_fits(source_file.read_text(encoding="utf-8"))
    namespace = dict(vars(module))
    exec(compile(defect.source, f"<defect {defect.name}>", "exec"), namespace)
    for owner, attribute, function in defect.replaces:
        target = getattr(module, owner) if owner else module
        monkeypatch.setattr(target, attribute, namespace[function])
