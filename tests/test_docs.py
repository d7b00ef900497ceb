"""The documentation cannot drift: the generated reference pages are current, the examples run.

- docs/reference/*.md are what ``tools/gen_docs.py`` writes from the code today.
- Every ``$ groundhog-mcp …`` line of a ```console block in docs/ runs in-process
  (``tests.cli_in_process.run_cli``) against a fresh SQLite file, or a fresh PostgreSQL schema for a
  ``postgresql://`` URL, and its output is compared with the lines under it (``…`` stands for
  anything). Lines that cannot run here (a server that keeps running, a shell built-in, pip) are
  listed in ``NOT_RUN``: a new example is either run or added there on purpose.
- Every ```json block of docs/ parses; in docs/tools.md each is valid against the input or the
  output schema of the tool whose section holds it. (Client configs: tests/test_client_configs.py.)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shlex
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jsonschema
import psycopg
import pytest

from tests.cli_in_process import run_cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
WILDCARD = "…"

# `$` lines of docs/ that the runner does not run, and why.
NOT_RUN: dict[tuple[str, str], str] = {
    ("docs/http.md", "groundhog-mcp serve --transport http"): "serves until stopped (tests/e2e cover HTTP)",
    ("docs/http.md", "export GROUNDHOG_OAUTH_ISSUER_URL=https://auth.example.com"): "shell",
    ("docs/http.md", "export GROUNDHOG_OAUTH_INTROSPECTION_URL=https://auth.example.com/oauth2/introspect"): "shell",
    ("docs/http.md", "export GROUNDHOG_OAUTH_RESOURCE_URL=https://mcp.example.com/mcp"): "shell",
    ("docs/http.md", "export GROUNDHOG_OAUTH_CLIENT_ID=groundhog-rs"): "shell",
    ("docs/http.md", "export GROUNDHOG_OAUTH_CLIENT_SECRET_FILE=/run/secrets/groundhog-rs"): "shell",
    ("docs/http.md", "groundhog-mcp serve --transport http --allowed-host mcp.example.com"): "serves until stopped",
    ("docs/scaling.md", "pip install 'groundhog-context-mcp[postgres]'"): "installs from the registry",
    ("docs/dashboard.md", "groundhog-mcp dashboard"): "serves until stopped (tests/dashboard/test_command.py runs it)",
    (
        "docs/scaling.md",
        "groundhog-mcp --database 'postgresql://groundhog@db.internal:5432/agents?schema=groundhog'",
    ): "serves until stopped",
}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "tools" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- generated pages -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return _generator().pages()


@pytest.mark.parametrize("page", ["cli.md", "settings.md", "tools.md"])
def test_generated_reference_page_is_current(generated: dict[str, str], page: str) -> None:
    path = DOCS / "reference" / page
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current != generated[page]:
        ours, theirs = current.splitlines(), generated[page].splitlines()
        line = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), min(len(ours), len(theirs))
        )
        pytest.fail(
            f"docs/reference/{page} is stale (first difference at line {line + 1}): "
            "run `python tools/gen_docs.py` and commit the result"
        )


def test_generated_pages_are_deterministic(generated: dict[str, str]) -> None:
    assert _generator().pages() == generated


# -- code blocks -----------------------------------------------------------------------------------


@dataclass
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    text: str
    heading: str = ""  # the nearest ## heading above it


def _blocks(language: str) -> list[Block]:
    found: list[Block] = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        heading = ""
        fence: Block | None = None
        body: list[str] = []
        for number, line in enumerate(text.splitlines(), start=1):
            if fence is None and line.startswith("## "):
                heading = line[3:].strip()
            elif fence is None and line.startswith("```"):
                fence = Block(str(path.relative_to(ROOT)), number, line[3:].strip(), "", heading)
                body = []
            elif fence is not None and line.startswith("```"):
                fence.text = "\n".join(body) + "\n"
                if fence.language == language:
                    found.append(fence)
                fence = None
            elif fence is not None:
                body.append(line)
    return found


@dataclass
class Command:
    line: str  # as written after "$ ", comment removed
    expected: list[str] = field(default_factory=list[str])


def _commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            commands.append(Command(_uncomment(line[2:])))
        elif commands and line.strip():
            commands[-1].expected.append(line)
    return commands


def _uncomment(line: str) -> str:
    """The command without a trailing ``# comment`` (a ``#`` inside quotes is kept)."""
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index].strip()
    return line.strip()


def _runnable(path: str, command: Command) -> bool:
    words = shlex.split(command.line)
    if (path, command.line) in NOT_RUN:
        return False
    assert words[0] == "groundhog-mcp", f"{path}: `$ {command.line}` is neither run nor listed in NOT_RUN"
    return True


def _console_blocks() -> list[Block]:
    return [b for b in _blocks("console") if any((b.path, c.line) not in NOT_RUN for c in _commands(b))]


