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
    Date,
    DateTime,
    Enum,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base
from .enums import ActivityType, DealStage, DealStatus, Role

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

    Only `current_jti` may be refreshed; presenting an older one is reuse and revokes
    the whole family. Access tokens carry the session id and die with it."""

    __tablename__ = "auth_sessions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    current_jti: Mapped[str] = mapped_column(String(36), nullable=False)
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_reason: Mapped[str | None] = mapped_column(String(32))


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (
        UniqueConstraint("id", "organization_id"),
        Index("ix_contacts_org_id", "organization_id", "id"),
        Index("ix_contacts_org_owner_id", "organization_id", "owner_id", "id"),
        # Trigram indexes for `search` (name/email ILIKE) are created by migration 0003 where
        # the server has pg_trgm.
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    name: Mapped[str] = mapped_column(String(255), nullable=False)
    email: Mapped[str | None] = mapped_column(String(320))
    phone: Mapped[str | None] = mapped_column(String(50))
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Deal(Base):
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
    created_at: Mapped[dt.datetime] = _now()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now(), nullable=False
    )


class Task(Base):
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
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
