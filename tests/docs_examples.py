"""The fenced blocks of README.md and docs/**/*.md, and how each one is checked.

A block is classified by its language and by the ``<!-- example: … -->`` comment lines right
above its opening fence (the rendered page does not show them):

- ```python (marker: none, or a fixture, ``client`` or ``http-server``): executed, the page's
  python blocks in order in one namespace, in a temp dir; top-level ``await`` allowed.
- ```console / ```bash / ```sh (marker: none, or ``before: COMMAND`` lines, run first, unshown):
  every ``groundhog-mcp …`` command runs against a fresh database; the output shown under a
  ``$`` line is compared; ``cat`` / ``head -c`` show a file an earlier command wrote.
- ```json ``call TOOL``: sent to TOOL on the page's server (in-memory ``mcp.Client``, a fresh
  SQLite file, every tool); ```json ``result``: the structured result of the call above it;
  ```text ``error``: the error text of the call above it.
- ```json ``arguments TOOL``: valid against TOOL's input schema (not sent: it needs a state the
  page does not build).
- ```text ``resources``: ``URI`` / JSON line pairs, each URI read on the page's server.
- ```text ``calls``: ``TOOL {json arguments}`` / ``→ error text`` line pairs, each call made on
  the page's server and its error text compared (several refusals in one block).
- ```json ``config``: an ``mcpServers`` client config, its command and settings checked
  (tests/test_client_configs.py); ```toml ``settings``: a config.toml, loaded as the server does.
- any block, ``not-run: REASON``: only parsed (JSON, TOML); the reason says why it cannot run.

``<!-- example: setup TOOL {json} -->`` lines (not above a block) are calls made on the page's
server at that point: the state a walkthrough starts from. Anything else, a block of another
language or a console command that is not ``groundhog-mcp``, fails
``test_every_block_is_classified``: a new example cannot silently escape.

Comparing: ``…`` stands for anything (a whole value, the rest of a string, or, as
``, …}`` / ``, …]``, further keys or items); RFC 3339 timestamps and UUIDs compare equal to any
other timestamp or UUID.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WILDCARD = "…"
# Generated from the code and checked for freshness by tests/test_docs.py; their blocks are usage synopses.
GENERATED = ROOT / "docs" / "reference"

_MARKER = re.compile(r"^<!-- example: (.*?) -->\s*$")
SHELL_LANGUAGES = ("console", "bash", "sh")
# Commands besides groundhog-mcp a console example may use: they show a file an earlier command wrote.
READERS = ("cat", "head")
FIXTURES = ("client", "http-server")


def pages() -> list[Path]:
    """README.md and every page under docs/ except the generated reference."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path for path in found if GENERATED not in path.parents]


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@dataclass
class Block:
    path: str  # relative to the repository
    line: int  # of the opening fence
    language: str
    text: str
    markers: list[str] = field(default_factory=list[str])
    heading: str = ""  # the nearest heading above it

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    def marker(self, kind: str) -> str | None:
        """The argument of this block's ``kind`` marker ('' when it has none), or None."""
        for marker in self.markers:
            word, _, rest = marker.partition(" ")
            if word == kind or word == kind + ":":
                return rest.strip()
        return None

    @property
    def not_run(self) -> str | None:
        for marker in self.markers:
            if marker.startswith("not-run:"):
                return marker.removeprefix("not-run:").strip()
        return None


@dataclass
class Setup:
    """A ``setup TOOL {json}`` line: a call made on the page's server, shown to no reader."""

    path: str
    line: int
    tool: str
    arguments: dict[str, Any]


