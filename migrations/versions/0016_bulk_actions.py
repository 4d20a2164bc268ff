"""Bulk actions: the jobs, the records each has yet to do, and their per-record errors

bulk_actions: one update or delete of many contacts, deals or tasks, run by a worker in
batches; bulk_action_items: its target ids, resolved once when it is created (dropped when
it finishes); bulk_action_errors: why a record was left unchanged.

Three new tables: no lock on existing data.

Revision ID: 0016_bulk_actions
Revises: 0015_audit_log
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016_bulk_actions"
down_revision: str | None = "0015_audit_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = ("pending", "running", "done", "failed", "cancelled")


def _when(name: str, *, required: bool = False) -> sa.Column:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        server_default=sa.text("now()") if required else None,
        nullable=not required,
    )


def _parent(table: str) -> list[Any]:
    return [
        sa.Column("bulk_action_id", sa.Integer(), nullable=False),
        sa.Column("record_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bulk_action_id"],
            ["bulk_actions.id"],
            name=op.f(f"fk_{table}_bulk_action_id_bulk_actions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("bulk_action_id", "record_id", name=op.f(f"pk_{table}")),
    ]


def upgrade() -> None:
    op.create_table(
        "bulk_actions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        sa.Column("entity", sa.String(length=32), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("changes", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("filter", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                *STATUSES,
                name="bulk_action_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), server_default="0", nullable=False),
        sa.Column("succeeded", sa.Integer(), server_default="0", nullable=False),
        sa.Column("failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_record_id", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "cancel_requested", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("lease", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        _when("heartbeat_at"),
        _when("created_at", required=True),
        _when("started_at"),
        _when("finished_at"),
        sa.ForeignKeyConstraint(
            ["created_by"],
            ["users.id"],
            name=op.f("fk_bulk_actions_created_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_bulk_actions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bulk_actions")),
    )
    op.create_index("ix_bulk_actions_org_id", "bulk_actions", ["organization_id", "id"])
    op.create_index(
        "ix_bulk_actions_unfinished",
        "bulk_actions",
        ["status", "heartbeat_at"],
        postgresql_where=sa.text("status IN ('pending', 'running')"),
    )
    op.create_table("bulk_action_items", *_parent("bulk_action_items"))
    op.create_table(
        "bulk_action_errors",
        *_parent("bulk_action_errors"),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("bulk_action_errors")
    op.drop_table("bulk_action_items")
    op.drop_index("ix_bulk_actions_unfinished", table_name="bulk_actions")
    op.drop_index("ix_bulk_actions_org_id", table_name="bulk_actions")
    op.drop_table("bulk_actions")
