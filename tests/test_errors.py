"""Every error class has a stable code and retryable, and the documented table says the same
(docs/errors.md and the tree in errors.py's docstring are parsed, so neither can drift)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import groundhog_mcp.errors as errors_module
from groundhog_mcp.errors import (
    ConflictError,
    ContextError,
    LeasedError,
    MigrationError,
    StateValidationError,
    ValidationIssue,
)
from groundhog_mcp.server.arguments import INVALID_ARGUMENT
from groundhog_mcp.server.error_results import INTERNAL

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors_module, inspect.isclass)
    if issubclass(cls, ContextError) and cls.__module__ == errors_module.__name__
]


def _documented() -> dict[str, tuple[bool, set[str]]]:
    """code -> (retryable, classes named in "raised as") from the table under "## The codes"."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("## The codes", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[bool, set[str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or not cells[0].startswith("`"):
            continue
        code = cells[0].strip("`")
        assert code not in rows, f"{code} documented twice"
        assert cells[1] in ("yes", "no"), line
        rows[code] = (cells[1] == "yes", set(re.findall(r"`(\w+)`", cells[2])))
    return rows


def test_every_error_class_has_a_documented_code_and_retryable() -> None:
    documented = _documented()
    assert len(CLASSES) == 18
    for cls in CLASSES:
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", cls.code), cls
        assert cls.code in documented, f"{cls.__name__}: code {cls.code!r} is not in docs/errors.md"
        retryable, raised_as = documented[cls.code]
        assert cls.__name__ in raised_as, f"{cls.__name__} is not listed for {cls.code!r}"
        assert cls.retryable is retryable, cls
    # One code per class: a client can tell every class apart by code alone.
    by_code = {cls.code for cls in CLASSES}
    assert len(by_code) == len(CLASSES)
    # Every documented code comes from a class, or (internal) from the server itself.
    assert set(documented) == by_code | {INTERNAL}
    assert StateValidationError.code == INVALID_ARGUMENT  # the argument errors' text prefix is the code
    # Every class a row names has that code, or refines to it (see test_instances_refine_their_code).
    for code, (_, raised_as) in documented.items():
        for name in raised_as:
            cls = getattr(errors_module, name)
            assert cls.code == code or (name, code) in {("StateValidationError", "too_large")}, (name, code)


def test_the_tree_in_the_docstring_shows_each_class_with_its_code() -> None:
    doc = errors_module.__doc__ or ""
    drawn = dict(re.findall(r"(?:├──|└──|^)\s*(\w+Error)\s+(\w+)", doc, re.M))
    assert drawn == {cls.__name__: cls.code for cls in CLASSES}
    retryable = set(re.findall(r"(\w+Error)\s+\w+\s+\(r\)", doc))
    assert retryable == {cls.__name__ for cls in CLASSES if cls.retryable}


def test_instances_refine_their_code_where_the_table_says_so() -> None:
    over = StateValidationError([ValidationIssue("", "serialised size 2000 bytes exceeds limit 1024 bytes", True)])
    assert (over.code, over.retryable) == ("too_large", False)
    assert StateValidationError([ValidationIssue("/data/x", "must be an integer")]).code == "invalid_argument"
    assert MigrationError("c", ("1", "2"), "too big", too_large=True).code == "too_large"
    assert MigrationError("c", ("1", "2"), "ValueError").code == "migration_failed"
    assert ConflictError("c", 1, 2).retryable is True
    taken = ConflictError.already_exists("c", 2)
    assert (taken.code, taken.retryable, taken.current_revision) == ("conflict", False, 2)
    assert ConflictError.retryable is True  # the instance override did not leak into the class
    stale = LeasedError("lease_token: 3 is not a live lease", holder=None, expires_at=None, stale=True)
    assert (stale.code, stale.retryable, LeasedError.retryable) == ("leased", False, True)
