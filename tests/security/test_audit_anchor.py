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


async def heads(backend: Backend, capsys: pytest.CaptureFixture[str], *args: str) -> list[dict[str, Any]]:
    code, out, _ = await cli(capsys, "--database", backend.database, "audit", "head", *args)
    assert code == 0
    return [json.loads(line) for line in out.splitlines()]


async def head(backend: Backend, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    (only,) = await heads(backend, capsys, "--namespace", "default")
    return only


async def cut_last_write(backend: Backend) -> None:
    """What someone with write access to a copy does: the last audit row and its write go together,
    so the log still ends at the namespace's last change (and on PostgreSQL the chain's recorded
    head is moved back with them)."""
    await drop_triggers(backend)
    await backend.sql("DELETE FROM audit_log WHERE sequence = 6")
    await backend.sql("DELETE FROM changes WHERE sequence = (SELECT max(sequence) FROM changes)")
    await backend.sql("DELETE FROM history WHERE revision = 6")
    await backend.sql("UPDATE contexts SET revision = 5")
    if backend.kind == "sqlite":
        await backend.sql("UPDATE sqlite_sequence SET seq = seq - 1 WHERE name = 'changes'")
    else:
        await backend.sql("SELECT setval('change_sequence', (SELECT max(sequence) FROM changes))")
        await backend.sql(
            "UPDATE audit_heads SET position = 5, hmac = (SELECT hmac FROM audit_log WHERE sequence = 5)"
            " WHERE namespace = 'default'"
        )


async def test_head_prints_every_chain_or_one(audited: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    await seeded(audited, writes=2, namespace="team")
    rows = await audited.sql("SELECT namespace, position, hmac, key_id FROM audit_log WHERE sequence IN (6, 8)")
    (_, _, default_hmac, key_id), (_, _, team_hmac, _) = sorted(rows, key=lambda r: str(r[0]))
    assert key_id == KEY.key_id
    assert await heads(audited, capsys) == [
        {"chain": "default", "position": 6, "hmac": default_hmac, "head": f"default@6:{default_hmac}"},
        {"chain": "team", "position": 2, "hmac": team_hmac, "head": f"team@2:{team_hmac}"},
    ]
    assert await heads(audited, capsys, "--namespace", "team") == [
        {"chain": "team", "position": 2, "hmac": team_hmac, "head": f"team@2:{team_hmac}"}
    ]
    assert await heads(audited, capsys, "--namespace", "nobody") == [
        {"chain": "nobody", "position": 0, "hmac": "", "head": "nobody@0:"}
    ]


async def test_a_tail_cut_with_its_writes_passes_verify_but_not_verify_head(
    audited: Backend, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    anchor = await head(audited, capsys)
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", anchor["head"])
    assert code == 0 and out.splitlines()[-1].endswith("reaches the anchored head 6")
    await cut_last_write(audited)
    # The chain alone is consistent: this is the gap the anchor closes.
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify")
    assert code == 0 and out.startswith("audit log OK: 5 row(s) verified")
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", anchor["head"])
    assert (code, out.strip()) == (
        1,
        "audit log FAILED in chain 'default' at row 6 (missing tail): the log ends at row 5, but the anchored head "
        "is row 6: row 6 is gone (cut from the end of the log, with or without the writes they recorded); 5 row(s) "
        "before it verified",
    )
    # The same from a file holding `audit head`'s output (every chain's head, one a line).
    saved = tmp_path / "head.json"
    saved.write_text(json.dumps(anchor) + "\n" + json.dumps({"head": "other@0:"}) + "\n")
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
    assert out.startswith(
        "audit log FAILED in chain 'default' at row 6, log sequence 6 (anchor mismatch): row 6 verifies but is not "
        "the anchored head"
    )


async def test_a_chain_cut_whole_is_named_by_its_anchor(audited: Backend, capsys: pytest.CaptureFixture[str]) -> None:
    await seeded(audited, writes=3, namespace="team")
    anchors = [line["head"] for line in await heads(audited, capsys)]
    await drop_triggers(audited)
    await audited.sql("DELETE FROM audit_log WHERE namespace = 'team'")
    await audited.sql("DELETE FROM changes WHERE namespace = 'team'")
    if audited.kind == "postgres":
        await audited.sql("DELETE FROM audit_heads WHERE namespace = 'team'")
    args = [a for anchor in anchors for a in ("--head", anchor)]
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify", *args)
    assert (code, out.strip()) == (
        1,
        "audit log FAILED in chain 'team' at row 1 (missing tail): the log ends at row 0, but the anchored head is "
        "row 3: rows 1-3 are gone (cut from the end of the log, with or without the writes they recorded); 0 row(s) "
        "before it verified",
    )


async def test_postgres_notices_a_cut_tail_by_its_recorded_head(
    audited: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """On PostgreSQL the chain's head row is written with every row: rows cut with their writes
    but not from it are noticed without an anchor (SQLite takes its heads from the rows)."""
    if audited.kind != "postgres":
        pytest.skip("SQLite records no head apart from the rows")
    await drop_triggers(audited)
    await audited.sql("DELETE FROM audit_log WHERE sequence = 6")
    await audited.sql("DELETE FROM changes WHERE sequence = (SELECT max(sequence) FROM changes)")
    code, out, _ = await cli(capsys, "--database", audited.database, "audit", "verify")
    assert (code, out.strip()) == (
        1,
        "audit log FAILED in chain 'default' at row 6 (missing tail): the log ends at row 5, but the head the store "
        "recorded is row 6: row 6 is gone (cut from the end of the log, with or without the writes they recorded); "
        "5 row(s) before it verified",
    )


@pytest.mark.parametrize(
    "value", ["6", "6:xyz", "abc", f"0:{'a' * 64}", f"7:{'A' * 64}", f"a:b@7:{'a' * 64}", f"x@7:{'a' * 63}"]
)
async def test_a_malformed_head_is_refused(audited: Backend, capsys: pytest.CaptureFixture[str], value: str) -> None:
    code, out, err = await cli(capsys, "--database", audited.database, "audit", "verify", "--head", value)
    assert (code, out) == (1, "")
    assert err.startswith("groundhog-mcp: head: ") and "Traceback" not in err
