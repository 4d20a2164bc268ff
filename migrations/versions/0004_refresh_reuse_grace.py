"""refresh reuse grace: what the current token pair is made of, and the token it replaced

Revision ID: 0004_refresh_grace
Revises: 0003
Create Date: 2026-12-01 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_refresh_grace"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable: sessions started before this revision have no re-issuable pair, so their
    # previous token gets no grace (reuse revokes them, as before).
    op.add_column(
        "auth_sessions", sa.Column("current_access_jti", sa.String(length=36), nullable=True)
    )
    op.add_column(
        "auth_sessions",
        sa.Column("current_issued_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.add_column("auth_sessions", sa.Column("previous_jti", sa.String(length=36), nullable=True))


def downgrade() -> None:
    op.drop_column("auth_sessions", "previous_jti")
    op.drop_column("auth_sessions", "current_issued_at")
    op.drop_column("auth_sessions", "current_access_jti")
