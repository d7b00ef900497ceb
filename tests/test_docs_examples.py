"""Every fenced block of README.md and docs/**/*.md runs, or says why it cannot.

The blocks and their markers are described in tests/docs_examples.py. Tool-call walkthroughs
run through the SDK's in-memory ``mcp.Client`` against a real server on a fresh SQLite file
(one per page, so a page's examples build on each other in order); console commands run
through the CLI's ``main`` (tests/cli_in_process.py) against a fresh database, except the ones
that serve, which start the real console script as a process and stop it once it serves.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import inspect
import io
import json
import os
import re
import signal
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
from mcp import Client

from groundhog_mcp.app import Settings, create_server, load_settings
from tests.cli_in_process import run_cli
from tests.docs_examples import (
    READERS,
    ROOT,
    SHELL_LANGUAGES,
    Block,
    Setup,
    ShellCommand,
    all_blocks,
    before_commands,
    json_differences,
    kind_of,
    normalise_text,
    page_items,
    pages,
    parse_shown,
    relative,
    shell_commands,
    text_matches,
)
from tests.e2e.harness import cli_argv, server_env
from tests.test_client_configs import check_mcp_servers

BLOCKS = all_blocks()


def _kinds() -> dict[str, list[Block]]:
    found: dict[str, list[Block]] = {}
    for block in BLOCKS:
        with contextlib.suppress(ValueError):
            found.setdefault(kind_of(block), []).append(block)
    return found


KINDS = _kinds()


def test_every_block_is_classified() -> None:
    problems: list[str] = []
    for block in BLOCKS:
        try:
            kind_of(block)
        except ValueError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)


def test_the_runner_sees_the_pages_and_every_kind() -> None:
    assert {"README.md", "docs/guide.md", "docs/tools.md", "docs/cli.md"} <= {relative(p) for p in pages()}
    assert set(KINDS) >= {"call", "result", "error", "python", "shell", "config", "not-run"}


def test_every_json_and_toml_block_parses() -> None:
    for block in BLOCKS:
        try:
            if block.language == "json":
                parse_shown(block.text)
            elif block.language == "toml":
                tomllib.loads(block.text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            pytest.fail(f"{block.where}: not {block.language} ({exc})")


# -- configs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", KINDS.get("config", []), ids=lambda b: b.where)
def test_client_config_names_real_commands_and_settings(block: Block, tmp_path: Path) -> None:
    check_mcp_servers(json.loads(block.text), tmp_path)


@pytest.mark.parametrize("block", KINDS.get("settings", []), ids=lambda b: b.where)
def test_settings_file_loads(block: Block, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(block.text, encoding="utf-8")
    settings = load_settings({}, env={"HOME": str(tmp_path)}, config_file=config)
    for key, value in tomllib.loads(block.text).items():
        assert getattr(settings, key) == value, f"{block.where}: {key}"


# -- shell -----------------------------------------------------------------------------------------


class _FreshSchema:
    """A PostgreSQL schema of its own, for an example's ``postgresql://`` URL; dropped if used."""

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


def _serves(words: list[str]) -> bool:
    from groundhog_mcp.cli.commands import _parser  # pyright: ignore[reportPrivateUsage]

    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = _parser().parse_args(words)
    except SystemExit:
        return False
    return getattr(args, "command", None) in (None, "serve")


