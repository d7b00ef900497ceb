"""The dashboard's pages, rendered from values the state manager returned: no I/O here.

Every value from the store reaches the page through :mod:`~groundhog_mcp.dashboard.markup`,
which escapes it; state content is shown as escaped text only, never as markup.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from groundhog_mcp.dashboard.charts import bar_chart, line_chart
from groundhog_mcp.dashboard.markup import Html, attrs_query, join, markup, url_part
from groundhog_mcp.models import Change, HistoryEntry, JSONObject, Parent, Principal, format_timestamp, utcnow
from groundhog_mcp.security.audit import ChainProblem
from groundhog_mcp.service.metrics import ContextMetrics
from groundhog_mcp.service.types import AuditRecord, DeadLetter, Lease, StoredContext

__all__ = [
    "Chrome",
    "ContextAbout",
    "DiffLine",
    "TreeChild",
    "audit_page",
    "context_page",
    "contexts_page",
    "diff_page",
    "error_page",
    "events_page",
    "login_page",
    "metrics_page",
    "page",
    "pretty",
    "timeline_page",
    "tree_fragment",
]

MAX_SHOWN_CHARS = 2000  # of one value in a table cell or tree leaf
MAX_BLOCK_CHARS = 64 * 1024  # of a JSON block (metadata, schema, a patch)
MAX_MERGES_SHOWN = 10  # the latest merges a context page lists


@dataclass(frozen=True)
class Chrome:
    """What every page shows around its content, and what its live updates follow."""

    base: str  # the dashboard's path prefix: "" or "/ui"
    principal: Principal
    sequence: int  # the change-feed position the page was rendered at
    watch: str = ""  # "*": any change refreshes the page; a context name: its changes; "": none
    signed_in: bool = False  # a session cookie (a logout button) rather than the server's own principal


def when(moment: datetime | None) -> str:
    return "" if moment is None else format_timestamp(moment)[:23] + "Z"


def size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    return f"{count / 1024:.1f} KiB" if count < 1024 * 1024 else f"{count / 1024 / 1024:.1f} MiB"


def pretty(value: Any, limit: int = MAX_BLOCK_CHARS) -> str:
    """Indented JSON, cut at ``limit`` characters (the cut is said)."""
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)
    return text if len(text) <= limit else text[:limit] + f"\n… ({len(text) - limit} more characters not shown)"


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= MAX_SHOWN_CHARS else text[:MAX_SHOWN_CHARS] + "…"


def page(chrome: Chrome, title: str, body: Html) -> Html:
    base = chrome.base
    logout = (
        markup(
            '<form method="post" action="{b}/logout" class="logout"><button type="submit">Sign out</button></form>',
            b=base,
        )
        if chrome.signed_in
        else Html("")
    )
    nav = join(
        markup('<a href="{b}{path}">{label}</a>', b=base, path=path, label=label)
        for path, label in (("/", "Contexts"), ("/events", "Events"), ("/audit", "Audit"), ("/metrics", "Metrics"))
    )
    return markup(
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} · groundhog</title>"
        '<link rel="stylesheet" href="{b}/static/dashboard.css">'
        '<script src="{b}/static/dashboard.js" defer></script></head>'
        '<body data-base="{b}" data-sequence="{seq}" data-watch="{watch}">'
        '<header><a class="brand" href="{b}/">groundhog</a><nav>{nav}</nav>'
        '<span class="who">{who} @ {ns}</span>{logout}</header>'
        "<main><h1>{title}</h1>{body}</main>"
        '<footer><span id="live" class="live">live updates: connecting…</span></footer></body></html>',
        title=title,
        b=base,
        seq=chrome.sequence,
        watch=chrome.watch,
        nav=nav,
        who=chrome.principal.name,
        ns=chrome.principal.namespace,
        logout=logout,
        body=body,
    )


def login_page(base: str, problem: str | None = None) -> Html:
    shown = markup('<p class="error">{}</p>', problem) if problem else Html("")
    return markup(
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · groundhog</title>'
        '<link rel="stylesheet" href="{b}/static/dashboard.css"></head><body><main class="login">'
        "<h1>groundhog dashboard</h1>{shown}"
        '<form method="post" action="{b}/login"><label>Bearer token '
        '<input type="password" name="token" autocomplete="off" required autofocus></label>'
        '<button type="submit">Sign in</button></form>'
        "<p>The token of <code>groundhog-mcp tokens create</code>: you see what it may read.</p>"
        "</main></body></html>",
        b=base,
        shown=shown,
    )


def error_page(chrome: Chrome, message: str) -> Html:
    return page(chrome, "Not shown", markup('<p class="error">{}</p>', message))


def _table(head: Sequence[str], rows: Sequence[Html], empty: str, *, id_: str = "", live: bool = False) -> Html:
    """A table; without rows, one row saying ``empty``."""
    shown = rows or [markup('<tr><td colspan="{}">{}</td></tr>', len(head), empty)]
    return markup(
        "<table{attrs}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>",
        attrs=markup(' id="{}"{}', id_, Html(" data-live") if live else Html("")) if id_ else Html(""),
        head=join(markup("<th>{}</th>", h) for h in head),
        rows=join(shown),
    )


def _context_link(base: str, name: str, suffix: str = "", label: str | None = None) -> Html:
    return markup('<a href="{b}/c/{n}{s}">{label}</a>', b=base, n=url_part(name), s=suffix, label=label or name)


def _parent_link(base: str, parent: Parent) -> Html:
    """``name@revision``, a link to that revision of the parent context."""
    return _context_link(base, parent.name, attrs_query(revision=parent.revision), f"{parent.name}@{parent.revision}")


def _lease_text(lease: Lease) -> str:
    return f"{lease.holder} until {when(lease.expires_at)}"


def _epoch_ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


def _until(lease: Lease | None) -> Html:
    """``data-until``: when ``lease`` runs out, and ``data-now``: the server's clock now, both in ms
    since the epoch. A lease that runs out puts nothing in the change feed; the page's script
    refreshes itself then, timed by the server's clock (the browser's may be off)."""
    if lease is None or lease.expires_at is None:
        return Html("")
    return markup(' data-until="{}" data-now="{}"', _epoch_ms(lease.expires_at), _epoch_ms(utcnow()))


# -- contexts ------------------------------------------------------------------------------


def contexts_page(
    chrome: Chrome,
    contexts: Sequence[StoredContext],
    last_writes: dict[str, HistoryEntry],
    leases: dict[str, Lease],
    expiries: dict[str, datetime],
    *,
    prefix: str,
    next_cursor: str | None,
) -> Html:
    base = chrome.base
    rows = [
        markup(
            "<tr{until}><td>{link}</td><td>{rev}</td><td>{size}</td><td>{updated}</td><td>{who}</td><td>{op}</td>"
            '<td class="lease">{lease}</td><td class="expires">{expires}</td></tr>',
            until=_until(leases.get(c.name)),
            link=_context_link(base, c.name),
            rev=c.revision,
            size=size(c.state_size),
            updated=when(c.updated_at),
            who=last_writes[c.name].actor if c.name in last_writes else "",
            op=last_writes[c.name].op if c.name in last_writes else "",
            lease=_lease_text(leases[c.name]) if c.name in leases else "",
            expires=when(expiries.get(c.name)),
        )
        for c in contexts
    ]
    more = (
        markup('<p><a href="{b}/{q}">next page</a></p>', b=base, q=attrs_query(prefix=prefix, cursor=next_cursor))
        if next_cursor
        else Html("")
    )
    body = markup(
        '<form method="get" action="{b}/" class="search"><input type="search" name="prefix" value="{p}" '
        'placeholder="name prefix" maxlength="128"><button type="submit">Search</button></form>{table}{more}',
        b=base,
        p=prefix,
        table=_table(
            ["context", "revision", "size", "last change", "last writer", "how", "leased by", "expires"],
            rows,
            "no context you may read",
            id_="contexts",
            live=True,
        ),
        more=more,
    )
    return page(chrome, "Contexts", body)


@dataclass(frozen=True)
class TreeChild:
    key: str  # the member name or the array index
    pointer: str
    kind: str  # the JSON type
    count: int  # members of an object / items of an array
    bytes: int
    preview: Any  # a scalar's value (None for containers)


def tree_fragment(
    base: str, name: str, revision: int | None, children: Sequence[TreeChild], more: int, offset: int
) -> Html:
    """The children of one node of the state tree; a container's own children load on demand."""
    items: list[Html] = []
    for child in children:
        if child.kind in ("object", "array"):
            unit = "keys" if child.kind == "object" else "items"
            src = f"{base}/c/{url_part(name)}/node" + attrs_query(path=child.pointer, revision=revision)
            items.append(
                markup(
                    '<li><details data-src="{src}"><summary><span class="key">{key}</span> '
                    '<span class="kind">{kind} · {count} {unit} · {size}</span></summary>'
                    '<div class="children"></div></details></li>',
                    src=src,
                    key=child.key,
                    kind=child.kind,
                    count=child.count,
                    unit=unit,
                    size=size(child.bytes),
                )
            )
        else:
            items.append(
                markup(
                    '<li><span class="key">{key}</span>: <code class="v-{kind}">{value}</code></li>',
                    key=child.key,
                    kind=child.kind,
                    value=_short(child.preview),
                )
            )
    if more:
        parent = children[0].pointer.rsplit("/", 1)[0] if children else ""
        src = f"{base}/c/{url_part(name)}/node" + attrs_query(path=parent, revision=revision, offset=offset)
        items.append(
            markup(
                '<li class="more"><details data-src="{src}"><summary>{more} more</summary>'
                '<div class="children"></div></details></li>',
                src=src,
                more=more,
            )
        )
    return markup('<ul class="tree">{}</ul>', join(items)) if items else Html('<p class="empty">(empty)</p>')


