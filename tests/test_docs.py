"""The documentation cannot drift: docs/reference/*.md are what ``tools/gen_docs.py`` writes
from the code today. (The examples of every page run in tests/test_docs_examples.py.)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


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