def page_items(path: Path) -> list[Block | Setup]:
    """The fenced blocks and setup lines of a page, in order."""
    items: list[Block | Setup] = []
    markers: list[str] = []
    fence: Block | None = None
    body: list[str] = []
    heading = ""
    indent = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = line.strip()
        if fence is not None:
            if stripped == "```" and line.startswith(indent):
                fence.text = "\n".join(b.removeprefix(indent) for b in body) + "\n"
                items.append(fence)
                fence = None
            else:
                body.append(line)
            continue
        if stripped.startswith("```"):
            indent = line[: len(line) - len(line.lstrip())]
            fence = Block(relative(path), number, stripped[3:].strip(), "", markers, heading)
            markers, body = [], []
            continue
        found = _MARKER.match(stripped)
        if found and found.group(1).startswith("setup "):
            tool, _, arguments = found.group(1).removeprefix("setup ").partition(" ")
            items.append(Setup(relative(path), number, tool, json.loads(arguments or "{}")))
        elif found:
            markers.append(found.group(1))
        elif stripped:
            markers = []  # a marker belongs to the block right below it
            if stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
    return items


def all_blocks() -> list[Block]:
    return [item for path in pages() for item in page_items(path) if isinstance(item, Block)]


# -- classification --------------------------------------------------------------------------------

_TOOL_KINDS = ("call", "result", "error", "arguments", "resources", "calls")


def kind_of(block: Block) -> str:
    """What checks ``block``; raises ``ValueError`` naming the problem when nothing does."""
    if block.not_run is not None:
        if not block.not_run:
            raise ValueError(f"{block.where}: `not-run:` needs a reason")
        return "not-run"
    for kind in _TOOL_KINDS:
        if block.marker(kind) is not None:
            wanted = {"error": "text", "resources": "text", "calls": "text"}.get(kind, "json")
            if block.language != wanted:
                raise ValueError(f"{block.where}: a `{kind}` example is a ```{wanted} block")
            return kind
    if block.language == "json" and block.marker("config") is not None:
        return "config"
    if block.language == "toml" and block.marker("settings") is not None:
        return "settings"
    if block.language == "python":
        unknown = [m for m in block.markers if m not in FIXTURES]
        if unknown:
            raise ValueError(f"{block.where}: unknown python fixture {unknown} (known: {', '.join(FIXTURES)})")
        return "python"
    if block.language in SHELL_LANGUAGES:
        unknown = [m for m in block.markers if not m.startswith("before:")]
        if unknown:
            raise ValueError(f"{block.where}: unknown marker {unknown} on a shell block")
        if not shell_commands(block):
            raise ValueError(f"{block.where}: a shell block with no command (console commands start with `$ `)")
        for command in shell_commands(block) + before_commands(block):
            if command.words[:1] != ["groundhog-mcp"] and command.words[0] not in READERS:
                raise ValueError(
                    f"{block.where}: `{command.line}` is not a groundhog-mcp command: "
                    "mark the block <!-- example: not-run: REASON --> or make it runnable"
                )
        return "shell"
    raise ValueError(
        f"{block.where}: a ```{block.language or '(no language)'} block with no <!-- example: … --> marker: "
        "mark it as a call/result/error/arguments/resources/config/settings example or not-run: REASON"
    )


# -- shell blocks ----------------------------------------------------------------------------------


@dataclass
class ShellCommand:
    line: str  # as written, comment removed, without a leading "$ "
    words: list[str]  # of the groundhog-mcp command itself
    stdin: str | None = None  # from `echo '…' |`
    grep: str | None = None  # from `| grep WORD`
    expected: list[str] = field(default_factory=list[str])


def uncomment(line: str) -> str:
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


def shell_commands(block: Block) -> list[ShellCommand]:
    """A console block's ``$`` lines with the output under each; every line of a bash block."""
    commands: list[ShellCommand] = []
    prompted = block.language == "console"
    for raw in block.text.splitlines():
        if prompted and not raw.startswith("$ "):
            if commands and raw.strip():
                commands[-1].expected.append(raw)
            continue
        line = uncomment(raw.removeprefix("$ ") if prompted else raw)
        if line:
            commands.append(_parse_command(line))
    return commands