def _definition_list(pairs: Sequence[tuple[str, object]]) -> Html:
    return markup("<dl>{}</dl>", join(markup("<dt>{}</dt><dd>{}</dd>", k, v) for k, v in pairs))


@dataclass(frozen=True)
class ContextAbout:
    """What a context page shows beside its definition: its lease, its expiry and its lineage
    (already cut to the contexts the reader may read)."""

    lease: Lease | None = None
    expires_at: datetime | None = None
    lineage: Sequence[Parent] = ()


def _about(base: str, about: ContextAbout) -> list[tuple[str, object]]:
    facts: list[tuple[str, object]] = [
        ("lease", f"held by {_lease_text(about.lease)}" if about.lease else "free"),
        ("expires", when(about.expires_at) if about.expires_at else "never"),
    ]
    fork = next((p for p in about.lineage if p.kind == "fork"), None)
    if fork is not None:
        facts.append(("forked from", _parent_link(base, fork)))
    merges = [p for p in about.lineage if p.kind == "merge"]
    if merges:
        shown = join((_parent_link(base, p) for p in reversed(merges[-MAX_MERGES_SHOWN:])), ", ")
        earlier = len(merges) - MAX_MERGES_SHOWN
        more = markup(" (and {} earlier)", earlier) if earlier > 0 else Html("")
        facts.append(("merged in", markup("{}{}", shown, more)))
    return facts


