"""The worked example of docs/branches.md runs as printed (its asserts are the checks)."""

from __future__ import annotations

import re
from pathlib import Path

PAGE = Path(__file__).resolve().parent.parent / "docs" / "branches.md"


def test_branches_worked_example_runs() -> None:
    blocks = re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL | re.MULTILINE)
    assert len(blocks) == 1
    exec(compile(blocks[0], f"{PAGE}:worked example", "exec"), {"__name__": "docs_example"})
