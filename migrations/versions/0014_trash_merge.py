"""Trash and restore, merging duplicate contacts

contacts, deals, tasks: `deleted_at` (null: live) and `deleted_by`; contacts: `merged_into_id`
(a contact trashed by a merge); tasks: `trashed_with_deal` (restored with its deal). A partial
index per table on the trash (only trashed rows have entries), and one on contacts' phone
digits for finding duplicates.

Nullable columns, and a NOT NULL one with a constant default: PostgreSQL adds them without
rewriting the tables. The indexes are built CONCURRENTLY, so writes go on meanwhile.

Revision ID: 0014_trash_merge
Revises: 0012_api_keys
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_trash_merge"
down_revision: str | None = "0012_api_keys"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("contacts", "deals", "tasks")
PHONE_INDEX = "ix_contacts_org_phone_digits"


def upgrade() -> None:
    for table in TABLES:
        op.add_column(table, sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        op.add_column(table, sa.Column("deleted_by", sa.Integer(), nullable=True))
    op.add_column("contacts", sa.Column("merged_into_id", sa.Integer(), nullable=True))
    op.add_column(
        "tasks",
        sa.Column(
            "trashed_with_deal", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    with op.get_context().autocommit_block():
        for table in TABLES:
            op.execute(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS ix_{table}_org_trash "
                f"ON {table} (organization_id, deleted_at, id) WHERE deleted_at IS NOT NULL"
            )
        op.execute(
            f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {PHONE_INDEX} ON contacts "
            "(organization_id, regexp_replace(phone, '\\D', '', 'g')) WHERE phone IS NOT NULL"
        )


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {PHONE_INDEX}")
    for table in TABLES:
        op.execute(f"DROP INDEX IF EXISTS ix_{table}_org_trash")
    op.drop_column("tasks", "trashed_with_deal")
    op.drop_column("contacts", "merged_into_id")
    for table in TABLES:
        op.drop_column(table, "deleted_by")
        op.drop_column(table, "deleted_at")
