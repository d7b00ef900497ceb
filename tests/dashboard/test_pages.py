"""The dashboard's pages on SQLite and PostgreSQL: what a person sees, what a token may see,
and that state content is only ever shown as escaped text."""

from __future__ import annotations

import re

from groundhog_mcp.dashboard import CONTENT_SECURITY_POLICY
from groundhog_mcp.models import ContextState, Grant, Principal
from tests.conformance.conftest import Backend
from tests.dashboard.conftest import Site
from tests.security.test_audit import drop_triggers

ADMIN = Principal(name="alice", namespace="team")
READER = Principal(name="rita", namespace="team", grants=(Grant.parse("read:notes."),))
OUTSIDER = Principal(name="mallory", namespace="other")
SCRIPT = "<script>document.title='owned'</script>"


async def seed(site: Site) -> None:
    team = site.manager.with_principal(ADMIN)
    await team.register("notes.plan", state=ContextState(data={"steps": ["draft"], "owner": "alice", "html": SCRIPT}))
    await team.update("notes.plan", merge_patch_={"steps": ["draft", "review"]})
    await team.update("notes.plan", merge_patch_={"owner": "bob"})
    await team.register("secrets.keys", state=ContextState(data={"k": "hidden-value"}))
    other = site.manager.with_principal(OUTSIDER)
    await other.register("notes.other", state=ContextState(data={"x": "foreign-value"}))
    site.tokens.update({"t-admin": ADMIN, "t-reader": READER, "t-outsider": OUTSIDER})


def cells(html: str, table_id: str) -> list[list[str]]:
    body = re.search(rf'<table id="{table_id}"[^>]*>.*?<tbody>(.*?)</tbody>', html, re.S)
    assert body is not None, f"no table {table_id}"
    return [
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body.group(1), re.S)
    ]


async def test_list_context_timeline_diff_audit(site: Site, backend: Backend) -> None:
    await seed(site)
    async with site.signed_in("t-admin") as browser:
        listing = await browser.get("/")
        assert listing.status_code == 200
        rows = cells(listing.text, "contexts")
        assert [r[0] for r in rows] == ["notes.plan", "secrets.keys"]
        assert rows[0][1] == "3" and rows[0][4] == "alice" and rows[0][5] == "update"
        assert cells((await browser.get("/?prefix=secrets")).text, "contexts")[0][0] == "secrets.keys"

        context = await browser.get("/c/notes.plan")
        assert context.status_code == 200
        assert "<dt>revision</dt><dd>3</dd>" in context.text
        assert '<span class="key">owner</span>: <code class="v-string">&quot;bob&quot;</code>' in context.text
        steps = await browser.get("/c/notes.plan/node?path=/steps")
        assert steps.text.count("<li>") == 2 and "&quot;review&quot;" in steps.text

        past = await browser.get("/c/notes.plan?revision=1")
        assert "The state as of revision 1" in past.text and "&quot;alice&quot;" in past.text
        assert "&quot;review&quot;" not in (await browser.get("/c/notes.plan/node?path=/steps&revision=1")).text

        timeline = cells((await browser.get("/c/notes.plan/timeline")).text, "timeline")
        assert [(r[2], r[3], r[4]) for r in timeline] == [
            ("3", "update", "alice"),
            ("2", "update", "alice"),
            ("1", "register", "alice"),
        ]

        diff = await browser.get("/c/notes.plan/diff?from=1&to=3")
        lines = cells(diff.text, "diff")
        assert ["add", "/data/steps/1", "(absent)", "&quot;review&quot;"] in lines
        assert ["replace", "/data/owner", "&quot;alice&quot;", "&quot;bob&quot;"] in lines
        assert "&quot;op&quot;: &quot;replace&quot;" in diff.text  # the RFC 6902 view

        audit = await browser.get("/audit")
        # The namespace's own chain: its 4 rows, not the outsider's row (5 before chains per namespace).
        assert 'class="ok">Audit log intact: 4 row(s) verified.' in audit.text
        operations = [(r[2], r[3], r[5]) for r in cells(audit.text, "audit")]
        assert operations[0] == ("alice", "register", "secrets.keys")
        assert ("alice", "register", "notes.plan") in operations
        assert all(r[2] != "mallory" for r in cells(audit.text, "audit"))  # another namespace's rows


async def test_state_content_is_escaped_and_every_response_has_the_csp(site: Site) -> None:
    await seed(site)
    async with site.signed_in("t-admin") as browser:
        for path in [
            "/",
            "/c/notes.plan",
            "/c/notes.plan/node?path=",
            "/c/notes.plan/diff?from=1",
            "/events",
            "/metrics",
        ]:
            answer = await browser.get(path)
            assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
            assert answer.headers["x-content-type-options"] == "nosniff"
            assert "<script>document" not in answer.text
        node = await browser.get("/c/notes.plan/node?path=")
        assert "&lt;script&gt;document.title=&#x27;owned&#x27;&lt;/script&gt;" in node.text
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY and "script-src 'self'" in CONTENT_SECURITY_POLICY
        refused = await browser.post("/c/notes.plan", content=b"x")
        assert refused.status_code == 405


