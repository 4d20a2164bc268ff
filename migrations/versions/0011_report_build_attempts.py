"""reports count their failed builds: reports.attempts (a report whose build keeps failing
is parked as `failed` with the reason in `error` instead of being built again forever)

Revision ID: 0011_report_attempts
Revises: 0010_search_text
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_report_attempts"
down_revision: str | None = "0010_search_text"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: a metadata-only change in PostgreSQL 11+, no table rewrite.
    op.add_column(
        "reports", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    op.drop_column("reports", "attempts")