def _start(words: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """The real console script as a process, its standard streams piped."""
    return subprocess.Popen(
        cli_argv(*words), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True
    )


def _until_serving(process: subprocess.Popen[str]) -> tuple[str, dict[str, Any] | None]:
    """The stderr lines up to the ``serving`` log line, and that line (None: it exited first)."""
    assert process.stderr is not None
    seen = ""
    for line in process.stderr:
        seen += line
        if '"serving"' in line:
            return seen, json.loads(line)
    return seen, None


def _serve_and_stop(words: list[str], env: dict[str, str], where: str) -> tuple[int, str, str]:
    """The real console script, serving: it logs ``serving`` and then stops cleanly on SIGTERM
    (HTTP) or at the end of its input (stdio)."""
    http = "--transport" in words and words[words.index("--transport") + 1] in ("http", "sse")
    if http:
        words = [w for i, w in enumerate(words) if w != "--port" and (i == 0 or words[i - 1] != "--port")]
        words += ["--port", "0"]
    process = _start(words, env)
    seen = ""
    try:
        if http:
            seen, serving = _until_serving(process)
            assert serving is not None, f"{where}: exited without serving:\n{seen[-2000:]}"
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(input="", timeout=120)  # stdio: the end of input stops it
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, stdout, seen + stderr


def _check_output(where: str, command: ShellCommand, code: int, stdout: str, stderr: str) -> None:
    expected = "\n".join(command.expected)
    if expected.startswith("groundhog-mcp: "):  # a refusal: one line on stderr, nothing on stdout
        assert code != 0 and stdout == "", f"{where}: expected a refusal, got exit {code}:\n{stdout}"
        last = stderr.strip().splitlines()[-1]
        assert text_matches(normalise_text(expected), normalise_text(last)), (
            f"{where}: stderr\n{last}\nis not\n{expected}"
        )
        return
    assert code == 0, f"{where}: exited {code}:\n{stderr}"
    if not expected:
        return
    if expected.lstrip().startswith(("{", "[")) and "\n$" not in expected:
        with contextlib.suppress(json.JSONDecodeError):
            shown = parse_shown(expected)
            problems = list(json_differences(shown, json.loads(stdout)))
            assert not problems, f"{where}: stdout\n{stdout}\ndiffers from the page: " + "; ".join(problems)
            return
    lines = [normalise_text(line) for line in (stdout + stderr).splitlines()]
    for line in command.expected:
        text = normalise_text(re.sub(r"\s+# .*$", "", line).strip())
        if text == "…":
            continue
        assert any(text_matches(text, actual.strip()) for actual in lines), (
            f"{where}: no output line matches {text!r}:\n" + "\n".join(lines)
        )


def _paths_in(words: list[str], scratch: Path) -> list[str]:
    """Absolute example paths (/tmp/…, /elsewhere/…, ~/…) moved into the test's scratch dir."""
    moved: list[str] = []
    for word in words:
        for prefix in ("/tmp/", "/elsewhere/", "~/"):
            if word.startswith(prefix):
                word = str(scratch / word.removeprefix(prefix))
                Path(word).parent.mkdir(parents=True, exist_ok=True)
        moved.append(word)
    return moved


@pytest.mark.parametrize("block", KINDS.get("shell", []), ids=lambda b: b.where)
def test_shell_example_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative output files (export -o all.jsonl) land here
    home = tmp_path / "home"
    sqlite = str(tmp_path / "demo.sqlite")  # the pages' /tmp/demo.sqlite
    postgres = _FreshSchema()
    try:
        for command in before_commands(block):
            done = run_cli(*_paths_in(command.words[1:], tmp_path), env={"GROUNDHOG_DATABASE": sqlite}, home=home)
            assert done.returncode == 0, f"{block.where}: before: {command.line}: {done.stderr}"
        for command in shell_commands(block):
            where = f"{block.where} `{command.line}`"
            words = _paths_in(command.words[1:], tmp_path)
            if command.words[0] in READERS:  # shows a file an earlier command wrote
                shown = Path(words[-1]).read_bytes()
                if command.words[0] == "head":
                    shown = shown[: int(words[words.index("-c") + 1])]
                _check_output(where, command, 0, shown.decode(errors="replace"), "")
                continue
            redirect = None
            if ">" in words:
                at = words.index(">")
                words, redirect = words[:at], Path(words[at + 1])
            if "--database" in words:  # the example's database, a fresh one of the same backend
                at = words.index("--database") + 1
                if words[at].startswith("postgresql://"):
                    words[at] = postgres.url()
            if _serves(words):
                env = server_env(home, os.environ) | {"GROUNDHOG_DATABASE": sqlite}
                code, stdout, stderr = _serve_and_stop(words, env, where)
                assert code == 0, f"{where}: exited {code}:\n{stderr[-2000:]}"
                assert '"serving"' in stderr, f"{where}: never served:\n{stderr[-2000:]}"
                continue
            if command.stdin is not None:
                monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(command.stdin.encode())))
            result = run_cli(*words, env={"GROUNDHOG_DATABASE": sqlite}, home=home, check=False)
            stdout = result.stdout
            if command.grep is not None:
                stdout = "".join(line for line in stdout.splitlines(keepends=True) if command.grep in line)
            if redirect is not None:
                redirect.write_text(stdout, encoding="utf-8")
                stdout = ""
            scratch = f"{tmp_path}/"  # shown as the page's /tmp/
            _check_output(
                where,
                command,
                result.returncode,
                stdout.replace(scratch, "/tmp/"),
                result.stderr.replace(scratch, "/tmp/"),
            )
    finally:
        postgres.drop()


