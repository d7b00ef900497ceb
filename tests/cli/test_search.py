"""``groundhog-mcp contexts find``: the search from a shell, JSON on stdout, on both backends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.cli.test_state import ALICE, database  # noqa: F401  (the fixture: SQLite and PostgreSQL)
from tests.cli_in_process import run_cli


def find(database: str, home: Path, *args: str, code: int = 0) -> Any:  # noqa: F811
    result = run_cli("--database", database, "contexts", "find", *args, env=ALICE, home=home, check=False)
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout) if code == 0 else result.stderr


def test_contexts_find_filters_sorts_projects_and_follows_cursors(database: str, tmp_path: Path) -> None:  # noqa: F811
    home = tmp_path / "home"
    for name, data in {
        "a": '{"status": "open", "n": 3, "title": "buy milk"}',
        "b": '{"status": "done", "n": 5}',
        "c": '{"status": "open", "n": 1}',
    }.items():
        run_cli("--database", database, "state", "set", name, data, "--expected-revision", "0", env=ALICE, home=home)
    found = find(
        database, home, "--where", "/data/status", "eq", "open", "--where", "/data/n", "ge", "2", "--field", "/data/n"
    )
    assert [(c["name"], c["fields"]) for c in found["contexts"]] == [("a", {"data": {"n": 3}})]
    assert find(database, home, "--text", "milk")["contexts"][0]["name"] == "a"
    every = find(database, home, "--sort", "/data/n", "--order", "desc", "--limit", "1", "--all")
    assert [c["name"] for c in every["contexts"]] == ["b", "a", "c"] and every["next_cursor"] is None
    one = find(database, home, "--sort", "/data/n", "--limit", "1")
    assert [c["name"] for c in one["contexts"]] == ["c"]
    rest = find(database, home, "--sort", "/data/n", "--limit", "2", "--cursor", one["next_cursor"])
    assert [c["name"] for c in rest["contexts"]] == ["a", "b"]
    assert find(database, home, "--where", "/data/status", "in", '["done", "gone"]')["contexts"][0]["name"] == "b"


def test_contexts_find_errors_exit_1_naming_the_field(database: str, tmp_path: Path) -> None:  # noqa: F811
    home = tmp_path / "home"
    assert "where[0].op: must be one of eq" in find(database, home, "--where", "/data/x", "like", "1", code=1)
    assert "--where: takes PATH OP [VALUE]" in find(database, home, "--where", "/data/x", code=1)
    assert "expected an RFC 3339 time" in find(database, home, "--updated-after", "yesterday", code=2)
