"""The audit log: one entry per change to an organization's data (crm_domain.audit)

audit_entries: written in the same transaction as the change it describes. `xid` is the
writing transaction's id (pg_current_xact_id(), set by the database), which orders the
change feed (GET /events): an entry is served only once every transaction with a smaller
id has ended, so a poll never skips an entry that commits late.

A new table: no lock on existing data.

Revision ID: 0015_audit_log
Revises: 0014_trash_merge
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_audit_log"
down_revision: str | None = "0014_trash_merge"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_entries",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column(
            "xid",
            sa.BigInteger(),
            server_default=sa.text("(pg_current_xact_id()::text)::bigint"),
            nullable=False,
        ),
        sa.Column(
            "occurred_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("actor_api_key_id", sa.Integer(), nullable=True),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=32), nullable=False),
        sa.Column("entity_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "changes",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_audit_entries_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    op.create_index("ix_audit_entries_org_id", "audit_entries", ["organization_id", "id"])
    op.create_index("ix_audit_entries_org_xid", "audit_entries", ["organization_id", "xid", "id"])
    op.create_index(
        "ix_audit_entries_org_entity",
        "audit_entries",
        ["organization_id", "entity_type", "entity_id", "id"],
    )
    op.create_index(
        "ix_audit_entries_occurred_at",
        "audit_entries",
        ["occurred_at"],
        postgresql_using="brin",
        postgresql_with={"autosummarize": "on"},
    )


def downgrade() -> None:
    op.drop_table("audit_entries")
