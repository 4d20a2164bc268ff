"""contact search reads one precomputed column: contacts.search_text, generated as
lower(name) || E'\\n' || coalesce(lower(email), ''), with a trigram index on it where the
server has pg_trgm (replacing 0003's indexes on the bare columns, which no search could use:
it filters on lower(...)).

Adding a stored generated column rewrites the contacts table under an exclusive lock: a few
seconds per million contacts.

Revision ID: 0010_search_text
Revises: 0009_request_id
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_search_text"
down_revision: str | None = "0009_request_id"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEARCH_TEXT = "lower((name)::text) || E'\\n' || COALESCE(lower((email)::text), '')"
OLD_INDEXES = {"ix_contacts_name_trgm": "name", "ix_contacts_email_trgm": "email"}
INDEX = "ix_contacts_search_trgm"


def _has_pg_trgm() -> bool:
    """Installed by 0003 where the server ships it (not every embedded build does)."""
    bind = op.get_bind()
    found = bind.execute(sa.text("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"))
    return bool(found.scalar())


def upgrade() -> None:
    for name in OLD_INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
    op.add_column(
        "contacts",
        sa.Column(
            "search_text", sa.Text(), sa.Computed(SEARCH_TEXT, persisted=True), nullable=True
        ),
    )
    if _has_pg_trgm():
        op.execute(f"CREATE INDEX {INDEX} ON contacts USING gin (search_text gin_trgm_ops)")


def downgrade() -> None:
    op.execute(f"DROP INDEX IF EXISTS {INDEX}")
    op.drop_column("contacts", "search_text")
    if _has_pg_trgm():
        for name, column in OLD_INDEXES.items():
            op.execute(f"CREATE INDEX {name} ON contacts USING gin ({column} gin_trgm_ops)")
