"""Contacts of an organization."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, exists, func, or_, select
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...errors import Conflict
from ...models import Contact, Deal
from ...pagination import Ordering, Page, PageRequest, paginate
from .._common import Precondition, get_in_org
from ..delivery import events
from . import organizations, trash
from .custom_fields import apply_custom_fields, present, update_with_custom_fields
from .custom_queries import CustomQuery, narrow

ORDERING = Ordering("id", Contact.id, Contact.id, descending=True)


def list_contacts(
    session: Session,
    actor: Actor,
    request: PageRequest,
    *,
    search: str | None = None,
    owner_id: int | None = None,
    custom: CustomQuery | None = None,
) -> Page[Contact]:
    stmt = filtered(actor, search=search, owner_id=owner_id)
    stmt, ordering = narrow(session, actor, "contact", Contact, stmt, ORDERING, custom)
    page = paginate(session, stmt, request, ordering)
    present(session, actor.organization_id, "contact", page.items)
    return page


def filtered(
    actor: Actor, *, search: str | None = None, owner_id: int | None = None
) -> Select[Contact]:
    """The contacts a list (or an export) with these filters shows, not yet ordered."""
    stmt = select(Contact).where(Contact.organization_id == actor.organization_id)
    if owner_id is not None:
        rules.ensure_can_filter_by_owner(actor.role)
        stmt = stmt.where(Contact.owner_id == owner_id)
    if search:
        stmt = stmt.where(matching(search))
    return stmt


def matching(search: str) -> ColumnElement[bool]:
    """Name or e-mail contains `search`, ignoring case (PostgreSQL's lower() on both sides).

    Read from `search_text` (lower(name), a line break, lower(email), kept by PostgreSQL):
    one LIKE per row, which its trigram index can also serve. A term without a line break
    cannot match across the two, so that is the same as matching each; a term with one is
    matched against each column."""
    if "\n" in search:
        return or_(
            Contact.name.icontains(search, autoescape=True),
            Contact.email.icontains(search, autoescape=True),
        )
    escaped = search.replace("/", "//").replace("%", "/%").replace("_", "/_")
    return Contact.search_text.like(func.lower(f"%{escaped}%"), escape="/")


def get_contact(
    session: Session, actor: Actor, contact_id: int, *, for_update: bool = False
) -> Contact:
    return get_in_org(
        session, Contact, actor.organization_id, contact_id, name="contact", for_update=for_update
    )


def create_contact(
    session: Session,
    actor: Actor,
    *,
    name: str,
    email: str | None = None,
    phone: str | None = None,
    owner_id: int | None = None,
    custom_fields: dict[str, Any] | None = None,
) -> Contact:
    owner = actor.user_id if owner_id is None else owner_id
    organizations.ensure_assignable_owner(session, actor, owner)
    contact = Contact(
        organization_id=actor.organization_id, owner_id=owner, name=name, email=email, phone=phone
    )
    apply_custom_fields(session, actor, "contact", contact, custom_fields, creating=True)
    session.add(contact)
    session.flush()
    events.record_created(session, "contact", contact)
    return contact


def update_contact(
    session: Session,
    actor: Actor,
    contact_id: int,
    changes: dict[str, Any],
    precondition: Precondition | None = None,
) -> Contact:
    contact = get_contact(session, actor, contact_id, for_update=True)
    rules.ensure_can_modify(
        actor.role, owner_id=contact.owner_id, user_id=actor.user_id, what="contacts"
    )
    if precondition:
        precondition(contact)
    new_owner = changes.get("owner_id")
    if new_owner is not None and new_owner != contact.owner_id:
        organizations.ensure_assignable_owner(session, actor, new_owner)
    changed = update_with_custom_fields(session, actor, "contact", contact, changes)
    if changed:
        session.flush()
        events.record_updated(session, "contact", contact, changed)
    return contact


def delete_contact(
    session: Session, actor: Actor, contact_id: int, precondition: Precondition | None = None
) -> None:
    contact = get_contact(session, actor, contact_id, for_update=True)
    rules.ensure_can_modify(
        actor.role, owner_id=contact.owner_id, user_id=actor.user_id, what="contacts"
    )
    if precondition:
        precondition(contact)
    live_deal = (Deal.contact_id == contact.id) & Deal.deleted_at.is_(None)  # trashed ones stay
    if session.scalar(select(exists().where(live_deal))):
        raise Conflict(
            "Cannot delete a contact with existing deals",
            code="CONTACT_HAS_DEALS",
            details={"contact_id": contact.id},
        )
    events.record_deleted(session, "contact", contact)
    trash.put_in_trash(session, actor, "contact", contact)