def context_page(
    chrome: Chrome,
    context: StoredContext,
    at: int,
    state_version: str,
    format_version: str,
    root: Html,
    state_metadata: JSONObject,
    about: ContextAbout | None = None,
) -> Html:
    base = chrome.base
    past = at != context.revision
    banner = (
        markup(
            '<p class="asof">The state as of revision {at} (current: {link}).</p>',
            at=at,
            link=_context_link(base, context.name, label=f"revision {context.revision}"),
        )
        if past
        else Html("")
    )
    links = markup(
        '<p class="links">{timeline} · {events}</p>',
        timeline=_context_link(base, context.name, "/timeline", "timeline"),
        events=markup(
            '<a href="{b}/events{q}">events and dead letters</a>', b=base, q=attrs_query(context=context.name)
        ),
    )
    facts = _definition_list(
        [
            ("revision", context.revision),
            ("state size", size(context.state_size)),
            ("definition version", context.version),
            ("state format version", f"{state_version} (stored: {format_version})"),
            ("created", when(context.created_at)),
            ("last change", when(context.updated_at)),
            *_about(base, about or ContextAbout()),
            ("id", context.id),
        ]
    )
    sections = [
        ("Context metadata", context.metadata),
        ("State metadata", state_metadata),
        ("Settings", context.settings),
        ("Handlers", context.handlers),
        ("Schema", context.schema),
    ]
    blocks = join(
        markup("<details><summary>{}</summary><pre>{}</pre></details>", title, pretty(value))
        for title, value in sections
        if value
    )
    body = markup(
        '{links}<section id="facts" data-live>{facts}<span hidden{until}></span></section>{blocks}{banner}'
        '<h2>State</h2><section id="state" class="state" data-live>{root}</section>',
        links=links,
        facts=facts,
        until=_until(about.lease if about else None),
        blocks=blocks,
        banner=banner,
        root=root,
    )
    return page(chrome, context.name, body)


