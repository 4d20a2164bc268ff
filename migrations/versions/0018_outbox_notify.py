"""Outbox wake-ups through PostgreSQL: NOTIFY crm_outbox when outbox events are inserted

A statement-level trigger on outbox_events calls pg_notify('crm_outbox', '') after each insert.
The notification is sent when (and only if) the inserting transaction commits, once per
transaction whatever the number of events (PostgreSQL folds identical notifications), at no
round trip for the application. The beat process LISTENs on the channel
(crm_worker.outbox_listener) and asks for a drain, so the API publishes nothing to the broker.

A new function and trigger: no lock beyond a brief one on outbox_events.

Revision ID: 0018_outbox_notify
Revises: 0017_custom_fields
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0018_outbox_notify"
down_revision: str | None = "0017_custom_fields"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION crm_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('crm_outbox', '');
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER outbox_events_notify AFTER INSERT ON outbox_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION crm_outbox_notify()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events")
    op.execute("DROP FUNCTION IF EXISTS crm_outbox_notify()")
