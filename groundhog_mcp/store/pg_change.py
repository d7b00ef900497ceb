"""The statements of a change on PostgreSQL: its sequence, its rows, its audit chain head.

The audit row's HMAC covers the change's ``sequence``, the row's log ``sequence``, its position
in the namespace's chain and the HMAC of the row before it: all four come from the database, and
the HMAC is computed here (the key never goes to the database), so they must be known before
the audit row is sent. A number taken is never given back (a ``SEQUENCE``), and a write that
fails must not take one (the conformance suite: the next change is ``last + 1``). So they are
taken once the write is known to go ahead:

* **Two round trips** when the store guessed right (core ``mutate``: it ran the mutator on the
  context as it last wrote it, :meth:`~groundhog_mcp.store.adapter.StoreAdapter._recall`):
  1. ``BEGIN``, the settings, the row lock, :func:`reserve_statement` and the read of the
     locked row. The reservation takes its numbers only if the locked row is still the guessed
     revision and its lease admits the write: the namespace's audit chain head (its row lock,
     held to commit; with the audit log on), the audit row's log ``sequence``, the feed's
     in-flight marker and the change's ``sequence``.
  2. ``UPDATE`` of the state, :data:`RECORD_RESERVED` (the change, history and event rows and
     the ``NOTIFY``), :data:`AUDIT_APPEND` and ``COMMIT``.
  An unregister (no mutator) reserves on its ``expected_revision``.
* **Three** otherwise (no guess, a stale one, a registration, a lease action): the numbers come
  with the change's rows (:data:`RECORD`), and the audit row and ``COMMIT`` follow.

Either way a namespace's chain head is taken before the change's number: a write queued at its
namespace's head holds no number, so the change feed's settling never waits for it
(:mod:`~groundhog_mcp.store.pg_feed`).
"""

from __future__ import annotations

from typing import Final, LiteralString

from groundhog_mcp.store.pg_feed import FEED_LOCK
from groundhog_mcp.store.rows import AUDIT_COLUMNS

__all__ = ["AUDIT_APPEND", "AUDIT_LOCK_HEAD", "RECORD", "RECORD_RESERVED", "reserve_statement"]