# -- the timeline and diffs ----------------------------------------------------------------


def timeline_page(chrome: Chrome, context: StoredContext, entries: Sequence[HistoryEntry], before: int | None) -> Html:
    base = chrome.base
    name = context.name
    rows = [
        markup(
            '<tr><td><input type="radio" name="from" value="{r}"{f}></td>'
            '<td><input type="radio" name="to" value="{r}"{t}></td>'
            "<td>{r}</td><td>{op}</td><td>{actor}</td><td>{ts}</td><td>{size}</td><td>{state} {diff}</td></tr>",
            r=e.revision,
            f=Html(" checked") if i == 1 else Html(""),
            t=Html(" checked") if i == 0 else Html(""),
            op=markup("{} ← {}", e.op, join((_parent_link(base, p) for p in e.parents), ", ")) if e.parents else e.op,
            actor=e.actor,
            ts=when(e.timestamp),
            size=size(e.size),
            state=_context_link(base, name, attrs_query(revision=e.revision), "state"),
            diff=_context_link(base, name, "/diff" + attrs_query(to=e.revision), "diff")
            if e.revision > 1
            else Html(""),
        )
        for i, e in enumerate(entries)
    ]
    older = (
        markup(
            "<p>{}</p>",
            _context_link(base, name, "/timeline" + attrs_query(before=entries[-1].revision), "older revisions"),
        )
        if entries and len(entries) >= 50 and entries[-1].revision > 1
        else Html("")
    )
    body = markup(
        '<p class="links">{ctx}</p><form method="get" action="{b}/c/{n}/diff">'
        '{table}<button type="submit">Compare the two revisions</button></form>{older}',
        ctx=_context_link(base, name, label="current state"),
        b=base,
        n=url_part(name),
        table=_table(
            ["from", "to", "revision", "how", "who", "when", "size", ""],
            rows,
            "no stored revision",
            id_="timeline" if before is None else "",
            live=before is None,
        ),
        older=older,
    )
    return page(chrome, f"{name}: timeline", body)


@dataclass(frozen=True)
class DiffLine:
    op: str
    path: str
    before: Any  # the value at ``path`` in the older revision (absent: _ABSENT)
    after: Any


ABSENT = object()


def _cell(value: Any) -> Html:
    if value is ABSENT:
        return Html('<td class="absent">(absent)</td>')
    return markup("<td><pre>{}</pre></td>", _short(value))