# -- tool calls, resources and python, one server per page -----------------------------------------


def _tool_pages() -> list[str]:
    wanted = {"call", "result", "error", "arguments", "resources", "python"}
    return sorted({b.path for kind, blocks in KINDS.items() if kind in wanted for b in blocks})


class PageSession:
    def __init__(self, client: Client, server: Any, scratch: Path, tools: dict[str, Any]) -> None:
        self.client = client
        self.server = server
        self.scratch = scratch
        self.tools = tools
        self.last: Any = None  # (where, result) of the last call
        self.namespace: dict[str, Any] = {"__name__": "__docs__"}

    async def call(self, where: str, tool: str, arguments: dict[str, Any]) -> None:
        result = await self.client.call_tool(tool, arguments)
        self.last = (where, tool, result)

    def last_call(self, block: Block) -> tuple[str, str, Any]:
        assert self.last is not None, f"{block.where}: a {kind_of(block)} example with no call above it"
        last, self.last = self.last, None
        return last

    async def run(self, block: Block) -> None:
        kind = kind_of(block)
        if kind == "call":
            tool = block.marker("call") or ""
            await self.call(block.where, tool, parse_shown(block.text))
        elif kind == "result":
            where, tool, result = self.last_call(block)
            text = "".join(getattr(c, "text", "") for c in result.content)
            assert not result.is_error, f"{where}: {tool} failed: {text}"
            problems = list(json_differences(parse_shown(block.text), result.structured_content))
            assert not problems, f"{block.where}: the result of {tool} ({where}) differs: " + "; ".join(problems)
        elif kind == "error":
            where, tool, result = self.last_call(block)
            text = "".join(getattr(c, "text", "") for c in result.content)
            assert result.is_error, f"{where}: {tool} succeeded, the page shows an error"
            shown = block.text.strip()
            assert text_matches(normalise_text(shown), normalise_text(text)), (
                f"{block.where}: the error of {tool} ({where}) is\n{text}\nthe page shows\n{shown}"
            )
        elif kind == "arguments":
            tool = block.marker("arguments") or ""
            assert tool in self.tools, f"{block.where}: no tool {tool!r}"
            errors = list(jsonschema.Draft202012Validator(self.tools[tool]).iter_errors(parse_shown(block.text)))
            assert not errors, f"{block.where}: not valid arguments of {tool}: {errors[0].message[:200]}"
        elif kind == "resources":
            await self.read_resources(block)
        elif kind == "calls":
            await self.refusals(block)
        elif kind == "python":
            await self.run_python(block)

    async def refusals(self, block: Block) -> None:
        lines = [line for line in block.text.splitlines() if line.strip()]
        assert len(lines) % 2 == 0, f"{block.where}: `calls` lines come in pairs: TOOL {{json}} / → error"
        for call, shown in zip(lines[::2], lines[1::2], strict=True):
            tool, _, arguments = call.partition(" ")
            result = await self.client.call_tool(tool, parse_shown(arguments))
            text = "".join(getattr(c, "text", "") for c in result.content)
            expected = shown.removeprefix("→").strip()
            assert result.is_error, f"{block.where}: `{call}` succeeded, the page shows an error"
            assert text_matches(expected, text), f"{block.where}: `{call}` answered\n{text}\nthe page shows\n{expected}"

    async def read_resources(self, block: Block) -> None:
        pairs = [p for p in block.text.strip().split("\n\n") if p.strip()]
        for pair in pairs:
            uri, _, shown = pair.strip().partition("\n")
            read = await self.client.read_resource(uri.strip())
            actual = json.loads(getattr(read.contents[0], "text", ""))
            problems = list(json_differences(parse_shown(shown), actual))
            assert not problems, f"{block.where}: {uri} differs: " + "; ".join(problems)

    async def run_python(self, block: Block) -> None:
        code = block.text
        async with contextlib.AsyncExitStack() as stack:
            if "client" in block.markers:
                modern = await stack.enter_async_context(Client(self.server, mode="2026-07-28"))
                self.namespace["client"] = modern
            if "http-server" in block.markers:
                url, token = await asyncio.to_thread(stack.enter_context, _http_server(self.scratch))
                code = code.replace("http://127.0.0.1:8765", url)
                self.namespace["token"] = token
            compiled = compile(code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            previous = Path.cwd()
            os.chdir(self.scratch)
            try:
                async with asyncio.timeout(120):
                    if compiled.co_flags & inspect.CO_COROUTINE:  # top-level await: on this loop
                        await eval(compiled, self.namespace)
                    else:  # a script (asyncio.run(main()) and all): on a thread, as `python` would
                        await asyncio.to_thread(exec, compiled, self.namespace)
            finally:
                os.chdir(previous)


@contextlib.contextmanager
def _http_server(scratch: Path) -> Iterator[tuple[str, str]]:
    """``groundhog-mcp serve --transport http`` as a process, with a token: (base URL, token)."""
    home = scratch / "http-home"
    env = server_env(home, os.environ) | {"GROUNDHOG_DATABASE": str(scratch / "http.sqlite")}
    created = subprocess.run(
        cli_argv("tokens", "create", "--principal", "docs"), env=env, capture_output=True, text=True, check=True
    )
    token = created.stdout.strip()
    process = _start(["serve", "--transport", "http", "--port", "0"], env)
    try:
        seen, serving = _until_serving(process)
        assert serving is not None, f"the HTTP server exited without serving:\n{seen[-2000:]}"
        yield str(serving["url"]).removesuffix("/mcp"), token
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.parametrize("page", _tool_pages())
async def test_page_examples_run_against_a_real_server(page: str, tmp_path: Path) -> None:
    settings = Settings(database=str(tmp_path / "page.sqlite"), tools="all")
    server = create_server(settings)
    async with Client(server) as client:
        tools = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        session = PageSession(client, server, tmp_path, tools)
        problems: list[str] = []
        ran = 0
        for item in page_items(ROOT / page):
            if isinstance(item, Setup):
                result = await client.call_tool(item.tool, item.arguments)
                text = "".join(getattr(c, "text", "") for c in result.content)
                assert not result.is_error, f"{item.path}:{item.line}: setup {item.tool} failed: {text}"
                continue
            if item.language in SHELL_LANGUAGES:
                continue
            with contextlib.suppress(ValueError):
                if kind_of(item) in ("not-run", "config", "settings"):
                    continue
            try:
                await session.run(item)
            except AssertionError as exc:  # go on: one run names every example that drifted
                problems.append(str(exc).split("\nassert ")[0])
            ran += 1
        assert not problems, "\n\n".join(problems)
        assert ran > 0
        assert session.last is None, f"{session.last[0]}: a call whose result the page does not show"