async def test_a_read_only_token_sees_only_its_prefix(site: Site) -> None:
    await seed(site)
    async with site.signed_in("t-reader") as browser:
        assert [r[0] for r in cells((await browser.get("/")).text, "contexts")] == ["notes.plan"]
        missing = await browser.get("/c/no.such")
        hidden = await browser.get("/c/secrets.keys")
        assert hidden.status_code == missing.status_code == 404
        assert hidden.text.replace("secrets.keys", "X") == missing.text.replace("no.such", "X")
        for path in ["/c/secrets.keys/node?path=", "/c/secrets.keys/timeline", "/c/secrets.keys/diff?from=1"]:
            answer = await browser.get(path)
            assert answer.status_code == 404 and "hidden-value" not in answer.text
        audit = await browser.get("/audit")
        assert "needs the admin grant" in audit.text and 'id="audit"' not in audit.text
        for path in ["/events", "/metrics"]:
            assert "secrets.keys" not in (await browser.get(path)).text


async def test_another_namespace_never_appears(site: Site) -> None:
    await seed(site)
    async with site.signed_in("t-outsider") as browser:
        assert [r[0] for r in cells((await browser.get("/")).text, "contexts")] == ["notes.other"]
        for path in ["/c/notes.plan", "/c/notes.plan/node?path=", "/c/notes.plan/timeline", "/c/notes.plan/diff"]:
            assert (await browser.get(path)).status_code == 404
        for path in ["/events", "/metrics", "/audit"]:
            text = (await browser.get(path)).text
            assert "notes.plan" not in text and "alice" not in text and "secrets.keys" not in text


async def test_sign_in_cookie_and_revocation(site: Site) -> None:
    await seed(site)
    async with site.client() as browser:
        assert (await browser.get("/")).headers["location"] == "/login"
        refused = await browser.post("/login", data={"token": "t-wrong"})
        assert refused.status_code == 401 and "not valid" in refused.text
        accepted = await browser.post("/login", data={"token": "t-admin"})
        cookie = accepted.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
        assert "t-admin" not in cookie
        assert (await browser.get("/")).status_code == 200
        del site.tokens["t-admin"]  # revoked: the session ends at its next request
        assert (await browser.get("/")).headers["location"] == "/login"


async def test_secure_cookie_off_loopback_and_host_origin_checks(site: Site) -> None:
    await seed(site)
    site.config.secure_cookies = True
    site.config.hosts = ["127.0.0.1:8766"]
    site.config.origins = ["http://127.0.0.1:8766"]
    async with site.client(host="127.0.0.1:8766") as browser:
        answer = await browser.post("/login", data={"token": "t-admin"})
        assert "Secure" in answer.headers["set-cookie"]
        bad_origin = await browser.get("/", headers={"origin": "http://evil.example"})
        assert bad_origin.status_code == 403
    async with site.client(host="evil.example") as rebound:
        answer = await rebound.get("/")
        assert answer.status_code == 421 and answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY


async def test_large_state_is_read_a_node_at_a_time(site: Site) -> None:
    site.tokens["t-admin"] = ADMIN
    team = site.manager.with_principal(ADMIN)
    await team.register("big", state=ContextState(data={"items": [{"n": i, "pad": "x" * 100} for i in range(1000)]}))
    async with site.signed_in("t-admin") as browser:
        page = await browser.get("/c/big")
        assert "array · 1000 items" in page.text and "pad" not in page.text and len(page.text) < 10_000
        first = await browser.get("/c/big/node?path=/items")
        assert first.text.count("<li><details") == 200 and "800 more" in first.text
        rest = await browser.get("/c/big/node?path=/items&offset=200")
        assert '<span class="key">200</span>' in rest.text and "600 more" in rest.text
        bad = await browser.get("/c/big/node?path=/nope")
        assert bad.status_code == 404 and "does not exist" in bad.text


async def test_a_tampered_audit_log_names_and_highlights_the_first_broken_row(site: Site, backend: Backend) -> None:
    await seed(site)
    await drop_triggers(backend)
    await backend.sql("UPDATE audit_log SET principal = 'mallory' WHERE sequence = 2")
    async with site.signed_in("t-admin") as browser:
        audit = await browser.get("/audit")
        assert 'id="verify" class="failed">Audit log FAILED at row 2 (altered)' in audit.text
        assert "1 row(s) before it verified" in audit.text
        broken = re.findall(r'<tr class="broken"><td>(\d+)</td>', audit.text)
        assert broken == ["2"]
