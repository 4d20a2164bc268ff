"""Bulk actions: update or delete many contacts, deals or tasks (202, run by a worker), progress,
per-record errors, cancel, dry run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import jsonify, url_for
from flask.views import MethodView
from marshmallow import Schema as BaseSchema
from marshmallow import ValidationError
from sqlalchemy import Select
from sqlalchemy.orm import Session

from crm_domain.context import Actor
from crm_domain.errors import ValidationFailed
from crm_domain.models import Contact, Deal, Task
from crm_domain.pagination import Ordering
from crm_domain.services.records import contacts as contacts_service
from crm_domain.services.records import deals as deals_service
from crm_domain.services.records import tasks as tasks_service
from crm_domain.services.records.custom_queries import narrow
from crm_domain.services.transfer import bulk_actions as service

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, page_example, page_of
from . import contacts, deals, tasks
from .bulk_action_schemas import (
    EXAMPLE_ERROR,
    EXAMPLE_JOB,
    PENDING,
    BulkActionArgs,
    BulkActionCreateSchema,
    BulkActionDetailSchema,
    BulkActionSchema,
    DryRunSchema,
    RecordErrorSchema,
)

blp = Blueprint(
    "bulk_actions",
    __name__,
    url_prefix="/bulk-actions",
    description="Update or delete many contacts, deals or tasks",
)


@dataclass(frozen=True)
class Selection:
    """How the list endpoint of an entity reads its filters (its query schema) and finds its
    records (its service's query, narrowed by the `cf.` filters): a bulk action's `filter`
    goes through both, so a filter the list gains works here too, and one the list refuses
    is refused here."""

    args: type[BaseSchema]
    entity: str
    model: Any
    query: Callable[[Actor, dict[str, Any]], tuple[Select[Any], Ordering]]


SELECTIONS = {
    "contact": Selection(
        contacts.ContactListArgs,
        "contact",
        Contact,
        lambda actor, args: (contacts_service.filtered(actor, **args), contacts_service.ORDERING),
    ),
    "deal": Selection(
        deals.DealListArgs,
        "deal",
        Deal,
        lambda actor, args: deals_service.filtered(actor, **deals.list_filters(args)),
    ),
    "task": Selection(
        tasks.TaskListArgs,
        "task",
        Task,
        lambda actor, args: (tasks_service.filtered(actor, **args), tasks_service.ORDERING),
    ),
}


def _refused(errors: Any) -> ValidationFailed:
    return ValidationFailed(
        "The filter is not one the list accepts", details={"errors": {"filter": errors}}
    )


def _target(session: Session, actor: Actor, data: dict[str, Any]) -> Select[Any] | list[int]:
    if "ids" in data:
        return list(data["ids"])
    selection = SELECTIONS[data["entity"]]
    try:
        args = selection.args(exclude=PageArgs.PAGE_FIELDS).load(data["filter"])
    except ValidationError as exc:
        raise _refused(exc.messages) from exc
    custom = args.pop("custom", None)
    stmt, ordering = selection.query(actor, args)
    try:
        stmt, _ = narrow(session, actor, selection.entity, selection.model, stmt, ordering, custom)
    except ValidationFailed as exc:
        raise _refused(exc.details.get("errors", {})) from exc
    return stmt


class _Detail:
    """A job with its first errors, for BulkActionDetailSchema."""

    def __init__(self, session: Any, job: Any) -> None:
        self.job = job
        self.errors = service.first_errors(session, job.id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.job, name)


@blp.route("")
class BulkActions(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(BulkActionSchema), example=page_example(EXAMPLE_JOB))
    def get(self, args: dict[str, Any]) -> Any:
        """The organization's bulk actions, newest first"""
        with transaction() as session:
            return service.list_jobs(session, current_actor(), PageArgs.page_request(args))

    @blp.tenant_required
    @blp.arguments(BulkActionArgs, location="query")
    @blp.arguments(
        BulkActionCreateSchema,
        example={
            "entity": "deal",
            "action": "update",
            "filter": {"status": ["in_progress"], "min_amount": "1000.00"},
            "changes": {"stage": "negotiation"},
        },
    )
    @blp.response(
        202,
        BulkActionSchema,
        example={**EXAMPLE_JOB, **PENDING},
        headers={"Location": {"schema": {"type": "string"}, "description": "the job"}},
    )
    @blp.alt_response(
        200, schema=DryRunSchema, description="dry_run=true: how many records it would touch"
    )
    def post(self, args: dict[str, Any], data: dict[str, Any]) -> Any:
        """Update or delete many records; a worker does it (poll GET /bulk-actions/{id}).

        Select the records by `ids` (at most 10,000; those not in the organization fail one
        by one with their 404 code) or by `filter`, the list endpoint's own query arguments
        as JSON (`GET /deals`: status, stage, min_amount, max_amount, owner_id; `GET
        /contacts`: search, owner_id; `GET /tasks`: deal_id, only_open, due_before,
        due_after; on each the custom fields' `cf.<key>` filters), matched now, at most
        10,000 (400 BULK_ACTION_TOO_MANY above: narrow it).
        A filter the list refuses is refused here (400; owner_id for a member: 403).
        `changes` (update only) are checked like the single PATCH's body (400).

        Each record goes through the single PATCH or DELETE with its rules: a record it
        refuses (a member's change to someone else's deal, won without an amount, a stage
        rollback by a member...) is left unchanged and listed in `errors` with the code the
        PATCH would answer; each change gets its own timeline entry and webhook event.
        Records are done in batches of 200, each committed with the progress: cancel stops
        before the next batch, and a worker that dies resumes after the last one."""
        actor = current_actor()
        with transaction() as session:
            target = _target(session, actor, data)
            if args["dry_run"]:
                request = service.Request(
                    entity=data["entity"], action=data["action"], changes=data["changes"]
                )
                matched = service.matching(session, actor, request, target)
                # A Response of its own: the 202's schema would drop `matched`.
                return jsonify(DryRunSchema().dump({**data, "matched": matched}))
            request = service.Request(
                entity=data["entity"],
                action=data["action"],
                changes=data["changes"],
                filter=data.get("filter"),
            )
            job = service.create(session, actor, request, target)
        location = url_for("bulk_actions.BulkActionById", bulk_action_id=job.id)
        return job, 202, {"Location": location}


@blp.route("/<int:bulk_action_id>")
class BulkActionById(MethodView):
    @blp.tenant_required
    @blp.response(
        200,
        BulkActionDetailSchema,
        example={
            **EXAMPLE_JOB,
            "errors_total": 9,
            "errors": [
                EXAMPLE_ERROR,
                {
                    "record_id": 4420,
                    "code": "WON_REQUIRES_POSITIVE_AMOUNT",
                    "message": "A won deal needs an amount greater than 0",
                },
            ],
        },
    )
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, bulk_action_id: int) -> Any:
        """A bulk action's status, progress and its first per-record errors"""
        with transaction() as session:
            return _Detail(session, service.get(session, current_actor(), bulk_action_id))


@blp.route("/<int:bulk_action_id>/errors")
class BulkActionErrors(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(RecordErrorSchema), example=page_example(EXAMPLE_ERROR))
    @blp.alt_response(404, description="Not found in this organization")
    def get(self, args: dict[str, Any], bulk_action_id: int) -> Any:
        """Every per-record error of a bulk action, by record id"""
        with transaction() as session:
            return service.error_page(
                session, current_actor(), bulk_action_id, PageArgs.page_request(args)
            )


@blp.route("/<int:bulk_action_id>/cancel")
class BulkActionCancel(MethodView):
    @blp.tenant_required
    @blp.response(200, BulkActionSchema, example={**EXAMPLE_JOB, "cancel_requested": True})
    @blp.alt_response(404, description="Not found in this organization")
    @blp.alt_response(409, description="The bulk action is done or failed")
    def post(self, bulk_action_id: int) -> Any:
        """Cancel a bulk action: a pending one at once, a running one before its next batch
        (the records done so far stay done; status becomes cancelled). Members may cancel
        only their own."""
        with transaction() as session:
            return service.cancel(session, current_actor(), bulk_action_id)
