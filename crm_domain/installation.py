"""Operator commands on the database identity (crm_domain.identity): show it, give the
database a new installation id, and delete the Redis keys of other epochs.

Command line (settings from the environment, like the app):
    python -m crm_domain.installation show         # installation id, epoch and its parts
    python -m crm_domain.installation rotate       # new installation id: all derived data is
                                                   # a miss from now on (every process within
                                                   # INSTALLATION_CHECK_SECONDS)
    python -m crm_domain.installation purge-redis  # delete derived keys of other epochs
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from .db import Database
from .identity import DERIVED_KINDS, EPOCH_LENGTH, IDENTITY_SQL, epoch_of
from .settings import Settings

if TYPE_CHECKING:
    import redis

ROTATE_SQL = text("UPDATE installation SET id = gen_random_uuid(), created_at = now()")


def describe(conn: Connection) -> dict[str, Any]:
    row = conn.execute(IDENTITY_SQL).one()
    return {**row._asdict(), "epoch": epoch_of(row)}


def rotate(conn: Connection) -> str:
    """Give the database a new installation id; returns the new epoch."""
    if conn.execute(ROTATE_SQL).rowcount != 1:
        raise RuntimeError("the installation table has no row: run the migrations")
    return epoch_of(conn.execute(IDENTITY_SQL).one())


def stale_keys(client: redis.Redis, prefix: str, epoch: str) -> list[bytes]:
    """Derived-data keys of `prefix` that belong to another epoch, plus keys of the layout
    before epochs (`<prefix>:analytics:...`, `<prefix>:count:...`). Other keys of the
    prefix (the outbox drain flag) are left alone."""
    stale: list[bytes] = []
    head = f"{prefix}:"
    for raw in client.scan_iter(match=f"{prefix}:*", count=1000):
        rest = raw.decode(errors="replace")[len(head) :].split(":")
        before_epochs = rest[0] in DERIVED_KINDS
        other_epoch = (
            len(rest) > 1
            and rest[1] in DERIVED_KINDS
            and len(rest[0]) == EPOCH_LENGTH
            and rest[0] != epoch
        )
        if before_epochs or other_epoch:
            stale.append(raw)
    return stale


def main(argv: Sequence[str] | None = None) -> int:
    import redis

    args = list(sys.argv[1:] if argv is None else argv)
    command = args[0] if args else "show"
    if command not in ("show", "rotate", "purge-redis"):
        print(__doc__, file=sys.stderr)
        return 2
    settings = Settings.from_env()
    db = Database.from_settings(settings, pool_size=1)
    try:
        if command == "rotate":
            with db.engine.begin() as conn:
                epoch = rotate(conn)
            print(f"new epoch {epoch}: values derived before are no longer used")
            return 0
        with db.engine.connect() as conn:
            info = describe(conn)
        if command == "show":
            print(json.dumps(info, indent=2))
            return 0
        client = redis.Redis.from_url(settings.redis_url)
        keys = stale_keys(client, settings.redis_key_prefix, info["epoch"])
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        print(f"deleted {len(keys)} keys of other epochs (current epoch {info['epoch']})")
        return 0
    finally:
        db.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
