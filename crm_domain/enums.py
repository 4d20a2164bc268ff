"""Enumerations shared by the domain, the API and the workers."""

from __future__ import annotations

import enum


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MANAGER = "manager"
    MEMBER = "member"


class DealStatus(enum.StrEnum):
    NEW = "new"
    IN_PROGRESS = "in_progress"
    WON = "won"
    LOST = "lost"


class DealStage(enum.StrEnum):
    QUALIFICATION = "qualification"
    PROPOSAL = "proposal"
    NEGOTIATION = "negotiation"
    CLOSED = "closed"

    @property
    def order(self) -> int:
        """1-based position of the stage in the funnel."""
        return STAGE_ORDER.index(self) + 1


STAGE_ORDER: tuple[DealStage, ...] = tuple(DealStage)


class ActivityType(enum.StrEnum):
    COMMENT = "comment"
    STATUS_CHANGED = "status_changed"
    STAGE_CHANGED = "stage_changed"
    TASK_CREATED = "task_created"
    TASK_REMINDER = "task_reminder"
    SYSTEM = "system"


class EmailStatus(enum.StrEnum):
    PENDING = "pending"
    SENT = "sent"
    SKIPPED = "skipped"  # nothing to send any more (e.g. the invitation was revoked)
    FAILED = "failed"  # refused for good, or out of attempts


class ImportKind(enum.StrEnum):
    CONTACTS = "contacts"
    DEALS = "deals"


class ImportStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class OnDuplicate(enum.StrEnum):
    """What an import does with a row whose e-mail an existing contact has (contacts), or
    whose contact and title a live deal has (deals)."""

    SKIP = "skip"
    UPDATE = "update"


class ApiKeyScope(enum.StrEnum):
    """What an API key may do: `read` answers GET/HEAD only, `write` everything its user may."""

    READ = "read"
    WRITE = "write"


class BulkActionStatus(enum.StrEnum):
    """A bulk action's life: pending -> running -> done | failed | cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
