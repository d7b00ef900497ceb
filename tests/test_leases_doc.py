"""The worked example of docs/leases.md runs as printed (two agents share a task list)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parent.parent / "docs" / "leases.md"


def test_the_worked_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.DOTALL)
    assert len(blocks) == 1
    exec(compile(blocks[0], str(PAGE), "exec"), {"__name__": "__main__"})
    out = capsys.readouterr().out
    assert re.fullmatch(r"agent-a did \d, agent-b did \d; 12 writes, no retry\n", out), out