def before_commands(block: Block) -> list[ShellCommand]:
    """``before: COMMAND`` markers: run first, in order, unshown (the state the example starts from)."""
    return [_parse_command(m.removeprefix("before:").strip()) for m in block.markers if m.startswith("before:")]


def _parse_command(line: str) -> ShellCommand:
    stdin = grep = None
    text = line
    echo = re.match(r"^echo\s+('[^']*'|\"[^\"]*\")\s*\|\s*(.*)$", text)
    if echo:
        stdin, text = shlex.split(echo.group(1))[0] + "\n", echo.group(2)
    piped = re.match(r"^(.*?)\s*\|\s*grep\s+(\S+)$", text)
    if piped:
        text, grep = piped.group(1), piped.group(2)
    try:
        words = shlex.split(text)
    except ValueError:
        words = [text]
    return ShellCommand(line, words, stdin, grep)


# -- comparing -------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_MORE = "…more"  # the key or item standing for `, …}` / `, …]`


def parse_shown(text: str) -> Any:
    """JSON as a page shows it: ``…`` outside strings is a wildcard value, or, in place of keys
    in an object or as the last item of an array, says that more keys or items may be there."""
    out: list[str] = []
    stack: list[str] = []
    in_string = escaped = False
    index = 0
    while index < len(text):
        char = text[index]
        if in_string:
            out.append(char)
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
            out.append(char)
        elif char == WILDCARD:
            before = "".join(out).rstrip()
            in_object = bool(stack) and stack[-1] == "{"
            if in_object and before.endswith((",", "{")):  # in place of keys: more may be there
                out.append(json.dumps(_MORE) + ": null")
            elif not in_object and text[index + 1 :].lstrip().startswith("]") and before.endswith((",", "[")):
                out.append(json.dumps(_MORE))
            else:
                out.append(json.dumps(WILDCARD))
        else:
            if char in "{[":
                stack.append(char)
            elif char in "}]" and stack:
                stack.pop()
            out.append(char)
        index += 1
    return json.loads("".join(out))


def text_matches(expected: str, actual: str) -> bool:
    """``actual`` is ``expected`` with each ``…`` standing for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split(WILDCARD))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def json_differences(expected: Any, actual: Any, where: str = "") -> Iterator[str]:
    """Where ``actual`` differs from the ``expected`` a page shows (see :func:`parse_shown`)."""
    if expected == WILDCARD:
        return
    if isinstance(expected, dict) and isinstance(actual, dict):
        open_ended = _MORE in expected
        for key, value in expected.items():
            if key == _MORE:
                continue
            if key not in actual:
                yield f"{where}/{key}: shown, but not in the result"
            else:
                yield from json_differences(value, actual[key], f"{where}/{key}")
        if not open_ended:
            for key in actual.keys() - expected.keys():
                yield f"{where}/{key}: in the result ({json.dumps(actual[key])[:80]}), not shown"
        return
    if isinstance(expected, list) and isinstance(actual, list):
        open_ended = bool(expected) and expected[-1] == _MORE
        items = expected[:-1] if open_ended else expected
        if len(actual) < len(items) or (not open_ended and len(actual) != len(items)):
            yield f"{where}: {len(items)} items shown, {len(actual)} in the result"
        for index, (e, a) in enumerate(zip(items, actual, strict=False)):
            yield from json_differences(e, a, f"{where}/{index}")
        return
    if isinstance(expected, str) and isinstance(actual, str):
        if _same_kind_of_id(expected, actual) or text_matches(expected, actual):
            return
    elif type(expected) is type(actual) and expected == actual:
        return
    yield f"{where or '/'}: shown {json.dumps(expected)[:120]}, result {json.dumps(actual)[:120]}"


def _same_kind_of_id(expected: str, actual: str) -> bool:
    return any(p.match(expected) and p.match(actual) for p in (_TIMESTAMP, _UUID))


def normalise_text(text: str) -> str:
    """Timestamps and UUIDs inside a text line, as placeholders."""
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", "<time>", text)
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<uuid>", text)