def diff_page(
    chrome: Chrome,
    context: StoredContext,
    from_revision: int,
    to_revision: int,
    lines: Sequence[DiffLine],
    patch: list[dict[str, Any]],
    hidden: int,
) -> Html:
    name = context.name
    rows = [
        markup(
            '<tr class="op-{op}"><td>{op}</td><td><code>{path}</code></td>{before}{after}</tr>',
            op=line.op,
            path=line.path,
            before=_cell(line.before),
            after=_cell(line.after),
        )
        for line in lines
    ]
    cut = markup('<p class="note">{} more operations not shown side by side.</p>', hidden) if hidden else Html("")
    body = markup(
        '<p class="links">{timeline} · {old} · {new}</p>'
        '<h2>Side by side</h2>{table}{cut}<h2>RFC 6902 patch</h2><pre id="patch">{patch}</pre>',
        timeline=_context_link(chrome.base, name, "/timeline", "timeline"),
        old=_context_link(chrome.base, name, attrs_query(revision=from_revision), f"revision {from_revision}"),
        new=_context_link(chrome.base, name, attrs_query(revision=to_revision), f"revision {to_revision}"),
        table=_table(
            ["op", "path", f"revision {from_revision}", f"revision {to_revision}"],
            rows,
            "no difference",
            id_="diff",
        ),
        cut=cut,
        patch=pretty(patch),
    )
    return page(chrome, f"{name}: revision {from_revision} → {to_revision}", body)


# -- events, dead letters, audit -------------------------------------------------------------


def events_page(chrome: Chrome, context: str | None, letters: Sequence[DeadLetter], changes: Sequence[Change]) -> Html:
    base = chrome.base
    letter_rows = [
        markup(
            "<tr><td>{id}</td><td>{ctx}</td><td>{type}</td><td>{attempts}</td><td>{error}</td><td>{at}</td><td>{replayed}</td></tr>",
            id=d.id,
            ctx=_context_link(base, d.name),
            type=d.type,
            attempts=d.attempts,
            error=d.last_error[:300],
            at=when(d.created_at),
            replayed=f"revision {d.replay_revision} at {when(d.replayed_at)}" if d.replayed_at else "open",
        )
        for d in letters
    ]
    change_rows = [
        markup(
            '<tr class="op-{op}"><td>{seq}</td><td>{ctx}</td><td>{rev}</td><td>{op}</td>'
            "<td>{actor}</td><td>{at}</td></tr>",
            seq=c.sequence,
            ctx=_context_link(base, c.name),
            rev=c.revision,
            op=c.op,
            actor=c.actor,
            at=when(c.timestamp),
        )
        for c in changes
    ]
    title = f"Events and dead letters of {context}" if context else "Events and dead letters"
    body = markup(
        "<h2>Dead letters</h2>{letters}<h2>Recent changes</h2>{changes}",
        letters=_table(
            ["#", "context", "event type", "attempts", "last error", "dead-lettered", "replayed"],
            letter_rows,
            "no dead letter",
            id_="dead-letters",
            live=True,
        ),
        changes=_table(
            ["sequence", "context", "revision", "how", "who", "when"],
            change_rows,
            "no recent change",
            id_="changes",
            live=True,
        ),
    )
    return page(chrome, title, body)


def audit_page(
    chrome: Chrome,
    records: Sequence[AuditRecord],
    *,
    verified: tuple[int, ChainProblem | None] | str,
    next_cursor: str | None,
    broken_cursor: str | None,
) -> Html:
    base = chrome.base
    problem = None
    if isinstance(verified, str):
        result = markup('<p id="verify" class="note">{}</p>', verified)
    else:
        rows, problem = verified
        if problem is None:
            result = markup('<p id="verify" class="ok">Audit log intact: {} row(s) verified.</p>', rows)
        else:
            jump = (
                markup(
                    ' <a href="{b}/audit{q}">show row {s}</a>',
                    b=base,
                    q=attrs_query(cursor=broken_cursor),
                    s=problem.at_sequence,
                )
                if broken_cursor
                else Html("")
            )
            result = markup(
                '<p id="verify" class="failed">Audit log FAILED at row {s} ({kind}): {message}; '
                "{rows} row(s) before it verified.{jump}</p>",
                s=problem.sequence,
                kind=problem.kind,
                message=problem.message,
                rows=rows,
                jump=jump,
            )
    broken = problem.at_sequence if problem is not None else None  # the table shows log sequences
    lines = [
        markup(
            "<tr{cls}><td>{seq}</td><td>{at}</td><td>{who}</td><td>{op}</td><td>{outcome}</td><td>{ctx}</td>"
            "<td>{rev}</td><td>{detail}</td></tr>",
            cls=Html(' class="broken"') if r.sequence == broken else Html(""),
            seq=r.sequence,
            at=when(r.timestamp),
            who=r.principal,
            op=r.operation,
            outcome=r.outcome,
            ctx=r.context or "",
            rev="" if r.revision is None else r.revision,
            detail=(r.detail or "")[:300],
        )
        for r in records
    ]
    more = (
        markup('<p><a href="{b}/audit{q}">older rows</a></p>', b=base, q=attrs_query(cursor=next_cursor))
        if next_cursor
        else Html("")
    )
    body = markup(
        "{result}{table}{more}",
        result=result,
        table=_table(
            ["row", "when", "who", "operation", "outcome", "context", "revision", "detail"],
            lines,
            "no audit row",
            id_="audit",
        ),
        more=more,
    )
    return page(chrome, "Audit log", body)


