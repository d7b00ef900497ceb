"""``audit head`` anchors the chain; ``audit verify --head`` then notices a tail cut together with
the writes it recorded, which the chain alone cannot show (docs/security.md "Audit log"). Both backends."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from groundhog_mcp.cli import main
from tests.conformance.conftest import Backend, MakeBackend
from tests.security.test_audit import KEY, KEY_TEXT, drop_triggers, seeded

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["sqlite", "postgres"])
async def audited(
    request: pytest.FixtureRequest, make_backend: MakeBackend, monkeypatch: pytest.MonkeyPatch
) -> Backend:
    monkeypatch.setenv("GROUNDHOG_AUDIT_KEY", KEY_TEXT)
    backend = await make_backend(request.param)
    await seeded(backend)  # 6 writes, 6 audit rows
    return backend


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def head(backend: Backend, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, _ = await cli(capsys, "--database", backend.database, "audit", "head")
    assert code == 0
    return json.loads(out)


async def cut_last_write(backend: Backend) -> None:
    """What someone with write access to a copy does: the last audit row and its write go together,
    so the log still ends at the store's last change."""
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE sequence = 6")
    await backend.sql("DELETE FROM changes WHERE sequence = (SELECT max(sequence) FROM changes)")
    await backend.sql("DELETE FROM history WHERE revision = 6")
    await backend.sql("UPDATE contexts SET revision = 5")
    if backend.kind == "sqlite":
        await backend.sql("UPDATE sqlite_sequence SET seq = seq - 1 WHERE name = 'changes'")
    else:
        await backend.sql("SELECT setval('change_sequence', (SELECT max(sequence) FROM changes))")


async def test_head_prints_the_last_row(audited: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    rows = await audited.sql("SELECT sequence, hmac, key_id FROM audit_log ORDER BY sequence DESC LIMIT 1")
    shown = await head(audited, capsys)
    assert (shown["sequence"], shown["hmac"], shown["head"]) == (6, rows[0][1], f"6:{rows[0][1]}")
    assert rows[0][2] == KEY.key_id


async def test_a_tail_cut_with_its_writes_passes_verify_but_not_verify_head(
    audited: Backend, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    anchor = await head(audited, capsys)
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", anchor["head"])
    assert code == 0 and out.strip().endswith("reaches the anchored head 6")
    await cut_last_write(audited)
    # The chain alone is consistent: this is the gap the anchor closes.
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify")
    assert code == 0 and out.startswith("audit log OK: 5 row(s) verified")
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", anchor["head"])
    assert (code, out.strip()) == (
        1,
        "audit log FAILED at row 6 (missing tail): the log ends at row 5, but the anchored head is row 6: row 6 is "
        "gone (cut from the end of the log, with or without the writes they recorded); 5 row(s) before it verified",
    )
    # The same from a file holding `audit head`'s output.
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(anchor))
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", str(saved))
    assert code == 1 and "(missing tail)" in out


async def test_a_head_from_another_chain_is_named(
    audited: Backend, make_backend: MakeBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    other = await make_backend(audited.kind)
    await seeded(other)  # the same key, another history: row 6 verifies but is another row
    anchor = await head(other, capsys)
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", anchor["head"])
    assert code == 1
    assert out.startswith("audit log FAILED at row 6 (anchor mismatch): row 6 verifies but is not the anchored head")


@pytest.mark.parametrize("value", ["6", "6:xyz", "abc", f"0:{'a' * 64}", f"7:{'A' * 64}"])
async def test_a_malformed_head_is_refused(audited: Backend, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, out, err = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", value)
    assert (code, out) == (1, "")
    assert err.startswith("groundhog-mcp: head: ") and "Traceback" not in err
