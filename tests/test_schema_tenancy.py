"""The schema's fitness for sharding by organization (docs/SCALING.md, "Sharding").

Read from the migrated database itself: every tenant table carries a NOT NULL
organization_id, every foreign key between tenant tables includes it (so a tenant's rows can
live together on one shard: Citus co-location), and every unique key on a tenant table
includes it, unless it is listed below with what must change before distributing the table.
A new table or key that breaks the rule fails here until it is fixed or listed; a listed
exception that was fixed must leave the list."""

from __future__ import annotations

from sqlalchemy import text

from crm_domain.db import Database

# Not tenant data: stay global (Citus reference tables or coordinator-local).
GLOBAL_TABLES = {
    "organizations": "the tenants themselves: distributed by id, co-located with their rows",
    "users": "one login across organizations (memberships are the tenant side)",
    "auth_sessions": "a user's refresh-token sessions, looked up by id before any tenant",
    "installation": "one row: the database's identity (crm_domain.installation)",
    "alembic_version": "the migration head",
}
# Tenant data without its own organization_id yet: reached through import_jobs.
TO_KEY_BY_ORGANIZATION = {
    "import_files": "add organization_id; FK (job_id, organization_id) -> import_jobs",
    "import_row_errors": "add organization_id; FK (job_id, organization_id) -> import_jobs",
    "bulk_action_items": "add organization_id; FK (job_id, organization_id) -> bulk_actions",
    "bulk_action_errors": "add organization_id; FK (job_id, organization_id) -> bulk_actions",
}
# Tenant tables whose organization_id may be NULL.
NULLABLE_ORGANIZATION = {
    "outbound_emails": "a user's daily digest spans organizations: stays a global table",
}
# Unique keys on tenant tables without organization_id. Citus enforces a unique key on a
# distributed table only when it includes the distribution column.
UNIQUE_WITHOUT_ORGANIZATION = {
    **{
        (table, f"pk_{table}"): "primary key (id): becomes (organization_id, id)"
        for table in (
            "activities",
            "api_keys",
            "audit_entries",
            "bulk_actions",
            "contacts",
            "custom_field_definitions",
            "deals",
            "idempotency_keys",
            "import_jobs",
            "invitations",
            "notifications",
            "organization_members",
            "outbound_emails",
            "outbox_events",
            "reports",
            "tasks",
            "webhook_deliveries",
            "webhook_endpoints",
        )
    },
    ("activities", "uq_activities_event_key"): "(organization_id, event_key); ON CONFLICT too",
    ("outbox_events", "uq_outbox_events_event_key"): "(organization_id, event_key)",
    ("notifications", "uq_notifications_dedupe_key"): "(organization_id, dedupe_key)",
    ("contacts", "uq_contacts_import_row"): "(organization_id, import_job_id, import_row)",
    ("deals", "uq_deals_import_row"): "(organization_id, import_job_id, import_row)",
    ("webhook_deliveries", "uq_webhook_deliveries_endpoint_id_event_id"): (
        "(organization_id, endpoint_id, event_id)"
    ),
    ("invitations", "uq_invitations_token_hash"): (
        "looked up by token before the organization is known: a global token -> org lookup"
    ),
    ("outbound_emails", "uq_outbound_emails_dedupe_key"): "global table (see above)",
    ("api_keys", "uq_api_keys_lookup"): (
        "looked up by the key before the organization is known: a global key -> org lookup"
    ),
}

TABLES_SQL = text(
    """
    SELECT t.table_name, c.is_nullable
    FROM information_schema.tables t
    LEFT JOIN information_schema.columns c
      ON c.table_schema = t.table_schema AND c.table_name = t.table_name
     AND c.column_name = 'organization_id'
    WHERE t.table_schema = 'public' AND t.table_type = 'BASE TABLE'
    """
)
UNIQUE_SQL = text(
    """
    SELECT tbl.relname, idx.relname,
           array(SELECT a.attname FROM unnest(ix.indkey) k
                 JOIN pg_attribute a ON a.attrelid = tbl.oid AND a.attnum = k) AS columns
    FROM pg_index ix
    JOIN pg_class tbl ON tbl.oid = ix.indrelid
    JOIN pg_class idx ON idx.oid = ix.indexrelid
    JOIN pg_namespace n ON n.oid = tbl.relnamespace
    WHERE n.nspname = 'public' AND ix.indisunique
    """
)
FOREIGN_KEYS_SQL = text(
    """
    SELECT con.conrelid::regclass::text, con.confrelid::regclass::text, con.conname,
           array(SELECT a.attname FROM unnest(con.conkey) k
                 JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k)
    FROM pg_constraint con
    WHERE con.contype = 'f' AND con.connamespace = 'public'::regnamespace
    """
)


def _tables(db: Database) -> dict[str, str | None]:
    """{table: is_nullable of its organization_id ("YES"/"NO"), None without one}."""
    with db.transaction() as s:
        return {name: nullable for name, nullable in s.execute(TABLES_SQL)}


def test_every_tenant_table_carries_organization_id(db: Database) -> None:
    tables = _tables(db)
    without = {name for name, nullable in tables.items() if nullable is None}
    assert without == set(GLOBAL_TABLES) | set(TO_KEY_BY_ORGANIZATION)
    nullable = {name for name, value in tables.items() if value == "YES"}
    assert nullable == set(NULLABLE_ORGANIZATION)


def test_foreign_keys_between_tenant_tables_include_organization_id(db: Database) -> None:
    tables = _tables(db)
    tenant = {name for name, nullable in tables.items() if nullable is not None}
    with db.transaction() as s:
        keys = s.execute(FOREIGN_KEYS_SQL).all()
    crossing = [
        (table, name)
        for table, referenced, name, columns in keys
        if table in tenant
        and referenced in tenant
        and "organization_id" not in columns
        and table not in NULLABLE_ORGANIZATION
    ]
    assert crossing == []
    # The composite keys are there (what makes co-location possible).
    same_org = {name for _, _, name, columns in keys if {"organization_id"} < set(columns)}
    assert {"fk_deals_contact_same_org", "fk_activities_deal_same_org"} <= same_org


def test_unique_keys_on_tenant_tables_include_organization_id_or_are_listed(db: Database) -> None:
    tables = _tables(db)
    tenant = {name for name, nullable in tables.items() if nullable is not None}
    with db.transaction() as s:
        keys = s.execute(UNIQUE_SQL).all()
    without = {
        (table, index)
        for table, index, columns in keys
        if table in tenant and "organization_id" not in columns
    }
    assert sorted(without - set(UNIQUE_WITHOUT_ORGANIZATION)) == []  # new: fix or list it
    assert sorted(set(UNIQUE_WITHOUT_ORGANIZATION) - without) == []  # fixed: unlist it
