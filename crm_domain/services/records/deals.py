"""Deals: creation, listing with filters, updates with the stage/status rules."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...enums import ActivityType, DealStage, DealStatus
from ...models import Deal
from ...pagination import Ordering, Page, PageRequest, paginate
from ...rules import DEFAULT_AMOUNT, DEFAULT_CURRENCY
from .._common import Precondition, ensure_in_org, get_in_org
from ..delivery import events
from . import contacts, organizations, timeline, trash
from .custom_fields import apply_custom_fields, present, update_with_custom_fields
from .custom_queries import CustomQuery, narrow

# Changes that go to the timeline: {"old_<field>": ..., "new_<field>": ...}.
TIMELINE_FIELDS = (
    ("status", ActivityType.STATUS_CHANGED),
    ("stage", ActivityType.STAGE_CHANGED),
)
ORDERABLE = {"created_at": Deal.created_at, "amount": Deal.amount, "updated_at": Deal.updated_at}


def list_deals(
    session: Session,
    actor: Actor,
    request: PageRequest,
    custom: CustomQuery | None = None,
    **filters: Any,
) -> Page[Deal]:
    """One page of deals; `filters` are those of `filtered`, `custom` by custom field."""
    stmt, ordering = filtered(actor, **filters)
    stmt, ordering = narrow(session, actor, "deal", Deal, stmt, ordering, custom)
    page = paginate(session, stmt, request, ordering)
    present(session, actor.organization_id, "deal", page.items)
    return page


def filtered(
    actor: Actor,
    *,
    statuses: Sequence[DealStatus] = (),
    stage: DealStage | None = None,
    min_amount: Decimal | None = None,
    max_amount: Decimal | None = None,
    owner_id: int | None = None,
    order_by: str = "created_at",
    order: str = "desc",
) -> tuple[Select[Deal], Ordering]:
    """The deals a list (or an export) with these filters shows (not yet ordered), and the
    order to show them in."""
    stmt = select(Deal).where(Deal.organization_id == actor.organization_id)
    if owner_id is not None:
        rules.ensure_can_filter_by_owner(actor.role)
        stmt = stmt.where(Deal.owner_id == owner_id)
    if statuses:
        stmt = stmt.where(Deal.status.in_(list(statuses)))
    if stage is not None:
        stmt = stmt.where(Deal.stage == stage)
    if min_amount is not None:
        stmt = stmt.where(Deal.amount >= min_amount)
    if max_amount is not None:
        stmt = stmt.where(Deal.amount <= max_amount)
    return stmt, Ordering(order_by, ORDERABLE[order_by], Deal.id, descending=order != "asc")


def get_deal(session: Session, actor: Actor, deal_id: int, *, for_update: bool = False) -> Deal:
    return get_in_org(
        session, Deal, actor.organization_id, deal_id, name="deal", for_update=for_update
    )


def page_of_deal(
    session: Session,
    actor: Actor,
    deal_id: int,
    stmt: Select[Any],
    request: PageRequest,
    ordering: Ordering,
) -> Page[Any]:
    """A page of rows under a deal (its tasks, its timeline); `stmt` filters them by the deal
    and the organization. A page with rows proves the deal is in the organization; an empty
    one is a 404 when the deal is not, rather than an empty list (one query less per page)."""
    page = paginate(session, stmt, request, ordering)
    if not page.items:
        ensure_in_org(session, Deal, actor.organization_id, deal_id, name="deal")
    return page


def create_deal(
    session: Session,
    actor: Actor,
    *,
    contact_id: int,
    title: str,
    amount: Decimal = DEFAULT_AMOUNT,
    currency: str = DEFAULT_CURRENCY,
    owner_id: int | None = None,
    custom_fields: dict[str, Any] | None = None,
) -> Deal:
    # 404 for another org's contact; locked, so a concurrent DELETE (to the trash) either
    # waits for this deal and refuses (CONTACT_HAS_DEALS) or goes first and this is a 404.
    contacts.get_contact(session, actor, contact_id, for_update=True)
    owner = actor.user_id if owner_id is None else owner_id
    organizations.ensure_assignable_owner(session, actor, owner)
    deal = Deal(
        organization_id=actor.organization_id,
        contact_id=contact_id,
        owner_id=owner,
        title=title,
        amount=amount,
        currency=currency,
        status=DealStatus.NEW,
        stage=DealStage.QUALIFICATION,
    )
    apply_custom_fields(session, actor, "deal", deal, custom_fields, creating=True)
    session.add(deal)
    session.flush()
    events.record_created(session, "deal", deal)
    return deal


def update_deal(
    session: Session,
    actor: Actor,
    deal_id: int,
    changes: dict[str, Any],
    precondition: Precondition | None = None,
) -> Deal:
    """Apply a partial update. Check order: 404, 403 (ownership), precondition, 403 (owner
    assignment, rollback), 400 (won amount). Status/stage changes go to the timeline."""
    deal = get_deal(session, actor, deal_id, for_update=True)
    rules.ensure_can_modify(actor.role, owner_id=deal.owner_id, user_id=actor.user_id, what="deals")
    if precondition:
        precondition(deal)
    new_owner = changes.get("owner_id")
    if new_owner is not None and new_owner != deal.owner_id:
        organizations.ensure_assignable_owner(session, actor, new_owner)
    if "contact_id" in changes and changes["contact_id"] != deal.contact_id:
        contacts.get_contact(session, actor, changes["contact_id"], for_update=True)
    if "stage" in changes:
        rules.ensure_stage_transition(actor.role, deal.stage, changes["stage"])
    status = changes.get("status", deal.status)
    amount = changes.get("amount", deal.amount)
    rules.ensure_won_amount(status, amount)

    changed = update_with_custom_fields(session, actor, "deal", deal, changes)
    if not changed:
        return deal
    for field, activity_type in TIMELINE_FIELDS:
        if field in changed:
            old, new = changed[field]
            timeline.record_activity(
                session,
                organization_id=deal.organization_id,
                deal_id=deal.id,
                author_id=actor.user_id,
                type=activity_type,
                payload={f"old_{field}": old.value, f"new_{field}": new.value},
            )
    session.flush()
    events.record_updated(session, "deal", deal, changed)
    return deal


def delete_deal(
    session: Session, actor: Actor, deal_id: int, precondition: Precondition | None = None
) -> None:
    deal = get_deal(session, actor, deal_id, for_update=True)
    rules.ensure_can_modify(actor.role, owner_id=deal.owner_id, user_id=actor.user_id, what="deals")
    if precondition:
        precondition(deal)
    events.record_deleted(session, "deal", deal)
    trash.put_in_trash(session, actor, "deal", deal)