def test_every_console_line_is_run_or_listed() -> None:
    listed: set[tuple[str, str]] = set()
    for block in _blocks("console"):
        for command in _commands(block):
            if not _runnable(block.path, command):
                listed.add((block.path, command.line))
    assert listed == set(NOT_RUN), "NOT_RUN names lines that are no longer in docs/: " + repr(set(NOT_RUN) - listed)


class _FreshSchema:
    """A PostgreSQL schema of its own, for an example's ``postgresql://`` URL; dropped if used
    (a block without one needs no server)."""

    def __init__(self) -> None:
        self.base = os.environ.get("GROUNDHOG_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
        self.name = f"docs_{uuid.uuid4().hex[:12]}"
        self.used = False

    def url(self) -> str:
        self.used = True
        return f"{self.base}?schema={self.name}"

    def drop(self) -> None:
        if self.used:
            with psycopg.connect(self.base, autocommit=True, connect_timeout=5) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def _matches(expected: str, actual: str) -> bool:
    pattern = ".*".join(re.escape(part) for part in expected.split(WILDCARD))
    return re.fullmatch(pattern, actual) is not None


def _same_json(expected: Any, actual: Any) -> bool:
    if expected == WILDCARD:
        return True
    if isinstance(expected, dict) and isinstance(actual, dict):
        return expected.keys() == actual.keys() and all(_same_json(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list) and isinstance(actual, list):
        return len(expected) == len(actual) and all(_same_json(e, a) for e, a in zip(expected, actual, strict=True))
    return type(expected) is type(actual) and expected == actual


def _check_output(where: str, command: Command, code: int, stdout: str, stderr: str) -> None:
    expected = "\n".join(command.expected)
    if expected.startswith("groundhog-mcp: "):  # a refusal: one line on stderr, nothing on stdout
        assert code != 0 and stdout == "", f"{where}: expected a refusal, got exit {code}:\n{stdout}"
        last = stderr.strip().splitlines()[-1]
        assert _matches(expected, last), f"{where}: stderr\n{last}\ndoes not match\n{expected}"
        return
    assert code == 0, f"{where}: exited {code}:\n{stderr}"
    if not expected:
        return
    with contextlib.suppress(json.JSONDecodeError):
        shown = json.loads(expected)
        assert _same_json(shown, json.loads(stdout)), f"{where}: stdout\n{stdout}\ndoes not match\n{expected}"
        return
    lines = (stdout + stderr).splitlines()
    for line in command.expected:
        text = re.sub(r"\s+# .*$", "", line).strip()
        assert any(_matches(text, actual) for actual in lines), f"{where}: no output line matches {text!r}:\n{lines}"


@pytest.mark.parametrize("block", _console_blocks(), ids=lambda b: f"{b.path}:{b.line}")
def test_console_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output files (export -o all.jsonl) land here
    home = tmp_path / "home"
    sqlite = str(tmp_path / "groundhog.sqlite")
    ran = 0
    postgres = _FreshSchema()
    try:
        for command in _commands(block):
            if not _runnable(block.path, command):
                continue
            words = shlex.split(command.line)[1:]
            if "--database" in words:  # the example's database: a fresh one of the same backend
                at = words.index("--database") + 1
                words[at] = postgres.url() if words[at].startswith("postgresql://") else sqlite
            result = run_cli(*words, env={"GROUNDHOG_DATABASE": sqlite}, home=home, check=False)
            where = f"{block.path}:{block.line} `$ {command.line}`"
            _check_output(where, command, result.returncode, result.stdout, result.stderr)
            ran += 1
    finally:
        postgres.drop()
    assert ran > 0


# -- JSON ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tool_schemas(generated: dict[str, str]) -> dict[str, dict[str, Any]]:
    import asyncio

    tools = asyncio.run(_generator()._list_tools())
    return {tool["name"]: tool for tool in tools}


def test_every_json_block_parses() -> None:
    blocks = _blocks("json")
    assert blocks
    for block in blocks:
        try:
            # "…" elides the rest of a long answer, as in console output: `, …}` ends the object.
            json.loads(re.sub(rf",\s*{WILDCARD}\s*([}}\]])", r"\1", block.text))
        except json.JSONDecodeError as exc:
            pytest.fail(f"{block.path}:{block.line}: not JSON ({exc})")


def test_tool_json_examples_match_the_tool_schemas(tool_schemas: dict[str, dict[str, Any]]) -> None:
    checked = 0
    for block in _blocks("json"):
        if block.path != "docs/tools.md" or block.heading not in tool_schemas:
            continue
        value = json.loads(block.text)
        tool = tool_schemas[block.heading]
        problems: list[str] = []
        for key in ("inputSchema", "outputSchema"):
            errors = list(jsonschema.Draft202012Validator(tool[key]).iter_errors(value))
            if not errors:
                break
            problems.append(f"{key}: {errors[0].message[:200]}")
        else:
            pytest.fail(f"{block.path}:{block.line} ({block.heading}): fits neither schema: {problems}")
        checked += 1
    assert checked >= 4
