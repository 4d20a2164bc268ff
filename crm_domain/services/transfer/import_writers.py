"""Writing one batch of validated CSV rows: the domain checks the API makes on a single write
(owner assignment, ownership, the deal's contact, a won deal's amount), applied to each row
with a few lookups per batch, then one multi-row INSERT (and one UPDATE executemany).

Every inserted row carries (import job, CSV row) under a unique index: a batch that is
written again inserts nothing twice. Rows that fail a check become RowProblems instead."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import String, Text, any_, bindparam, cast, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, distinct_on
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.orm import Session

from ... import rules
from ...context import Actor
from ...enums import DealStage, DealStatus, ImportKind, OnDuplicate
from ...errors import DomainError
from ...models import Contact, Deal, ImportJob
from .._common import not_found
from ..delivery import events, outbox
from ..records import organizations
from . import deal_matching
from .imports import BatchOutcome, RowProblem

# (CSV row number, the row as the API's schema loaded it)
LoadedRow = tuple[int, dict[str, Any]]


@dataclass
class Owners:
    """Who may own what an actor imports: the organization's members by e-mail."""

    actor: Actor
    by_email: dict[str, int]

    def resolve(self, email: str | None) -> int | None:
        """The owner an `owner_email` cell names (None when empty). Same rules and errors
        as `owner_id` in the API: members may name only themselves; an owner must belong
        to the organization."""
        if email is None:
            return None
        owner = self.by_email.get(email.lower())
        rules.ensure_can_assign_owner(
            self.actor.role, new_owner_id=owner or 0, user_id=self.actor.user_id
        )
        if owner is None:
            raise organizations.owner_not_found({"owner_email": email})
        return owner


def load_owners(session: Session, actor: Actor) -> Owners:
    return Owners(actor, organizations.member_ids_by_email(session, actor.organization_id))


@dataclass
class _Checks:
    """Collects the domain errors of one row under the CSV column they concern."""

    row: int
    problems: list[RowProblem] = field(default_factory=list)

    def run(self, column: str, check: Any, *args: Any) -> Any:
        try:
            return check(*args)
        except DomainError as exc:
            self.problems.append(RowProblem(self.row, column, exc.code, exc.message))
            return None


def _array(values: Sequence[Any], column: Any) -> Any:
    """One typed array parameter (for unnest / = ANY): a short statement, whatever the batch
    size, instead of one placeholder per value. Text goes as varchar without a length: a
    cast to the column's varchar(n) would cut a longer value to n characters without a
    word, where the INSERT into the column refuses it (the row becomes a row error)."""
    if isinstance(column.type, JSONB):  # JSON text each, cast by PostgreSQL (custom_fields)
        texts = [json.dumps(v) for v in values]
        return cast(bindparam(None, texts, type_=ARRAY(Text())), ARRAY(JSONB))
    element = String() if isinstance(column.type, String) else column.type  # Enum is a String
    return cast(bindparam(None, list(values)), ARRAY(element))


def _insert(session: Session, model: type[Contact] | type[Deal], rows: list[dict[str, Any]]) -> int:
    """One INSERT ... SELECT FROM unnest(one array per column); rows of this import already
    written (same job and row) are left alone. Returns how many rows were inserted."""
    if not rows:
        return 0
    table = model.__table__
    names = list(rows[0])
    arrays = [_array([r[n] for r in rows], table.c[n]) for n in names]  # type: ignore[attr-defined]
    source = func.unnest(*arrays).table_valued(*names).render_derived()
    stmt = (
        pg_insert(table)  # type: ignore[arg-type]
        .from_select(names, select(*source.c))
        .on_conflict_do_nothing(
            index_elements=["import_job_id", "import_row"],
            index_where=text("import_job_id IS NOT NULL"),
        )
        .returning(table.c.id)  # type: ignore[attr-defined]
    )
    return len(session.execute(stmt).all())


def write(
    session: Session,
    job: ImportJob,
    owners: Owners,
    header: Sequence[str],
    rows: Sequence[LoadedRow],
) -> BatchOutcome:
    if job.kind is ImportKind.CONTACTS:
        return _write_contacts(session, job, owners, header, rows)
    return _write_deals(session, job, owners, header, rows)


# --- contacts -------------------------------------------------------------------------------