def metrics_page(
    chrome: Chrome,
    server: dict[str, Any],
    contexts: Sequence[ContextMetrics],
    writes: Sequence[int],
    bucket_seconds: int,
    sizes: tuple[str, Sequence[HistoryEntry]] | None,
) -> Html:
    facts = _definition_list(
        [
            ("contexts you may read", server.get("contexts", 0)),
            ("last change sequence", server.get("last_sequence", 0)),
            ("backend", server.get("backend", "")),
            ("database size", size(int(server.get("database_bytes") or 0))),
            ("memory (this process)", size(int(server.get("rss_bytes") or 0))),
            ("uptime (this process)", f"{float(server.get('uptime_seconds', 0)):.0f} s"),
        ]
    )
    per_second = [count / bucket_seconds for count in writes]
    charts = [
        bar_chart(
            f"writes per second, last {len(writes) * bucket_seconds // 60} minutes ({bucket_seconds} s bars)",
            per_second,
            [f"{(len(writes) - i) * bucket_seconds} s ago" for i in range(len(writes))],
        ),
        bar_chart(
            "write latency p50 (ms, this process)",
            [c.write_latency.p50_ms for c in contexts],
            [c.name for c in contexts],
        ),
        bar_chart(
            "write latency p95 (ms, this process)",
            [c.write_latency.p95_ms for c in contexts],
            [c.name for c in contexts],
        ),
    ]
    if sizes is not None:
        name, entries = sizes
        ordered = sorted(entries, key=lambda e: e.revision)
        charts.append(
            line_chart(
                f"state size of {name} by revision (bytes)",
                [(e.revision, e.size) for e in ordered],
                [f"revision {e.revision}" for e in ordered],
            )
        )
    rows = [
        markup(
            "<tr><td>{link}</td><td>{rev}</td><td>{size}</td><td>{updates}</td><td>{events}</td><td>{letters}</td>"
            "<td>{p50}</td><td>{p95}</td><td>{sizes}</td></tr>",
            link=_context_link(chrome.base, c.name),
            rev=c.revision,
            size=size(c.state_size),
            updates=c.state_updates,
            events=c.event_count,
            letters=c.dead_letters,
            p50=c.write_latency.p50_ms,
            p95=c.write_latency.p95_ms,
            sizes=markup('<a href="{b}/metrics{q}">size chart</a>', b=chrome.base, q=attrs_query(context=c.name)),
        )
        for c in contexts
    ]
    body = markup(
        '<section id="server" data-live>{facts}</section>'
        '<section id="charts" class="charts" data-live>{charts}</section>{table}',
        facts=facts,
        charts=join(charts),
        table=_table(
            ["context", "revision", "size", "writes", "events", "dead letters", "p50 ms", "p95 ms", ""],
            rows,
            "no context you may read",
            id_="per-context",
            live=True,
        ),
    )
    return page(chrome, "Metrics", body)
