"""The bearer token file: hashes only on disk, revocation, atomic rewrites, fail-closed reads."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from groundhog_mcp.errors import InitializationError, NotFoundError, StateValidationError
from groundhog_mcp.models import ALL_RIGHTS, Grant
from groundhog_mcp.security.tokens import TOKEN_PREFIX, TokenStore, hash_token


@pytest.fixture
def store(tmp_path: Path) -> TokenStore:
    return TokenStore(tmp_path / "config" / "tokens.json")


def test_create_returns_the_token_once_and_stores_only_its_hash(store: TokenStore) -> None:
    record, token = store.create("alice", "team-a")
    assert token.startswith(TOKEN_PREFIX) and len(token) > 40
    text = store.path.read_text(encoding="utf-8")
    assert token not in text
    assert token[len(TOKEN_PREFIX) :] not in text
    entry = json.loads(text)["tokens"][0]
    assert entry == {
        "id": record.id,
        "principal": "alice",
        "namespace": "team-a",
        "created_at": entry["created_at"],
        "revoked": False,
        "revoked_at": None,
        "sha256": hash_token(token),
        "grants": ["admin:"],
    }
    assert store.verify(token) == record


def test_grants_are_stored_and_read_back(store: TokenStore) -> None:
    grants = (Grant.parse("read:notes."), Grant.parse("write:notes.mine"))
    record, token = store.create("reader", "team-a", grants)
    entry = json.loads(store.path.read_text(encoding="utf-8"))["tokens"][0]
    assert entry["grants"] == ["read:notes.", "write:notes.mine"]
    verified = store.verify(token)
    assert verified is not None and verified.grants == grants and verified.effective_grants == grants
    assert record.grants == grants
    with pytest.raises(StateValidationError, match="at least one grant"):
        store.create("nobody", "team-a", ())


def test_a_record_without_grants_has_every_right_in_its_namespace(store: TokenStore) -> None:
    """Token files written before grants existed keep working, with the rights they always had."""
    _, token = store.create("alice", "team-a")
    document = json.loads(store.path.read_text(encoding="utf-8"))
    del document["tokens"][0]["grants"]
    store.path.write_text(json.dumps(document), encoding="utf-8")
    record = store.verify(token)
    assert record is not None and record.grants is None
    assert record.effective_grants == ALL_RIGHTS == (Grant(prefix="", right="admin"),)
    assert "grants" not in record.to_json()  # rewritten as it was read


def test_a_malformed_grant_in_the_file_fails_closed(store: TokenStore) -> None:
    _, token = store.create("alice", "team-a")
    document = json.loads(store.path.read_text(encoding="utf-8"))
    document["tokens"][0]["grants"] = ["delete:everything"]
    store.path.write_text(json.dumps(document), encoding="utf-8")
    with pytest.raises(InitializationError, match="the right must be one of read, write, admin"):
        store.verify(token)
    assert store.verify(token) is None


def test_grant_syntax() -> None:
    assert Grant.parse("read:notes.") == Grant("notes.", "read")
    assert Grant.parse("write:") == Grant.parse("write") == Grant("", "write")
    assert str(Grant.parse("admin")) == "admin:"
    for bad, message in (
        ("read:notes/", "names cannot contain '/'"),
        ("owner:x", "the right must be one of"),
        ("read:" + "x" * 129, "at most 128"),
    ):
        with pytest.raises(ValueError, match=message):
            Grant.parse(bad)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
def test_file_and_directory_are_private(store: TokenStore) -> None:
    store.create("alice")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert store.permission_problem() is None
    store.path.chmod(0o644)
    problem = store.permission_problem()
    assert problem is not None and "chmod 600" in problem


def test_verify_rejects_unknown_empty_and_oversized_tokens(store: TokenStore) -> None:
    _, token = store.create("alice")
    assert store.verify(token + "x") is None
    assert store.verify("") is None
    assert store.verify("x" * 10_000) is None
    assert store.verify(token.upper()) is None


def test_each_token_is_its_own_principal_and_namespace(store: TokenStore) -> None:
    a, token_a = store.create("alice", "A")
    b, token_b = store.create("bob", "B")
    assert a.id != b.id and token_a != token_b
    assert store.verify(token_a) == a
    assert store.verify(token_b) == b
    assert [r.id for r in store.list()] == [a.id, b.id]


def test_revoke_stops_the_token_and_keeps_the_record(store: TokenStore) -> None:
    record, token = store.create("alice")
    _, other = store.create("bob")
    assert store.verify(token) is not None  # cached before the revocation
    revoked = store.revoke(record.id)
    assert revoked.revoked and revoked.revoked_at is not None
    assert store.verify(token) is None  # the rewritten file is noticed without a restart
    assert store.verify(other) is not None
    assert [r.revoked for r in store.list()] == [True, False]
    assert store.revoke(record.id) == revoked  # idempotent


def test_revoking_an_unknown_id_names_it(store: TokenStore) -> None:
    store.create("alice")
    with pytest.raises(NotFoundError, match="tok-nope"):
        store.revoke("tok-nope")


def test_a_second_store_object_sees_revocations(store: TokenStore) -> None:
    """The server's store and the CLI's are different objects (different processes)."""
    server_side = TokenStore(store.path)
    record, token = store.create("alice")
    assert server_side.verify(token) == record
    TokenStore(store.path).revoke(record.id)
    assert server_side.verify(token) is None


@pytest.mark.parametrize(
    ("principal", "namespace", "field"),
    [("", "default", "principal"), ("a\nb", "default", "principal"), ("alice", "no spaces", "namespace")],
)
def test_bad_principal_or_namespace_is_refused(store: TokenStore, principal: str, namespace: str, field: str) -> None:
    with pytest.raises(StateValidationError, match=f"^{field}: "):
        store.create(principal, namespace)
    assert not store.path.exists()


def test_rewrites_are_atomic_and_leave_no_temporary_files(store: TokenStore, monkeypatch: pytest.MonkeyPatch) -> None:
    store.create("alice")
    before = store.path.read_bytes()
    inode = store.path.stat().st_ino

    def crash(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.create("bob")
    monkeypatch.undo()
    assert store.path.read_bytes() == before  # the old file, untouched
    assert sorted(p.name for p in store.path.parent.iterdir()) == ["tokens.json", "tokens.json.lock"]
    store.create("carol")
    assert store.path.stat().st_ino != inode  # replaced, not rewritten in place
    assert [r.principal for r in store.list()] == ["alice", "carol"]


def test_concurrent_creates_lose_nothing(store: TokenStore) -> None:
    tokens: list[str] = []

    def create(n: int) -> None:
        _, token = TokenStore(store.path).create(f"p{n}")
        tokens.append(token)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(store.list()) == 8
    assert all(store.verify(token) is not None for token in tokens)


def test_a_broken_file_fails_closed(store: TokenStore) -> None:
    record, token = store.create("alice")
    assert store.verify(token) == record
    store.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(InitializationError, match="not valid JSON"):
        store.verify(token)
    assert store.verify(token) is None  # still refused, without raising again
    with pytest.raises(InitializationError, match="not valid JSON"):
        store.list()


def test_a_deleted_file_verifies_nothing(store: TokenStore) -> None:
    _, token = store.create("alice")
    store.path.unlink()
    assert store.verify(token) is None
    assert store.list() == []


def test_malformed_entries_are_explained(store: TokenStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text(json.dumps({"version": 1, "tokens": [{"id": "x"}]}), encoding="utf-8")
    with pytest.raises(InitializationError, match="no 'principal'"):
        store.list()
    store.path.write_text(json.dumps({"tokens": {}}), encoding="utf-8")
    with pytest.raises(InitializationError, match="expected an object"):
        store.list()
