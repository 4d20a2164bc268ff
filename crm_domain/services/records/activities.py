"""The deal timeline. Only comments are written directly; the rest comes via the outbox."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...context import Actor
from ...enums import ActivityType
from ...errors import ValidationFailed
from ...models import Activity, Deal
from ...pagination import Ordering, Page, PageRequest
from ..delivery import events
from . import deals

MAX_COMMENT_LENGTH = 10_000
ORDERING = Ordering("created_at", Activity.created_at, Activity.id, descending=True)


def list_activities(
    session: Session, actor: Actor, deal_id: int, request: PageRequest
) -> Page[Activity]:
    stmt = select(Activity).where(
        Activity.deal_id == deal_id,
        Activity.organization_id == actor.organization_id,
        # No page for a deal in the trash (computed once: the condition names no row).
        select(Deal.id).where(Deal.id == deal_id, Deal.deleted_at.is_(None)).exists(),
    )
    return deals.page_of_deal(session, actor, deal_id, stmt, request, ORDERING)


def add_comment(
    session: Session, actor: Actor, deal_id: int, *, type: str, payload: dict[str, Any]
) -> Activity:
    """Any member may comment on any deal of the organization (a comment changes no deal)."""
    deal = deals.get_deal(session, actor, deal_id)
    if type != ActivityType.COMMENT.value:
        raise ValidationFailed(
            "Only comment activities can be created through the API",
            code="ACTIVITY_TYPE_NOT_ALLOWED",
            details={"type": type, "allowed": [ActivityType.COMMENT.value]},
        )
    text = payload.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ValidationFailed(
            "A comment needs a non-empty payload.text",
            code="VALIDATION_ERROR",
            details={"errors": {"payload": {"text": ["Must be a non-empty string."]}}},
        )
    if len(text) > MAX_COMMENT_LENGTH:
        raise ValidationFailed(
            f"A comment is at most {MAX_COMMENT_LENGTH} characters",
            code="VALIDATION_ERROR",
            details={"errors": {"payload": {"text": ["Too long."]}}},
        )
    activity = Activity(
        organization_id=actor.organization_id,
        deal_id=deal.id,
        author_id=actor.user_id,
        type=ActivityType.COMMENT,
        payload={"text": text},
    )
    session.add(activity)
    session.flush()
    events.record_created(session, "activity", activity)
    return activity
