"""The tenant a run works on: its users registered through the API, its rows loaded with
COPY, and what the virtual users pick from."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.client import Client, login
from bench.config import (
    CURRENCIES,
    ORG_NAME,
    PASSWORD,
    PROBE_CURRENCY,
    SEED_USERS,
    STAGES,
    STATUSES,
    log,
)
from bench.infra import Infra
from crm_domain.representation import CONTACT_FIELDS, DEAL_FIELDS


@dataclass
class SeedUser:
    role: str
    email: str
    name: str
    user_id: int = 0


@dataclass
class Tenant:
    org_id: int
    users: list[SeedUser]


def register_tenant(port: int) -> Tenant:
    users = [SeedUser(role, email, name) for role, email, name in SEED_USERS]
    owner_client = Client(port)
    org_id = 0
    for user in users:
        client = owner_client if user.role == "owner" else Client(port)
        body = client.call(
            "POST",
            "/auth/register",
            body={
                "email": user.email,
                "password": PASSWORD,
                "name": user.name,
                "organization_name": ORG_NAME if user.role == "owner" else f"{user.name}'s org",
            },
        )
        user.user_id = int(body["user"]["id"])
        if user.role == "owner":
            org_id = int(body["organization"]["id"])
            owner_client.token = body["access_token"]
        else:
            client.close()
    for user in users:
        if user.role != "owner":
            owner_client.call(
                "POST",
                f"/organizations/{org_id}/members",
                body={"email": user.email, "role": user.role},
            )
    owner_client.close()
    log(f"registered organization {org_id} with owner, manager and member (through the API)")
    return Tenant(org_id, users)


def existing_tenant(infra: Infra) -> Tenant | None:
    """The tenant of a previous run (for --skip-seed), or None."""
    import psycopg

    emails = [email for _, email, _ in SEED_USERS]
    with psycopg.connect(infra.db_conninfo) as conn:
        rows = conn.execute(
            "SELECT u.email, u.id, m.organization_id, m.role FROM users u"
            " JOIN organization_members m ON m.user_id = u.id"
            " JOIN organizations o ON o.id = m.organization_id"
            " WHERE u.email = ANY(%s) AND o.name = %s",
            (emails, ORG_NAME),
        ).fetchall()
    found = {email: (uid, org, role) for email, uid, org, role in rows}
    if len(found) != len(SEED_USERS) or len({org for _, org, _ in found.values()}) != 1:
        return None
    users = [SeedUser(role, email, name, found[email][0]) for role, email, name in SEED_USERS]
    return Tenant(next(iter(found.values()))[1], users)


class Progress:
    def __init__(self, label: str, total: int) -> None:
        self.label, self.total = label, max(total, 1)
        self.next_pct = 10
        self.start = time.monotonic()

    def update(self, done: int) -> None:
        pct = done * 100 // self.total
        if pct >= self.next_pct:
            rate = done / max(time.monotonic() - self.start, 1e-6)
            log(f"  {self.label}: {done:,}/{self.total:,} ({pct}%, {rate:,.0f} rows/s)")
            self.next_pct = (pct // 10 + 1) * 10


def cents_str(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def _copy(
    conn: Any, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]], total: int
) -> None:
    progress = Progress(table, total)
    with (
        conn.cursor() as cur,
        cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        for i, row in enumerate(rows, 1):
            copy.write_row(row)
            if i % 1000 == 0 or i == total:
                progress.update(i)
    conn.execute(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
        f" (SELECT COALESCE(max(id), 1) FROM {table}))"
    )


def bulk_insert(infra: Infra, tenant: Tenant, args: argparse.Namespace) -> dict[str, int]:
    """COPY contacts, deals, tasks and comments for the tenant."""
    import psycopg

    rng = random.Random(args.random_seed)
    org = tenant.org_id
    owners = [u.user_id for u in tenant.users]
    now = dt.datetime.now(dt.UTC)
    today = now.date()
    year = 365 * 86400
    counts = {
        "contacts": args.contacts,
        "deals": args.deals,
        "tasks": args.tasks if args.deals else 0,
        "activities": args.activities if args.deals else 0,
    }
    with psycopg.connect(infra.db_conninfo) as conn:

        def first_id(table: str) -> int:
            row = conn.execute(f"SELECT COALESCE(max(id), 0) + 1 FROM {table}").fetchone()
            return int(row[0]) if row else 1

        c0 = first_id("contacts")

        def contacts() -> Iterable[tuple[Any, ...]]:
            for i in range(args.contacts):
                cid = c0 + i
                created = now - dt.timedelta(seconds=rng.uniform(0, year))
                yield (
                    cid,
                    org,
                    rng.choice(owners),
                    f"Contact {cid}",
                    f"contact{cid}@example.com",
                    f"+1-555-{cid:07d}",
                    created,
                    created + dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds())),
                )

        _copy(
            conn,
            "contacts",
            CONTACT_FIELDS,  # the table's columns as the API shows them
            contacts(),
            args.contacts,
        )
        conn.commit()
        contact_ids = range(c0, c0 + args.contacts)
        if not args.contacts:
            counts.update(deals=0, tasks=0, activities=0)
            return counts

        d0 = first_id("deals")
        deal_created: list[dt.datetime] = []

        def deal_state() -> tuple[str, str]:
            status = rng.choices(STATUSES, weights=(30, 35, 15, 20))[0]
            if status == "new":
                stage = rng.choices(STAGES, weights=(80, 20, 0, 0))[0]
            elif status == "in_progress":
                stage = rng.choices(STAGES, weights=(30, 40, 30, 0))[0]
            else:
                stage = rng.choices(STAGES, weights=(5, 10, 15, 70))[0]
            return status, stage

        def deals() -> Iterable[tuple[Any, ...]]:
            for i in range(args.deals):
                did = d0 + i
                status, stage = deal_state()
                if status == "won":
                    cents = rng.randint(1, 10_000_000)
                else:
                    cents = 0 if rng.random() < 0.05 else rng.randint(0, 10_000_000)
                contact = rng.choice(contact_ids)
                created = now - dt.timedelta(seconds=rng.uniform(0, year))
                deal_created.append(created)
                yield (
                    did,
                    org,
                    contact,
                    rng.choice(owners),
                    f"Deal {did} for Contact {contact}",
                    cents_str(cents),
                    rng.choices(CURRENCIES, weights=(60, 25, 15))[0],
                    status,
                    stage,
                    created,
                    created + dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds())),
                )

        _copy(
            conn,
            "deals",
            DEAL_FIELDS,
            deals(),
            args.deals,
        )
        conn.commit()
        if not args.deals:
            return counts

        def tasks() -> Iterable[tuple[Any, ...]]:
            for i in range(counts["tasks"]):
                deal = d0 + rng.randrange(args.deals)
                created = now - dt.timedelta(seconds=rng.uniform(0, 30 * 86400))
                yield (
                    org,
                    deal,
                    f"Task {i + 1}: follow up on deal {deal}",
                    today + dt.timedelta(days=rng.randint(-7, 60)),
                    rng.random() < 0.25,
                    created,
                    created,
                )

        _copy(
            conn,
            "tasks",
            (
                "organization_id",
                "deal_id",
                "title",
                "due_date",
                "is_done",
                "created_at",
                "updated_at",
            ),
            tasks(),
            counts["tasks"],
        )

        def activities() -> Iterable[tuple[Any, ...]]:
            for i in range(counts["activities"]):
                k = rng.randrange(args.deals)
                created = deal_created[k]
                created += dt.timedelta(seconds=rng.uniform(0, (now - created).total_seconds()))
                yield (
                    org,
                    d0 + k,
                    rng.choice(owners),
                    "comment",
                    json.dumps({"text": f"Seeded comment {i + 1}"}),
                    created,
                )

        _copy(
            conn,
            "activities",
            ("organization_id", "deal_id", "author_id", "type", "payload", "created_at"),
            activities(),
            counts["activities"],
        )
        conn.commit()
    return counts


def vacuum_analyze(infra: Infra) -> None:
    """VACUUM ANALYZE: statistics plus the visibility map, so autovacuum does not start on
    the freshly loaded tables in the middle of the measurement; then a CHECKPOINT."""
    import psycopg

    with psycopg.connect(infra.db_conninfo, autocommit=True) as conn:
        for table in ("contacts", "deals", "tasks", "activities"):
            conn.execute(f"VACUUM (ANALYZE) {table}")
        conn.execute("ANALYZE")
        # Flush the loaded pages now, not through the checkpointer during the measurement.
        try:
            conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # needs superuser or pg_checkpoint
            log(f"CHECKPOINT skipped: {exc}")


@dataclass
class Dataset:
    org_id: int
    users: list[SeedUser]
    contact_ids: list[int]
    deal_ids: list[int]  # grows with created deals (list.append is atomic)
    deals_by_owner: dict[int, list[int]]
    deals_with_tasks: list[int]
    deals_with_activities: list[int]
    deal_total: int
    cursor_supported: bool = False
    tokens: dict[str, str] = field(default_factory=dict)  # email -> access token

    def client(self, port: int, user: SeedUser) -> Client:
        """A connection working as `user` in the organization (logged in by `log_in`)."""
        return Client(port, token=self.tokens[user.email], org_id=self.org_id)

    def log_in(self, port: int) -> None:
        """One login per user, before any measurement (virtual users share them)."""
        for user in self.users:
            client = login(port, user.email, PASSWORD)
            self.tokens[user.email] = str(client.token)
            client.close()


def load_dataset(infra: Infra, tenant: Tenant) -> Dataset:
    import psycopg

    org = tenant.org_id
    with psycopg.connect(infra.db_conninfo) as conn:
        contact_ids = [
            r[0] for r in conn.execute("SELECT id FROM contacts WHERE organization_id = %s", (org,))
        ]
        deal_rows = conn.execute(
            "SELECT id, owner_id FROM deals WHERE organization_id = %s AND currency <> %s",
            (org, PROBE_CURRENCY),  # the freshness probe's deals are its own
        ).fetchall()
        with_tasks = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT deal_id FROM tasks WHERE organization_id = %s", (org,)
            )
        ]
        with_activities = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT deal_id FROM activities WHERE organization_id = %s", (org,)
            )
        ]
    by_owner: dict[int, list[int]] = defaultdict(list)
    for deal_id, owner_id in deal_rows:
        by_owner[owner_id].append(deal_id)
    return Dataset(
        org_id=org,
        users=tenant.users,
        contact_ids=contact_ids,
        deal_ids=[r[0] for r in deal_rows],
        deals_by_owner=dict(by_owner),
        deals_with_tasks=with_tasks,
        deals_with_activities=with_activities,
        deal_total=len(deal_rows),
    )
