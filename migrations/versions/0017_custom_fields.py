"""Custom fields: the organizations' definitions, and a `custom_fields` JSONB column on
contacts, deals and tasks

custom_field_definitions: one row per field of an entity (contact, deal, task) per
organization; `deleted_at` marks a definition whose values the worker is purging.
contacts/deals/tasks.custom_fields: ADD COLUMN with a constant default, which PostgreSQL
(11+) records in the catalogue without rewriting the table; a GIN index (jsonb_path_ops)
serves the equality filters.

Revision ID: 0017_custom_fields
Revises: 0016_bulk_actions
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0017_custom_fields"
down_revision: str | None = "0016_bulk_actions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("contacts", "deals", "tasks")


def _timestamp(name: str, *, nullable: bool = False) -> sa.Column:
    default = None if nullable else sa.text("now()")
    return sa.Column(name, sa.DateTime(timezone=True), server_default=default, nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "custom_field_definitions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organization_id", sa.Integer(), nullable=False),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=40), nullable=False),
        sa.Column("label", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("required", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "options",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        _timestamp("deleted_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_custom_field_definitions_organization_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_custom_field_definitions")),
        sa.UniqueConstraint(
            "organization_id",
            "entity",
            "key",
            name=op.f("uq_custom_field_definitions_organization_id_entity_key"),
        ),
    )
    op.create_index(
        "ix_custom_field_definitions_deleted",
        "custom_field_definitions",
        ["deleted_at"],
        postgresql_where=sa.text("deleted_at IS NOT NULL"),
    )
    for table in TABLES:
        op.add_column(
            table,
            sa.Column(
                "custom_fields",
                postgresql.JSONB(astext_type=sa.Text()),
                server_default=sa.text("'{}'::jsonb"),
                nullable=False,
            ),
        )
        op.create_index(
            f"ix_{table}_custom_fields",
            table,
            ["custom_fields"],
            postgresql_using="gin",
            postgresql_ops={"custom_fields": "jsonb_path_ops"},
        )


def downgrade() -> None:
    for table in TABLES:
        op.drop_index(f"ix_{table}_custom_fields", table_name=table)
        op.drop_column(table, "custom_fields")
    op.drop_index("ix_custom_field_definitions_deleted", table_name="custom_field_definitions")
    op.drop_table("custom_field_definitions")
