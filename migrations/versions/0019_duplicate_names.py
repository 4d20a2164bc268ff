"""Similar-name duplicates always read a trigram index, one holding the organization

The similar-name duplicate lookup (services.records.duplicates):

- `contact_name_similar(name, search_text)`: pg_trgm's `name <% search_text` (word
  similarity at least pg_trgm.word_similarity_threshold) declared with about its real cost
  (COST 100, i.e. 100 times cpu_operator_cost: some 5 µs a call; pg_trgm declares its
  functions at 1, as cheap as an integer comparison). The lookup
  adds it to the indexable `<%`, so the planner prices a sequential scan at what it costs
  (the test on every contact of the table) and never prefers it to the index, whatever its
  statistics say about how many contacts share a name. Created where the server has pg_trgm.
- `ix_contacts_org_search_trgm`, GIN (organization_id, search_text gin_trgm_ops), replacing
  0010's `ix_contacts_search_trgm` where the server has btree_gin (a trusted contrib
  extension, like pg_trgm): a lookup reads and rechecks the contacts of its own organization
  only, not every organization's contacts of the same name. Contact search (LIKE on
  search_text within an organization) is served by it the same way.

Building the index locks writes to contacts: about 3 s per 200,000 contacts.

Revision ID: 0019_duplicate_names
Revises: 0018_outbox_notify
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_duplicate_names"
down_revision: str | None = "0018_outbox_notify"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_INDEX = "ix_contacts_search_trgm"
INDEX = "ix_contacts_org_search_trgm"
FUNCTION = "contact_name_similar(text, text)"


def _scalar(sql: str) -> bool:
    return bool(op.get_bind().execute(sa.text(sql)).scalar())


def upgrade() -> None:
    if not _scalar("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'"):
        return  # the lookup falls back to the same name (an index-free server build)
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION} RETURNS boolean
        LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE COST 100 AS $$
        BEGIN
            RETURN $1 <% $2;
        END
        $$
        """
    )
    if _scalar("SELECT 1 FROM pg_available_extensions WHERE name = 'btree_gin'"):
        op.execute("CREATE EXTENSION IF NOT EXISTS btree_gin")
        columns = "organization_id, search_text gin_trgm_ops"
        op.execute(f"CREATE INDEX {INDEX} ON contacts USING gin ({columns})")
        op.execute(f"DROP INDEX IF EXISTS {OLD_INDEX}")


def downgrade() -> None:
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}")
    if _scalar(f"SELECT 1 FROM pg_class WHERE relname = '{INDEX}'"):
        op.execute(f"CREATE INDEX {OLD_INDEX} ON contacts USING gin (search_text gin_trgm_ops)")
        op.execute(f"DROP INDEX {INDEX}")