def _existing_by_email(
    session: Session, organization_id: int, emails: set[str]
) -> dict[str, tuple[int, int]]:
    """{lower e-mail: (id, owner_id)} of the oldest contact with each e-mail."""
    if not emails:
        return {}
    lowered = func.lower(Contact.email)
    rows = session.execute(
        select(lowered, Contact.id, Contact.owner_id)
        .where(
            Contact.organization_id == organization_id,
            lowered == any_(_array(sorted(emails), Contact.__table__.c.email)),
        )
        .order_by(lowered, Contact.id)
        .ext(distinct_on(lowered))
    )
    return {email: (contact_id, owner_id) for email, contact_id, owner_id in rows}


def _write_contacts(
    session: Session,
    job: ImportJob,
    owners: Owners,
    header: Sequence[str],
    rows: Sequence[LoadedRow],
) -> BatchOutcome:
    """New e-mails are created; a known e-mail (case-insensitive, the oldest contact with it,
    or a row earlier in this batch) is skipped or updated as the job says. An update sets
    the columns the file has; an empty owner_email keeps the owner."""
    actor = owners.actor
    outcome = BatchOutcome()
    emails = {data["email"].lower() for _, data in rows if data.get("email")}
    existing = _existing_by_email(session, job.organization_id, emails)
    inserts: dict[object, dict[str, Any]] = {}  # by lower e-mail, or by row without one
    updates: dict[int, dict[str, Any]] = {}  # by contact id
    update_phone = "phone" in header
    for row, data in rows:
        email = data.get("email")
        key = email.lower() if email else None
        duplicate = key is not None and (key in existing or key in inserts)
        if duplicate and job.on_duplicate is OnDuplicate.SKIP:
            outcome.skipped += 1
            continue
        checks = _Checks(row)
        owner = checks.run("owner_email", owners.resolve, data.get("owner_email"))
        values = {
            "name": data["name"],
            "email": email,
            "custom_fields": data.get("custom_fields", {}),
        }
        if update_phone:
            values["phone"] = data.get("phone")
        if key in existing:
            contact_id, current_owner = existing[key]
            checks.run("email", _ensure_can_modify_contact, actor, current_owner)
            if not checks.problems:
                new_owner = owner or current_owner
                existing[key] = (contact_id, new_owner)
                updates[contact_id] = {**values, "id": contact_id, "owner_id": new_owner}
        elif key in inserts and not checks.problems:
            inserts[key].update(values, **({"owner_id": owner} if owner else {}))
        elif not checks.problems:
            inserts[key if key is not None else ("row", row)] = {
                "organization_id": job.organization_id,
                "owner_id": owner or actor.user_id,
                "phone": None,
                **values,
                "import_job_id": job.id,
                "import_row": row,
            }
            continue
        if checks.problems:
            outcome.problems += checks.problems
        else:
            outcome.updated += 1
    outcome.created = _insert(session, Contact, list(inserts.values()))
    if updates:
        table = Contact.__table__
        columns = ["name", "email", "owner_id"] + (["phone"] if update_phone else [])
        session.connection().execute(
            update(table)  # type: ignore[arg-type]
            .where(table.c.id == bindparam("b_id"), table.c.organization_id == job.organization_id)
            .values(
                {
                    **{c: bindparam(f"b_{c}") for c in columns},
                    "updated_at": func.now(),
                    # a row's custom fields merge into the contact's, key by key
                    "custom_fields": table.c.custom_fields.op("||")(
                        bindparam("b_custom_fields", type_=JSONB)
                    ),
                }
            ),
            [{f"b_{k}": v for k, v in values.items()} for values in updates.values()],
        )
    return outcome


def _ensure_can_modify_contact(actor: Actor, owner_id: int) -> None:
    rules.ensure_can_modify(actor.role, owner_id=owner_id, user_id=actor.user_id, what="contacts")


# --- deals ----------------------------------------------------------------------------------


