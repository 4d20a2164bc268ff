"""outbox events carry the request id of the request that recorded them

Revision ID: 0009_request_id
Revises: 0008_imports
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_request_id"
down_revision: str | None = "0008_imports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: a metadata-only change, no table rewrite.
    op.add_column("outbox_events", sa.Column("request_id", sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column("outbox_events", "request_id")
