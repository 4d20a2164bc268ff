"""indexes for every sort and filter

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 11:26:14.027778
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


TRIGRAM_INDEXES = {
    "ix_contacts_name_trgm": "name",
    "ix_contacts_email_trgm": "email",
}


def _has_pg_trgm() -> bool:
    """pg_trgm ships with PostgreSQL's contrib (not with every embedded build)."""
    bind = op.get_bind()
    return bool(
        bind.execute(
            sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pg_trgm'")
        ).scalar()
    )


def upgrade() -> None:
    if _has_pg_trgm():
        # Contact search is ILIKE '%q%' on name or email: trigram GIN indexes serve it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        for name, column in TRIGRAM_INDEXES.items():
            op.execute(
                f"CREATE INDEX IF NOT EXISTS {name} ON contacts USING gin ({column} gin_trgm_ops)"
            )
    op.drop_index(op.f("ix_contacts_org_owner"), table_name="contacts")
    op.create_index(
        "ix_contacts_org_owner_id", "contacts", ["organization_id", "owner_id", "id"], unique=False
    )
    op.drop_index(op.f("ix_deals_org_created"), table_name="deals")
    op.drop_index(op.f("ix_deals_org_status"), table_name="deals")
    op.create_index(
        "ix_deals_org_amount_id", "deals", ["organization_id", "amount", "id"], unique=False
    )
    op.create_index(
        "ix_deals_org_created_id", "deals", ["organization_id", "created_at", "id"], unique=False
    )
    op.create_index(
        "ix_deals_org_owner_created_id",
        "deals",
        ["organization_id", "owner_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_deals_org_stage_created_id",
        "deals",
        ["organization_id", "stage", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_deals_org_status_created_id",
        "deals",
        ["organization_id", "status", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_deals_org_updated_id", "deals", ["organization_id", "updated_at", "id"], unique=False
    )
    op.drop_index(op.f("ix_tasks_deal"), table_name="tasks")
    op.create_index("ix_tasks_deal_due", "tasks", ["deal_id", "due_date", "id"], unique=False)
    op.create_index(
        "ix_tasks_org_open_due",
        "tasks",
        ["organization_id", "due_date", "id"],
        unique=False,
        postgresql_where=sa.text("NOT is_done"),
    )


def downgrade() -> None:
    for name in TRIGRAM_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.drop_index(
        "ix_tasks_org_open_due", table_name="tasks", postgresql_where=sa.text("NOT is_done")
    )
    op.drop_index("ix_tasks_deal_due", table_name="tasks")
    op.create_index(op.f("ix_tasks_deal"), "tasks", ["deal_id"], unique=False)
    op.drop_index("ix_deals_org_updated_id", table_name="deals")
    op.drop_index("ix_deals_org_status_created_id", table_name="deals")
    op.drop_index("ix_deals_org_stage_created_id", table_name="deals")
    op.drop_index("ix_deals_org_owner_created_id", table_name="deals")
    op.drop_index("ix_deals_org_created_id", table_name="deals")
    op.drop_index("ix_deals_org_amount_id", table_name="deals")
    op.create_index(
        op.f("ix_deals_org_status"), "deals", ["organization_id", "status"], unique=False
    )
    op.create_index(
        op.f("ix_deals_org_created"), "deals", ["organization_id", "created_at"], unique=False
    )
    op.drop_index("ix_contacts_org_owner_id", table_name="contacts")
    op.create_index(
        op.f("ix_contacts_org_owner"), "contacts", ["organization_id", "owner_id"], unique=False
    )