# A chain's next position and the HMAC of its last row: a new chain starts at 1 after "".
_HEAD_UPSERT: Final = "INSERT INTO audit_heads (namespace, position, hmac) SELECT %(namespace)s::text, 1, ''"
_HEAD_CONFLICT: Final = (
    "ON CONFLICT (namespace) DO UPDATE SET position = audit_heads.position + 1 RETURNING position, hmac"
)
# The head of the namespace's audit chain (when audit is on), locked and held to commit: audited
# writes of one namespace take turns there; other namespaces' never wait on it. Then the log's
# sequence, once the head is held: a chain's rows are numbered in chain order.
_HEAD: Final = (
    f" head AS ({_HEAD_UPSERT} {{source}} WHERE %(audit)s::boolean {_HEAD_CONFLICT}),"
    " audit AS (SELECT position, hmac, nextval('audit_sequence') AS sequence FROM head),"
    # The in-flight marker, then the number: see store/pg_feed.py (no row lock; never waited
    # for). The count makes the head come first.
    f" flight AS (SELECT {FEED_LOCK} {{source}} WHERE (SELECT count(*) FROM audit) >= 0),"
    " counter AS (SELECT nextval('change_sequence') AS value FROM flight)"
)
# A change's rows (from ``counter``): the change, the history snapshot (when given), the event
# record (when given), the sealing key's id, and the NOTIFY, delivered on commit.
_ROWS: Final = (
    " change AS (INSERT INTO changes (sequence, context_id, namespace, name, revision, op, actor, timestamp, patch,"
    "  patch_sealed)"
    "  SELECT value, %(id)s::uuid, %(namespace)s::text, %(name)s::text, %(revision)s::bigint, %(op)s::text,"
    "  %(actor)s::text, %(now)s::timestamptz, %(patch)s::json, %(patch_sealed)s::bytea FROM counter),"
    " snapshot AS (INSERT INTO history (context_id, revision, sequence, op, actor, timestamp, size, snapshot)"
    "  SELECT %(id)s::uuid, %(revision)s::bigint, value, %(op)s::text, %(actor)s::text, %(now)s::timestamptz,"
    "  %(size)s::integer, %(snapshot)s::bytea FROM counter WHERE %(snapshot)s::bytea IS NOT NULL),"
    " event AS (INSERT INTO events (context_id, type, payload, idempotency_key, revision, sequence, created_at,"
    "  payload_sealed)"
    "  SELECT %(id)s::uuid, %(event_type)s::text, %(payload)s::text, %(key)s::text, %(revision)s::bigint, value,"
    "  %(now)s::timestamptz, %(payload_sealed)s::bytea FROM counter WHERE %(event_type)s::text IS NOT NULL),"
    # Encryption at rest: the id of the key this write sealed with (no round trip of its own).
    " sealing AS (INSERT INTO encryption_keys (key_id, first_used) SELECT %(key_id)s::text, %(now)s::timestamptz"
    "  WHERE %(key_id)s::text IS NOT NULL ON CONFLICT (key_id) DO NOTHING)"
)
# The numbers and the rows in one statement; returns the sequence and the audit head (or NULLs).
RECORD: Final = (
    "WITH" + _HEAD.format(source="") + "," + _ROWS + " SELECT value, pg_notify(%(channel)s::text, value::text),"
    " audit.sequence, audit.position, audit.hmac FROM counter LEFT JOIN audit ON true"
)
# The rows of a change whose numbers were reserved (%(sequence)s); nothing to return.
RECORD_RESERVED: Final = (
    "WITH counter AS (SELECT %(sequence)s::bigint AS value),"
    + _ROWS
    + " SELECT pg_notify(%(channel)s::text, value::text) FROM counter"
)
# The audit row, and the chain head's new HMAC, in one statement (the head's row lock is held).
AUDIT_APPEND: Final = (
    "WITH head AS (UPDATE audit_heads SET hmac = %s WHERE namespace = %s)"
    f" INSERT INTO audit_log ({AUDIT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
)
AUDIT_LOCK_HEAD: Final = (
    f"WITH head AS ({_HEAD_UPSERT} {_HEAD_CONFLICT}) SELECT nextval('audit_sequence'), position, hmac FROM head"
)


def reserve_statement(live: LiteralString) -> LiteralString:
    """The reservation of a change of the context ``%(namespace)s``/``%(name)s`` (locked by the
    statement before): its change ``sequence`` and its audit head (or NULLs) if it is live
    (``live``: the condition), is context ``%(id)s`` at ``%(revision)s`` (NULL: any), and its
    lease admits ``%(token)s``; no row otherwise, and nothing taken."""
    target: LiteralString = (
        f"WITH target AS (SELECT 1 FROM contexts c WHERE namespace = %(namespace)s AND name = %(name)s AND {live}"
        " AND (%(id)s::uuid IS NULL OR c.id = %(id)s::uuid)"
        " AND (%(revision)s::bigint IS NULL OR c.revision = %(revision)s::bigint)"
        # The fence (store/leases.py check_fence) as a guard: a held lease admits its own token
        # only, and a token needs its lease held. (Where the two disagree, at an expiry instant,
        # a write takes a number it does not use, or takes it later: never a wrong write.)
        " AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.context_id = c.id AND l.holder IS NOT NULL"
        "  AND l.expires_at > statement_timestamp() AND l.token IS DISTINCT FROM %(token)s::bigint)"
        " AND (%(token)s::bigint IS NULL OR EXISTS (SELECT 1 FROM leases l WHERE l.context_id = c.id"
        "  AND l.token = %(token)s::bigint AND l.holder IS NOT NULL AND l.expires_at > statement_timestamp()))),"
    )
    return (
        target
        + _HEAD.format(source="FROM target")
        + " SELECT value, audit.sequence, audit.position, audit.hmac FROM counter LEFT JOIN audit ON true"
    )
