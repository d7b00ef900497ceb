"""``groundhog-mcp state ...``: a person's reads and writes through the tools' service calls.

In process through ``main(argv)`` (tests/cli_in_process.py), on a real SQLite file and a real
PostgreSQL schema: the happy path of every action, the errors with their exit status (README
"Command line"), the principal the writes are attributed to, and never a traceback.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.cli_in_process import run_cli
from tests.conformance.conftest import POSTGRES_URL

ALICE = {"GROUNDHOG_PRINCIPAL": "alice", "GROUNDHOG_AUDIT_KEY": "k" * 40}


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield str(tmp_path / "state.sqlite")
        return
    schema = f"gh_cli_{uuid.uuid4().hex[:12]}"
    yield f"{POSTGRES_URL}?schema={schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')  # pyright: ignore[reportCallIssue, reportArgumentType]


class Cli:
    """``groundhog-mcp --database D state ...`` as alice, with one private home for every call."""

    def __init__(self, database: str, home: Path) -> None:
        self.database, self.home = database, home

    def __call__(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        saved = sys.stdin
        if stdin is not None:
            sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        try:
            result = run_cli("--database", self.database, "state", *args, env=ALICE, home=self.home, check=False)
        finally:
            sys.stdin = saved
        assert "Traceback" not in result.stderr
        return result

    def ok(self, *args: str, stdin: bytes | None = None) -> Any:
        result = self(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def fails(self, code: int, *args: str) -> str:
        """The one line on stderr of a command that exits ``code`` and prints nothing on stdout."""
        result = self(*args)
        assert (result.returncode, result.stdout) == (code, ""), result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("groundhog-mcp: ")]
        assert len(lines) == 1, result.stderr
        return lines[0].removeprefix("groundhog-mcp: ")


@pytest.fixture
def cli(database: str, tmp_path: Path) -> Cli:
    return Cli(database, tmp_path / "home")


def _write(result: dict[str, Any]) -> tuple[Any, ...]:
    return result["name"], result["revision"], result["previous_revision"], result["op"], result["patch"]


def test_every_action_happy_path(cli: Cli, tmp_path: Path) -> None:
    created = cli.ok("set", "notes", '{"a": 1, "list": [1, 2]}', "--expected-revision", "0")
    assert _write(created) == ("notes", 1, None, "register", [])
    merged = cli.ok("patch", "notes", "--merge", '{"b": 2, "a": null}', "--expected-revision", "1")
    assert _write(merged) == (
        "notes",
        2,
        1,
        "update",
        [{"op": "remove", "path": "/data/a"}, {"op": "add", "path": "/data/b", "value": 2}],
    )
    patched = cli.ok("patch", "notes", "--json-patch", "-", stdin=b'[{"op": "add", "path": "/list/-", "value": 3}]')
    assert _write(patched) == ("notes", 3, 2, "update", [{"op": "add", "path": "/data/list/2", "value": 3}])
    data_file = tmp_path / "data.json"
    data_file.write_text('{"replaced": true}')
    assert _write(cli.ok("set", "notes", "--file", str(data_file), "--expected-revision", "3"))[:4] == (
        "notes",
        4,
        3,
        "update",
    )
    assert _write(cli.ok("set", "notes", stdin=b'{"from": "stdin"}'))[:3] == ("notes", 5, 4)

    current = cli.ok("get", "notes")
    assert (current["revision"], current["current_revision"]) == (5, 5)
    assert current["state"]["data"] == {"from": "stdin"} and current["state"]["version"] == "1.0.0"
    assert cli.ok("get", "notes", "--revision", "3", "--path", "/list") == {
        "name": "notes",
        "revision": 3,
        "current_revision": 5,
        "path": "/list",
        "value": [1, 2, 3],
    }

    history = cli.ok("history", "notes", "--limit", "2")
    assert [(r["revision"], r["op"], r["actor"]) for r in history["revisions"]] == [
        (5, "update", "alice"),
        (4, "update", "alice"),
    ]
    assert (history["current_revision"], history["next_before"]) == (5, 4)
    older = cli.ok("history", "notes", "--before", "2")
    assert [(r["revision"], r["op"], r["actor"]) for r in older["revisions"]] == [(1, "register", "alice")]
    assert older["next_before"] is None

    assert cli.ok("diff", "notes", "2", "3") == {
        "name": "notes",
        "from_revision": 2,
        "to_revision": 3,
        "patch": [{"op": "add", "path": "/data/list/2", "value": 3}],
    }
    assert cli.ok("diff", "notes", "4")["to_revision"] == 5

    restored = cli.ok("rollback", "notes", "1", "--expected-revision", "5")
    assert _write(restored)[:4] == ("notes", 6, 5, "rollback")
    assert cli.ok("get", "notes")["state"]["data"] == {"a": 1, "list": [1, 2]}


def test_writes_are_attributed_to_the_configured_principal(cli: Cli, tmp_path: Path) -> None:
    cli.ok("set", "notes", "{}", "--expected-revision", "0")
    cli.ok("patch", "notes", "--merge", '{"x": 1}')
    exported = run_cli("--database", cli.database, "audit", "export", env=ALICE, home=cli.home)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    writes = [(row["principal"], row["operation"], row["revision"]) for row in rows if row["context"] == "notes"]
    assert writes == [("alice", "register", 1), ("alice", "update", 2)]


def test_a_write_without_the_grant_is_refused_and_audited_as_the_tool(cli: Cli) -> None:
    cli.ok("set", "notes", '{"n": 1}', "--expected-revision", "0")
    reader = {**ALICE, "GROUNDHOG_GRANTS": "read:"}
    denied = run_cli("--database", cli.database, "state", "set", "notes", "{}", env=reader, home=cli.home, check=False)
    assert (denied.returncode, denied.stdout) == (1, "")
    assert denied.stderr.endswith(
        "groundhog-mcp: access: the write grant on 'notes' is missing for principal 'alice'\n"
    )
    exported = run_cli("--database", cli.database, "audit", "export", env=ALICE, home=cli.home)
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["principal"], r["operation"], r["outcome"]) for r in rows if r["outcome"] == "denied"] == [
        ("alice", "update_state", "denied")
    ]
    assert cli.ok("get", "notes")["state"]["data"] == {"n": 1}


def test_a_stale_expected_revision_fails_and_names_the_current_one(cli: Cli) -> None:
    cli.ok("set", "notes", '{"n": 1}', "--expected-revision", "0")
    cli.ok("set", "notes", '{"n": 2}')
    before = cli.ok("get", "notes")
    message = cli.fails(1, "set", "notes", '{"n": 3}', "--expected-revision", "1")
    assert message.startswith("expected_revision: conflict, expected revision 1 but context 'notes' is at revision 2")
    message = cli.fails(1, "patch", "notes", "--merge", '{"n": 4}', "--expected-revision", "1")
    assert "is at revision 2" in message
    message = cli.fails(1, "rollback", "notes", "1", "--expected-revision", "1")
    assert "is at revision 2" in message
    message = cli.fails(1, "set", "notes", "{}", "--expected-revision", "0")
    assert message.startswith("expected_revision: conflict, 0 means create-only but context 'notes' already exists")
    assert cli.ok("get", "notes") == before  # nothing was written


def test_a_missing_context_fails_on_every_action(cli: Cli) -> None:
    for args in (
        ("get", "missing"),
        ("set", "missing", "{}"),  # as update_state: only --expected-revision 0 creates
        ("patch", "missing", "--merge", "{}"),
        ("history", "missing"),
        ("diff", "missing", "1"),
        ("rollback", "missing", "1"),
    ):
        assert cli.fails(1, *args) == "name: no context named 'missing'", args


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_bad_input_is_refused_before_anything_is_written(cli: Cli, tmp_path: Path) -> None:
    cli.ok("set", "notes", '{"kept": true}', "--expected-revision", "0")
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("{nope")
    # JSON on the command line is part of it: exit 2; in a file or on stdin: exit 1, as import.
    assert cli.fails(2, "set", "notes", "{nope") == (
        "data: not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
    )
    assert cli.fails(2, "set", "notes", "[1, 2]") == "data: must be a JSON object; got a JSON array"
    assert cli.fails(2, "patch", "notes", "--merge", '"text"') == (
        "merge: an RFC 7396 merge patch is a JSON object; got a JSON string"
    )
    assert cli.fails(2, "patch", "notes", "--json-patch", "{}") == (
        "json-patch: an RFC 6902 patch is a JSON array of operation objects"
    )
    assert cli.fails(1, "set", "notes", "--file", str(bad_file)) == (
        f"data: {bad_file} is not valid JSON (Expecting property name enclosed in double quotes at line 1 column 2)"
    )
    assert cli.fails(1, "set", "notes", "--file", str(tmp_path / "absent.json")) == (
        f"data: cannot read {tmp_path / 'absent.json'}: No such file or directory"
    )
    assert cli.fails(1, "patch", "notes", "--json-patch", '[{"op": "test", "path": "/kept", "value": false}]')
    assert cli.fails(1, "get", "notes", "--path", "/nope").startswith("path: '/nope' does not exist in the state")
    assert (
        cli.fails(1, "diff", "notes", "9") == "from_revision: context 'notes' has no revision 9 (current revision is 1)"
    )
    assert cli.fails(1, "history", "notes", "--limit", "0") == "limit: must be between 1 and 100; got 0"
    assert cli.ok("get", "notes")["state"]["data"] == {"kept": True}
    assert cli.ok("history", "notes")["current_revision"] == 1


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_no_data_and_a_terminal_on_stdin_is_a_usage_error(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    controller, terminal = os.openpty()
    os.write(controller, b"\x04\x04")  # Ctrl-D twice: were stdin read anyway, it would end, not wait
    with os.fdopen(terminal, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert cli.fails(2, "set", "notes") == (
            "data: give it as an argument, with --file F, or on stdin (nothing is piped in)"
        )
        assert cli.fails(2, "patch", "notes", "--merge", "-").startswith("merge: give it as an argument")
    os.close(controller)


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "args",
    [
        ("get", "notes", "--revision", "0"),
        ("get", "notes", "--revision", "x"),
        ("set", "notes", "{}", "--file", "f.json"),
        ("set", "notes", "{}", "--expected-revision", "-1"),
        ("patch", "notes"),
        ("patch", "notes", "--merge", "{}", "--json-patch", "[]"),
        ("diff", "notes"),
        ("rollback", "notes"),
        ("frobnicate", "notes"),
    ],
    ids=lambda args: " ".join(args),
)
def test_a_wrong_command_line_exits_2(cli: Cli, args: tuple[str, ...]) -> None:
    result = cli(*args)
    assert (result.returncode, result.stdout) == (2, "")
    assert "usage: groundhog-mcp state" in result.stderr
