"""Likely duplicates of one contact in its organization: the same e-mail (ignoring case), the
same phone digits, or a similar name. Each reason is one indexed lookup (the lower(email)
index, the phone-digits index, the trigram index on `search_text`), so the answer costs the
same on 100 or 100,000 contacts (the trigram index holds the organization, migration 0019).
Trashed (and merged) contacts are never candidates."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, func, literal, select, text
from sqlalchemy.orm import Session

from ...context import Actor
from ...models import Contact
from . import contacts

EMAIL, PHONE, NAME = "email", "phone", "name"
# The score of an exact match per reason; a similar name scores its word similarity (0-1).
SCORES = {EMAIL: 1.0, PHONE: 0.9}
MIN_PHONE_DIGITS = 6  # fewer digits (an extension, "112") match too much to mean anything
LIMIT = 20  # candidates per reason; the answer has at most 3 * LIMIT, best first


@dataclass
class Duplicate:
    contact: Contact
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)

    def add(self, reason: str, score: float) -> None:
        self.reasons.append(reason)
        self.score = max(self.score, round(score, 3))


def phone_digits(phone: str | None) -> str:
    return re.sub(r"\D", "", phone or "")


def find_duplicates(session: Session, actor: Actor, contact_id: int) -> list[Duplicate]:
    """The likely duplicates of one contact (404 if it is not in the organization), best
    first (score, then newest)."""
    contact = contacts.get_contact(session, actor, contact_id)
    others = select(Contact).where(
        Contact.organization_id == actor.organization_id, Contact.id != contact.id
    )
    found: dict[int, Duplicate] = {}

    def collect(reason: str, rows: Any) -> None:
        for row in rows:
            other, score = (row, SCORES[reason]) if isinstance(row, Contact) else row
            found.setdefault(other.id, Duplicate(other)).add(reason, float(score))

    if contact.email:
        same_email = func.lower(Contact.email) == contact.email.lower()
        collect(EMAIL, session.scalars(others.where(same_email).limit(LIMIT)))
    digits = phone_digits(contact.phone)
    if len(digits) >= MIN_PHONE_DIGITS:
        phone = func.regexp_replace(Contact.phone, text(r"'\D'"), text("''"), text("'g'"))
        same_phone = Contact.phone.is_not(None) & (phone == digits)
        collect(PHONE, session.scalars(others.where(same_phone).limit(LIMIT)))
    collect(NAME, _similar_names(session, others, contact.name.lower()))
    return sorted(found.values(), key=lambda d: (-d.score, -d.contact.id))


def _similar_names(session: Session, others: Any, name: str) -> Any:
    """(contact, score) of names like `name`: pg_trgm's word similarity against search_text
    (at least pg_trgm.word_similarity_threshold, 0.6 by default: `<%`, which the trigram
    index serves) where the server has pg_trgm (migrations 0010 and 0019), else the same
    name ignoring case.

    The same test again through `contact_name_similar` (migration 0019: `<%` declared as
    costly as it is) keeps the planner on the index: priced at a built-in operator's cost,
    `<%` on every contact looks cheaper than the index to it once its statistics say many
    contacts share the name (a sequential scan of 100,000 contacts, 400 ms)."""
    if not _has_similarity(session):
        same = func.lower(Contact.name) == name
        return [(c, 1.0) for c in session.scalars(others.where(same).limit(LIMIT))]
    return session.execute(similar_names_query(others, name)).all()


def similar_names_query(others: Select[Any], name: str) -> Select[Any]:
    """The statement of `_similar_names` where the server has pg_trgm: `others` (contacts)
    with a similar name, (contact, score) best first."""
    score = func.word_similarity(literal(name), Contact.search_text)
    return (
        others.add_columns(score)
        .where(
            literal(name).op("<%")(Contact.search_text),
            func.contact_name_similar(literal(name), Contact.search_text),
        )
        .order_by(score.desc(), Contact.id.desc())
        .limit(LIMIT)
    )


def _has_similarity(session: Session) -> bool:
    """Whether migration 0019 found pg_trgm (and made contact_name_similar)."""
    found = session.scalar(text("SELECT to_regprocedure('contact_name_similar(text, text)')"))
    return found is not None