def _contacts_for(
    session: Session, organization_id: int, rows: Sequence[LoadedRow]
) -> tuple[set[int], dict[str, int]]:
    """The batch's contact ids that exist in the organization, and {lower e-mail: id} of the
    oldest contact with each of its contact e-mails."""
    ids = {data["contact_id"] for _, data in rows if data.get("contact_id")}
    emails = {data["contact_email"].lower() for _, data in rows if data.get("contact_email")}
    found: set[int] = set()
    if ids:
        found = set(
            session.scalars(
                select(Contact.id).where(
                    Contact.organization_id == organization_id,
                    Contact.id == any_(_array(sorted(ids), Contact.__table__.c.id)),
                )
            )
        )
    by_email = {
        e: cid for e, (cid, _) in _existing_by_email(session, organization_id, emails).items()
    }
    return found, by_email


def _resolve_contact(data: dict[str, Any], ids: set[int], by_email: dict[str, int]) -> int:
    """contact_id when it names a contact of the organization, else contact_email: an export
    goes back into its own organization by id and into another one by e-mail."""
    contact_id = data.get("contact_id")
    if contact_id in ids:
        return int(contact_id)
    email = data.get("contact_email")
    if email and email.lower() in by_email:
        return by_email[email.lower()]
    raise not_found("contact")


def _write_deals(
    session: Session,
    job: ImportJob,
    owners: Owners,
    header: Sequence[str],
    rows: Sequence[LoadedRow],
) -> BatchOutcome:
    """New deals are created with the status and stage the row gives (new / qualification by
    default); a row matching a live deal (deal_matching: same contact and title) is skipped
    or updates it, as the job says, under the rules of a PATCH. One analytics refresh is
    asked for per batch."""
    outcome = BatchOutcome()
    actor = owners.actor
    ids, by_email = _contacts_for(session, job.organization_id, rows)
    resolved: list[tuple[int, dict[str, Any], _Checks, Any]] = []
    for row, data in rows:
        checks = _Checks(row)
        column = "contact_email" if data.get("contact_email") else "contact_id"
        resolved.append(
            (row, data, checks, checks.run(column, _resolve_contact, data, ids, by_email))
        )
    keys = {deal_matching.key(c, d["title"]) for _, d, _, c in resolved if c is not None}
    existing = deal_matching.existing(session, job.organization_id, keys)
    inserts: dict[object, dict[str, Any]] = {}  # by key
    updates: dict[int, dict[str, Any]] = {}  # by deal id
    for row, data, checks, contact in resolved:
        match_key = deal_matching.key(contact, data["title"]) if contact is not None else None
        duplicate = match_key is not None and (match_key in existing or match_key in inserts)
        if duplicate and job.on_duplicate is OnDuplicate.SKIP:
            outcome.skipped += 1
            continue
        owner = checks.run("owner_email", owners.resolve, data.get("owner_email"))
        if duplicate and not checks.problems:
            values = deal_matching.row_values(data, header, owner)
            if match_key in existing:
                match = existing[match_key]
                checks.run("title", deal_matching.check_update, actor, match, values)
                if not checks.problems:
                    deal_matching.apply(match, values)
                    deal_matching.combine(updates.setdefault(match.id, {}), values)
                    outcome.updated += 1
            else:
                pending = inserts[match_key]
                checks.run(
                    "amount",
                    rules.ensure_won_amount,
                    values.get("status", pending["status"]),
                    values.get("amount", pending["amount"]),
                )
                if not checks.problems:
                    deal_matching.combine(pending, values)
                    outcome.updated += 1
            outcome.problems += checks.problems
            continue
        status = data.get("status", DealStatus.NEW)
        amount = data.get("amount") or Decimal("0")
        checks.run("amount", rules.ensure_won_amount, status, amount)
        if checks.problems:
            outcome.problems += checks.problems
            continue
        inserts[match_key] = {
            "organization_id": job.organization_id,
            "contact_id": contact,
            "owner_id": owner or actor.user_id,
            "title": data["title"],
            "amount": amount,
            "currency": data.get("currency") or "USD",
            "status": status,
            "stage": data.get("stage", DealStage.QUALIFICATION),
            "custom_fields": data.get("custom_fields", {}),
            "import_job_id": job.id,
            "import_row": row,
        }
    outcome.created = _insert(session, Deal, list(inserts.values()))
    deal_matching.write_updates(session, job.organization_id, updates)
    if outcome.created or updates:
        outbox.record(
            session,
            job.organization_id,
            events.DEAL_CHANGED_TOPIC,
            {"import_id": job.id, "deals": outcome.created + len(updates)},
        )
    return outcome
