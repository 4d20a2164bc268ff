"""ORM models. Every tenant-owned row carries organization_id; composite foreign keys
make cross-organization links impossible at the database level."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .enums import (
    ActivityType,
    ApiKeyScope,
    BulkActionStatus,
    DealStage,
    DealStatus,
    EmailStatus,
    ImportKind,
    ImportStatus,
    OnDuplicate,
    Role,
)
from .trashable import Trashable

AMOUNT = Numeric(12, 2)


def _str_enum(cls: type[enum.StrEnum], name: str) -> Enum:
    """A VARCHAR + CHECK enum storing the values (no native PG enum to migrate)."""
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
        validate_strings=True,
    )


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _import_row_key(table: str) -> Index:
    """(import job, CSV row) of a row written by a CSV import: a re-run of the same rows
    writes nothing twice. Partial, so rows made through the API cost no index entry."""
    return Index(
        f"uq_{table}_import_row",
        "import_job_id",
        "import_row",
        unique=True,
        postgresql_where=text("import_job_id IS NOT NULL"),
    )


def _trash_index(table: str) -> Index:
    """The trash of an organization, newest first (GET /trash) and what beat purges.
    Partial: live rows cost no index entry."""
    return Index(
        f"ix_{table}_org_trash",
        "organization_id",
        "deleted_at",
        "id",
        postgresql_where=text("deleted_at IS NOT NULL"),
    )


def _custom_fields_index(table: str) -> Index:
    """Equality filters on custom fields (`custom_fields @> {...}`)."""
    return Index(
        f"ix_{table}_custom_fields",
        "custom_fields",
        postgresql_using="gin",
        postgresql_ops={"custom_fields": "jsonb_path_ops"},
    )


def _custom_fields() -> Any:
    return mapped_column(JSONB, nullable=False, server_default=text("'{}'::jsonb"))


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    created_at: Mapped[dt.datetime] = _now()


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), nullable=False, unique=True)
    hashed_password: Mapped[str] = mapped_column(String(255), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    # The daily e-mail of open tasks due today or overdue (PATCH /auth/me to opt out).
    email_digest: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    created_at: Mapped[dt.datetime] = _now()


class OrganizationMember(Base):
    __tablename__ = "organization_members"
    __table_args__ = (UniqueConstraint("organization_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    role: Mapped[Role] = mapped_column(_str_enum(Role, "member_role"), nullable=False)
    created_at: Mapped[dt.datetime] = _now()


class AuthSession(Base):
    """A login session: the family of refresh tokens issued from one login.

    Only `current_jti` may be refreshed. The one it replaced (`previous_jti`) gets the same
    current pair back for a short grace window after the rotation (`current_issued_at`), so
    concurrent refreshes with one token all succeed; any older token, or the previous one
    after the window, is reuse and revokes the whole family. Access tokens carry the session
    id and die with it."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    current_jti: Mapped[str] = mapped_column(String(36), nullable=False)
    # What the current token pair was made of: it can be issued again, token for token.
    current_access_jti: Mapped[str | None] = mapped_column(String(36))
    current_issued_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    previous_jti: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


# The names are VARCHAR: PostgreSQL stores (and reports) the expression with these casts.
CONTACT_SEARCH_TEXT = "lower((name)::text) || E'\\n' || COALESCE(lower((email)::text), '')"


