"""The change feed: the organization's audit entries oldest first, for sync clients that
poll with the cursor they were given and must see every committed entry exactly once.

Entry ids are handed out at INSERT, not at COMMIT: a transaction may take id 10 and commit
after id 11 was read, and a cursor "after 11" would skip it for good. So each entry carries
its transaction's id (`xid`, set by the database), and the feed serves, in (xid, id) order,
only entries whose transaction is older than every transaction still running
(`pg_snapshot_xmin(pg_current_snapshot())`). Every transaction below that horizon has
ended, so the set of entries below it never changes again, and every transaction that is
still to commit an entry has an xid at or above it, that is above any cursor handed out.
Hence: nothing skipped, nothing repeated, one stable order.

The price: an entry shows up once every write transaction that began before it ended, in any
database of the server; a transaction left open (idle in transaction) holds the feed back
until it ends. Transaction ids hold within one database's history only: a cursor carries the
database's identity (crm_domain.identity: a restore, a point-in-time recovery, a promoted
standby or an `installation rotate` changes it) and is refused with 400 CURSOR_STALE under
another one, instead of silently skipping what the new history writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import BigInteger, Text, cast, func, select, tuple_
from sqlalchemy.orm import Session

from ... import identity
from ...context import Actor
from ...models import AuditEntry
from . import cursors
from .log import ensure_may_read

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_CURSOR_KIND = "feed"
# Below every transaction still running: the entries that will never change again.
_HORIZON = cast(cast(func.pg_snapshot_xmin(func.pg_current_snapshot()), Text), BigInteger)


@dataclass(frozen=True, slots=True)
class FeedPage:
    items: Sequence[AuditEntry]
    next_cursor: str  # always: poll with it next time
    has_more: bool  # more entries are ready now: poll again at once


def read(
    session: Session, actor: Actor, secret_key: str, *, after: str | None, limit: int
) -> FeedPage:
    """Up to `limit` entries after the cursor `after` (from the oldest kept when None)."""
    ensure_may_read(actor)
    org = actor.organization_id
    # Transaction ids hold within one database's history: a cursor names the identity it was
    # given under (a restore, a point-in-time recovery or another server makes another one).
    epoch = identity.epoch_of(session.execute(identity.IDENTITY_SQL).one())
    position = (
        [0, 0]
        if after is None
        else cursors.decode(secret_key, _CURSOR_KIND, org, after, size=2, epoch=epoch)
    )
    rows = list(
        session.scalars(
            select(AuditEntry)
            .where(
                AuditEntry.organization_id == org,
                tuple_(AuditEntry.xid, AuditEntry.id) > tuple_(*position),
                AuditEntry.xid < _HORIZON,
            )
            .order_by(AuditEntry.xid, AuditEntry.id)
            .limit(limit + 1)
        )
    )
    items = rows[:limit]
    if items:
        position = [items[-1].xid, items[-1].id]
    return FeedPage(
        items=items,
        next_cursor=cursors.encode(secret_key, _CURSOR_KIND, org, position, epoch),
        has_more=len(rows) > limit,
    )