class Contact(Trashable, Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("id", "organization_id"),
        Index("ix_contacts_org_id", "organization_id", "id"),
        _custom_fields_index("contacts"),
        Index("ix_contacts_org_owner_id", "organization_id", "owner_id", "id"),
        # Imports match contacts by e-mail, case-insensitively, a batch at a time.
        Index("ix_contacts_org_lower_email", "organization_id", func.lower(text("email"))),
        _import_row_key("contacts"),
        _trash_index("contacts"),
        # Duplicates by phone (services.records.duplicates): the phone's digits.
        Index(
            "ix_contacts_org_phone_digits",
            "organization_id",
            func.regexp_replace(text("phone"), text("'\\D'"), text("''"), text("'g'")),
            postgresql_where=text("phone IS NOT NULL"),
        ),
        # The trigram index on search_text (contact search, similar-name duplicates) is
        # created by migration 0010 where the server has pg_trgm, on (organization_id,
        # search_text) by 0019 where it also has btree_gin.
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    import_job_id: Mapped[int | None] = mapped_column(Integer)
    import_row: Mapped[int | None] = mapped_column(Integer)
    # Custom field values {key: value}, validated against the organization's definitions
    # (crm_domain.validation.custom_values); shown through the live ones only.
    custom_fields: Mapped[dict[str, Any]] = _custom_fields()
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    # Set with deleted_at when a merge trashed this contact (services.records.merge).
    merged_into_id: Mapped[int | None] = mapped_column(Integer)
    # What `search` matches, kept by PostgreSQL: one LIKE per row instead of two lower()s and
    # two LIKEs (crm_domain.services.records.contacts.matching). Never loaded with the contact.
    search_text: Mapped[str | None] = mapped_column(
        Text,
        Computed(CONTACT_SEARCH_TEXT, persisted=True),
        deferred=True,
    )


class Deal(Trashable, Base):
    __tablename__ = "deals"
    __table_args__ = (
        UniqueConstraint("id", "organization_id"),
        ForeignKeyConstraint(
            ["contact_id", "organization_id"],
            ["contacts.id", "contacts.organization_id"],
            ondelete="RESTRICT",
            name="fk_deals_contact_same_org",
        ),
        CheckConstraint("amount >= 0", name="amount_non_negative"),
        CheckConstraint("status <> 'won' OR amount > 0", name="won_amount_positive"),
        # One index per sort, (organization, sort column, id): keyset pages and ORDER BY ...
        # LIMIT read only what they return; filtered variants for the common filters.
        Index("ix_deals_org_created_id", "organization_id", "created_at", "id"),
        Index("ix_deals_org_amount_id", "organization_id", "amount", "id"),
        Index("ix_deals_org_updated_id", "organization_id", "updated_at", "id"),
        Index("ix_deals_org_status_created_id", "organization_id", "status", "created_at", "id"),
        Index("ix_deals_org_stage_created_id", "organization_id", "stage", "created_at", "id"),
        Index("ix_deals_org_owner_created_id", "organization_id", "owner_id", "created_at", "id"),
        Index("ix_deals_contact", "contact_id"),
        _custom_fields_index("deals"),
        _import_row_key("deals"),
        _trash_index("deals"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    contact_id: Mapped[int] = mapped_column(Integer, nullable=False)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    amount: Mapped[Decimal] = mapped_column(AMOUNT, nullable=False, server_default="0")
    currency: Mapped[str] = mapped_column(String(3), nullable=False, server_default="USD")
    status: Mapped[DealStatus] = mapped_column(
        _str_enum(DealStatus, "deal_status"), nullable=False, server_default=DealStatus.NEW.value
    )
    stage: Mapped[DealStage] = mapped_column(
        _str_enum(DealStage, "deal_stage"),
        nullable=False,
        server_default=DealStage.QUALIFICATION.value,
    )
    import_job_id: Mapped[int | None] = mapped_column(Integer)
    import_row: Mapped[int | None] = mapped_column(Integer)
    # Custom field values {key: value}, validated against the organization's definitions
    # (crm_domain.validation.custom_values); shown through the live ones only.
    custom_fields: Mapped[dict[str, Any]] = _custom_fields()
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Task(Trashable, Base):
    __tablename__ = "tasks"
    __table_args__ = (
        ForeignKeyConstraint(
            ["deal_id", "organization_id"],
            ["deals.id", "deals.organization_id"],
            ondelete="CASCADE",
            name="fk_tasks_deal_same_org",
        ),
        Index("ix_tasks_org_due", "organization_id", "due_date", "id"),
        Index(
            "ix_tasks_org_open_due",
            "organization_id",
            "due_date",
            "id",
            postgresql_where=text("NOT is_done"),
        ),
        Index("ix_tasks_deal_due", "deal_id", "due_date", "id"),
        _custom_fields_index("tasks"),
        _trash_index("tasks"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    deal_id: Mapped[int] = mapped_column(Integer, nullable=False)
    title: Mapped[str] = mapped_column(String(255), nullable=False)
    description: Mapped[str | None] = mapped_column(Text)
    due_date: Mapped[dt.date] = mapped_column(Date, nullable=False)
    is_done: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    # Custom field values {key: value}, validated against the organization's definitions
    # (crm_domain.validation.custom_values); shown through the live ones only.
    custom_fields: Mapped[dict[str, Any]] = _custom_fields()
    # Trashed because its deal was (and restored with it), not on its own.
    trashed_with_deal: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Activity(Base):
    __tablename__ = "activities"
    __table_args__ = (
        ForeignKeyConstraint(
            ["deal_id", "organization_id"],
            ["deals.id", "deals.organization_id"],
            ondelete="CASCADE",
            name="fk_activities_deal_same_org",
        ),
        Index("ix_activities_deal_created", "deal_id", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    deal_id: Mapped[int] = mapped_column(Integer, nullable=False)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    type: Mapped[ActivityType] = mapped_column(
        _str_enum(ActivityType, "activity_type"), nullable=False
    )
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # Idempotency key of the outbox event that produced this entry (null for comments).
    event_key: Mapped[uuid.UUID | None] = mapped_column(unique=True)
    created_at: Mapped[dt.datetime] = _now()


class OutboxEvent(Base):
    """An event written in the same transaction as the change that caused it;
    workers deliver it (at least once) and consumers dedupe on `event_key`."""

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index(
            "ix_outbox_events_pending",
            "id",
            postgresql_where=text("delivered_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    event_key: Mapped[uuid.UUID] = mapped_column(nullable=False, unique=True, default=uuid.uuid4)
    organization_id: Mapped[int] = mapped_column(Integer, nullable=False)
    topic: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[dt.datetime] = _now()
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_error: Mapped[str | None] = mapped_column(Text)
    # The X-Request-ID of the request that recorded the event (None outside a request).
    request_id: Mapped[str | None] = mapped_column(String(128))


class Notification(Base):
    """A message for one user in one organization (e.g. a task of their deal is due)."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_user_org", "user_id", "organization_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    # Makes a producer that runs twice write the notification once.
    dedupe_key: Mapped[str | None] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = _now()
    read_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Report(Base):
    """A pipeline report: summary + funnel + overdue tasks, built by a worker."""

    __tablename__ = "reports"
    __table_args__ = (
        Index("ix_reports_org_id", "organization_id", "id"),
        Index(
            "uq_reports_weekly_period",
            "organization_id",
            "period_start",
            unique=True,
            postgresql_where=text("kind = 'weekly'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)  # weekly | on_demand
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    period_start: Mapped[dt.date] = mapped_column(Date, nullable=False)
    period_end: Mapped[dt.date] = mapped_column(Date, nullable=False)
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)  # why the last build failed
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")  # failed
    created_at: Mapped[dt.datetime] = _now()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Invitation(Base):
    """An invitation to join an organization with a role, accepted once with a token.

    Only the token's SHA-256 is stored for lookup. The token itself is an HMAC of
    `token_nonce` under the SECRET_KEY, so the worker can put it in the e-mail later while
    the database alone (a dump, a read replica) does not give anyone a working token."""

    __tablename__ = "invitations"
    __table_args__ = (
        # One live invitation per address and organization: inviting again replaces it.
        Index(
            "uq_invitations_org_email_live",
            "organization_id",
            "email",
            unique=True,
            postgresql_where=text("accepted_at IS NULL AND revoked_at IS NULL"),
        ),
        Index("ix_invitations_org_id", "organization_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    email: Mapped[str] = mapped_column(String(320), nullable=False)
    role: Mapped[Role] = mapped_column(_str_enum(Role, "invitation_role"), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    token_nonce: Mapped[str] = mapped_column(String(64), nullable=False)
    invited_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    accepted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    accepted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class OutboundEmail(Base):
    """One e-mail to send: written idempotently (`dedupe_key`) by an outbox handler or a
    scheduled job, rendered and sent by the e-mail worker, retried with back-off."""

    __tablename__ = "outbound_emails"
    __table_args__ = (
        Index(
            "ix_outbound_emails_due",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    dedupe_key: Mapped[str] = mapped_column(String(160), nullable=False, unique=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    to_address: Mapped[str] = mapped_column(String(320), nullable=False)
    # What to render at send time (ids, a day): never a secret, never the rendered body.
    params: Mapped[dict[str, Any]] = mapped_column(
        JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    status: Mapped[EmailStatus] = mapped_column(
        _str_enum(EmailStatus, "email_status"),
        nullable=False,
        server_default=EmailStatus.PENDING.value,
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    next_attempt_at: Mapped[dt.datetime] = _now()
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    sent_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class Installation(Base):
    """Exactly one row: the random identity of this database, created by migration 0005.

    Everything derived from the database and kept outside it (Redis) is bound to this
    identity (see crm_domain.identity), so a value from another database, or from this
    one before a restore, is never served."""

    __tablename__ = "installation"
    __table_args__ = (CheckConstraint("singleton", name="singleton"),)

    singleton: Mapped[bool] = mapped_column(Boolean, primary_key=True, server_default=text("true"))
    id: Mapped[uuid.UUID] = mapped_column(nullable=False, server_default=text("gen_random_uuid()"))
    created_at: Mapped[dt.datetime] = _now()


class WebhookEndpoint(Base):
    """Where an organization wants its events POSTed (Standard Webhooks). An empty
    `event_types` subscribes to every event type, present and future."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (
        UniqueConstraint("id", "organization_id"),
        Index("ix_webhook_endpoints_org_id", "organization_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    url: Mapped[str] = mapped_column(String(2048), nullable=False)
    description: Mapped[str | None] = mapped_column(String(500))
    event_types: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), nullable=False, server_default=text("'{}'::varchar[]")
    )
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("true"))
    # `whsec_` + base64 of random bytes; needed in clear to sign, never returned by a GET.
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    # After a rotation the old secret signs too (a second signature) until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(Text)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Failure streak since the last successful delivery (auto-disable: webhook_attempts).
    failing_since: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    failed_events: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # One sender at a time per endpoint: a lease renewed with every attempt.
    sender_lease_until: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class WebhookDelivery(Base):
    """One event for one endpoint: the exact body sent, the attempts, the next retry.
    (endpoint_id, event_id) is unique, so fanning an event out twice writes it once."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        ForeignKeyConstraint(
            ["endpoint_id", "organization_id"],
            ["webhook_endpoints.id", "webhook_endpoints.organization_id"],
            ondelete="CASCADE",
            name="fk_webhook_deliveries_endpoint_same_org",
        ),
        CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed')", name="webhook_delivery_status"
        ),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        # What the senders claim: due deliveries of one endpoint, oldest first.
        Index(
            "ix_webhook_deliveries_due",
            "endpoint_id",
            "next_attempt_at",
            "id",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(Integer, nullable=False)
    endpoint_id: Mapped[int] = mapped_column(Integer, nullable=False)
    # The outbox event's key (or a ping's own id): the `webhook-id` header of every attempt.
    event_id: Mapped[uuid.UUID] = mapped_column(nullable=False)
    event_type: Mapped[str] = mapped_column(String(64), nullable=False)
    body: Mapped[str] = mapped_column(Text, nullable=False)  # exactly the bytes signed and sent
    status: Mapped[str] = mapped_column(String(16), nullable=False, server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    # Due time of the next attempt (now when written; null once succeeded or failed).
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_response_body: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class LeasedJob:
    """The columns of a background job that one run at a time holds under a lease
    (crm_domain.services.transfer.leases): its error, the lease, the claims, the heartbeat
    and when it was created, started and finished."""

    error: Mapped[str | None] = mapped_column(Text)
    lease: Mapped[uuid.UUID | None] = mapped_column()
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _now()
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class ImportJob(LeasedJob, Base):
    """A CSV import: the upload's settings, its progress and its outcome.

    `last_row` is the CSV row (the header being row 1) up to which every row is written;
    it is committed with each batch, so a re-run resumes right after it. `lease` names the
    run that holds the job: a run that finds another lease stops (it was taken over)."""

    __tablename__ = "import_jobs"
    __table_args__ = (
        Index("ix_import_jobs_org_id", "organization_id", "id"),
        Index(
            "ix_import_jobs_unfinished",
            "status",
            "heartbeat_at",
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    kind: Mapped[ImportKind] = mapped_column(_str_enum(ImportKind, "import_kind"), nullable=False)
    on_duplicate: Mapped[OnDuplicate] = mapped_column(
        _str_enum(OnDuplicate, "import_on_duplicate"), nullable=False
    )
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    status: Mapped[ImportStatus] = mapped_column(
        _str_enum(ImportStatus, "import_status"),
        nullable=False,
        server_default=ImportStatus.PENDING.value,
    )
    rows_total: Mapped[int] = mapped_column(Integer, nullable=False)
    rows_done: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_row: Mapped[int] = mapped_column(Integer, nullable=False, server_default="1")
    created_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    updated_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    skipped_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    error_rows: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")


class ImportFile(Base):
    """The uploaded CSV, kept in the database until its job is done (see README)."""

    __tablename__ = "import_files"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("import_jobs.id", ondelete="CASCADE"), primary_key=True
    )
    size: Mapped[int] = mapped_column(Integer, nullable=False)
    content: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


class ImportRowError(Base):
    """One problem of one CSV row (written with the batch that met it)."""

    __tablename__ = "import_row_errors"
    __table_args__ = (Index("ix_import_row_errors_job_row", "job_id", "row", "id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[int] = mapped_column(
        ForeignKey("import_jobs.id", ondelete="CASCADE"), nullable=False
    )
    row: Mapped[int] = mapped_column(Integer, nullable=False)
    field: Mapped[str] = mapped_column(String(64), nullable=False)
    code: Mapped[str] = mapped_column(String(64), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class ApiKey(Base):
    """A personal access token: acts as its user in one organization with the role the user
    holds there at the time of each request (never more); a `read` key only reads.

    The key is `crm_<lookup>_<secret>` (crm_domain.services.records.api_keys); only the SHA-256
    of the whole key is stored, found by `lookup` and compared in constant time. A key lives
    as long as its user's membership: removing the member (or deleting the user or the
    organization) deletes their keys (foreign key, ON DELETE CASCADE)."""

    __tablename__ = "api_keys"
    __table_args__ = (
        ForeignKeyConstraint(
            ["organization_id", "user_id"],
            ["organization_members.organization_id", "organization_members.user_id"],
            ondelete="CASCADE",
            name="fk_api_keys_membership",
        ),
        Index("ix_api_keys_org_user_id", "organization_id", "user_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(Integer, nullable=False)
    user_id: Mapped[int] = mapped_column(Integer, nullable=False)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    scope: Mapped[ApiKeyScope] = mapped_column(
        _str_enum(ApiKeyScope, "api_key_scope"), nullable=False
    )
    # The key's public part (also shown in lists as `crm_<lookup>`): finds the row.
    lookup: Mapped[str] = mapped_column(String(16), nullable=False, unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64), nullable=False)  # SHA-256, hex
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Written at most once a minute per key (crm_api.key_auth), never once per request.
    last_used_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    """The first answer to a write sent with an `Idempotency-Key`, for replaying it to the same
    caller (user or API key, in the same organization) for IDEMPOTENCY_KEY_HOURS.

    Inserted first in the write's own transaction and given the answer right before that
    transaction commits (crm_domain.idempotency): the row exists exactly when the change does,
    and a concurrent request with the same key waits on the row's unique index entry until
    the first one commits or rolls back. Purged by beat once expired."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        UniqueConstraint("organization_id", "user_id", "api_key_id", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The caller: 0 for a route outside any organization, 0 for a login token (no key). No
    # foreign keys: the rows are a short-lived record of answers, gone within a day.
    organization_id: Mapped[int] = mapped_column(Integer, nullable=False)
    user_id: Mapped[int] = mapped_column(Integer, nullable=False)
    api_key_id: Mapped[int] = mapped_column(Integer, nullable=False)
    key: Mapped[str] = mapped_column(String(255), nullable=False)
    # SHA-256 (hex) of the method, path, query and body: the same key with another request
    # is refused.
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    # The answer (set before the commit that also commits the change).
    status: Mapped[int | None] = mapped_column(Integer)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)


class BulkAction(LeasedJob, Base):
    """A bulk action (update or delete many contacts, deals or tasks): what to do, its
    progress and its outcome (crm_domain.services.transfer.bulk_actions).

    Its target ids are resolved once, when it is created, into `bulk_action_items`; a run
    works through them in id order, and each batch commits its records' changes, their errors
    and `last_record_id` together, so a run that stops anywhere resumes after the last
    committed batch and touches no record twice. `lease` names the run that holds it."""

    __tablename__ = "bulk_actions"
    __table_args__ = (
        Index("ix_bulk_actions_org_id", "organization_id", "id"),
        Index(
            "ix_bulk_actions_unfinished",
            "status",
            "heartbeat_at",
            postgresql_where=text("status IN ('pending', 'running')"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    api_key_id: Mapped[int | None] = mapped_column(Integer)  # the key the request came with
    # Plain strings (no CHECK): a new action (restore) is a line in the registry, no migration.
    entity: Mapped[str] = mapped_column(String(32), nullable=False)
    action: Mapped[str] = mapped_column(String(32), nullable=False)
    changes: Mapped[dict[str, Any]] = mapped_column(JSONB, nullable=False)  # as sent
    filter: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # as sent (None: ids)
    status: Mapped[BulkActionStatus] = mapped_column(
        _str_enum(BulkActionStatus, "bulk_action_status"),
        nullable=False,
        server_default=BulkActionStatus.PENDING.value,
    )
    total: Mapped[int] = mapped_column(Integer, nullable=False)
    done: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    succeeded: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    last_record_id: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, nullable=False, server_default=text("false")
    )


class BulkActionItem(Base):
    """A record a bulk action has yet to do (dropped when it finishes)."""

    __tablename__ = "bulk_action_items"

    bulk_action_id: Mapped[int] = mapped_column(
        ForeignKey("bulk_actions.id", ondelete="CASCADE"), primary_key=True
    )
    record_id: Mapped[int] = mapped_column(Integer, primary_key=True)


class BulkActionError(Base):
    """Why a bulk action left one record unchanged (the single PATCH/DELETE's error)."""

    __tablename__ = "bulk_action_errors"

    bulk_action_id: Mapped[int] = mapped_column(
        ForeignKey("bulk_actions.id", ondelete="CASCADE"), primary_key=True
    )
    record_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    code: Mapped[str] = mapped_column(String(64), nullable=False)
    message: Mapped[str] = mapped_column(Text, nullable=False)


class AuditEntry(Base):
    """One change to an organization's data, written in the change's own transaction
    (crm_domain.audit): who (a user, with the API key they sent, or the system: both None),
    in which request, what (`action`, the entity) and `changes` ({field: [old, new]}, never
    a secret). Purged after AUDIT_RETENTION_DAYS by beat.

    `xid` is the writing transaction's id, given by the database at the INSERT: the change
    feed (crm_domain.services.auditing.feed) orders by (xid, id) and serves an entry only once
    every transaction with a smaller id has ended, so it never skips one that commits late."""

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_org_id", "organization_id", "id"),
        Index("ix_audit_entries_org_xid", "organization_id", "xid", "id"),
        Index("ix_audit_entries_org_entity", "organization_id", "entity_type", "entity_id", "id"),
        # Retention deletes by age: a BRIN index (rows arrive in time order) costs next to
        # nothing per INSERT; autosummarize: a filled block range is summarized at once (an
        # unsummarized one is read whole by every purge).
        Index(
            "ix_audit_entries_occurred_at",
            "occurred_at",
            postgresql_using="brin",
            postgresql_with={"autosummarize": "on"},
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    xid: Mapped[int] = mapped_column(
        BigInteger, server_default=text("(pg_current_xact_id()::text)::bigint"), nullable=False
    )
    occurred_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), nullable=False
    )
    # No foreign keys: the log outlives the users and keys it names.
    actor_user_id: Mapped[int | None] = mapped_column(Integer)
    actor_api_key_id: Mapped[int | None] = mapped_column(Integer)
    request_id: Mapped[str | None] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(32), nullable=False)
    entity_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    changes: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb"), nullable=False
    )


class CustomFieldDefinition(Base):
    """A custom field of an organization's contacts, deals or tasks. `key` and `type` never
    change; a deleted definition (`deleted_at`) hides its values at once and keeps its key
    taken until the worker has purged them (then the row goes)."""

    __tablename__ = "custom_field_definitions"
    __table_args__ = (
        UniqueConstraint("organization_id", "entity", "key"),
        Index(
            "ix_custom_field_definitions_deleted",
            "deleted_at",
            postgresql_where=text("deleted_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    entity: Mapped[str] = mapped_column(String(16), nullable=False)
    key: Mapped[str] = mapped_column(String(40), nullable=False)
    label: Mapped[str] = mapped_column(String(255), nullable=False)
    type: Mapped[str] = mapped_column(String(32), nullable=False)
    required: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default=text("false"))
    description: Mapped[str | None] = mapped_column(Text)
    # Select types: [{"value", "label", "archived"}], in display order.
    options: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, nullable=False, server_default=text("'[]'::jsonb")
    )
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
