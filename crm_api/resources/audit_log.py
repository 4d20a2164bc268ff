"""The audit log (newest first, filtered, CSV) and the change feed (oldest first, exactly
once) of the organization: owners and admins only."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from flask import current_app
from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.services.auditing import feed, log
from crm_domain.services.transfer.audit_export import audit_log_export

from ..exports import ExportArgs, csv_download, csv_response_doc
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import Schema, line_field, query_id_field

blp = Blueprint(
    "audit_log",
    __name__,
    url_prefix="",
    description=(
        "Who changed what: one entry per change to the organization's data, written with the "
        "change. The audit log reads it newest first; the change feed (`/events`) oldest first, "
        "for sync clients: every committed entry exactly once, in a stable order. Owner and "
        "admin only (the log shows every member's changes)."
    ),
)

ENTRY_EXAMPLE = {
    "id": 4711,
    "occurred_at": "2026-03-02T09:15:00.123456+00:00",
    "actor": {"type": "api_key", "user_id": 1, "api_key_id": 4},
    "request_id": "6f1c2a7e9b3d4c5a",
    "action": "deal.updated",
    "entity_type": "deal",
    "entity_id": 42,
    "changes": {"amount": ["1000.00", "1500.00"], "stage": ["lead", "proposal"]},
}


def _secret_key() -> str:
    return str(current_app.extensions["crm_settings"].secret_key)


class ActorSchema(Schema):
    type = fields.String(
        dump_only=True,
        metadata={"enum": ["user", "api_key", "system"], "description": "system: workers, beat"},
    )
    user_id = fields.Integer(dump_only=True, allow_none=True)
    api_key_id = fields.Integer(
        dump_only=True, allow_none=True, metadata={"description": "the key the user sent"}
    )


class AuditEntrySchema(Schema):
    id = fields.Integer(dump_only=True)
    occurred_at = fields.DateTime(dump_only=True)
    actor = fields.Nested(ActorSchema, dump_only=True)
    request_id = fields.String(dump_only=True, allow_none=True)
    action = fields.String(dump_only=True, metadata={"example": "deal.updated"})
    entity_type = fields.String(dump_only=True, metadata={"example": "deal"})
    entity_id = fields.Integer(dump_only=True)
    changes = fields.Dict(
        dump_only=True,
        metadata={
            "description": "{field: [old, new]}; passwords, secrets, tokens and keys never appear"
        },
    )

    @ma.pre_dump
    def _with_actor(self, entry: Any, **_: Any) -> dict[str, Any]:
        names = ("id", "occurred_at", "request_id", "action", "entity_type", "entity_id")
        return {
            **{name: getattr(entry, name) for name in names},
            "changes": entry.changes,
            "actor": {
                "type": log.actor_type(entry),
                "user_id": entry.actor_user_id,
                "api_key_id": entry.actor_api_key_id,
            },
        }


class AuditLogFilterArgs(ma.Schema):
    entity_type = line_field(32, min_len=1, metadata={"example": "deal"})
    entity_id = query_id_field()
    actor = query_id_field(
        attribute="actor_user_id", metadata={"description": "the acting user's id"}
    )
    action = line_field(64, min_len=1, metadata={"example": "deal.updated"})
    since = fields.AwareDateTime(metadata={"description": "occurred at or after"})
    until = fields.AwareDateTime(metadata={"description": "occurred before"})

    @ma.validates_schema
    def _window(self, data: dict[str, Any], **_: Any) -> None:
        if "since" in data and "until" in data and data["since"] >= data["until"]:
            raise ma.ValidationError("must be after since", "until")


class AuditLogArgs(AuditLogFilterArgs):
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))
    cursor = fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={"description": "next_cursor of the previous page"},
    )


class AuditLogExportArgs(AuditLogFilterArgs, ExportArgs):
    pass


class AuditLogPageSchema(ma.Schema):
    items = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_cursor = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "pass as `cursor` for older entries; null at the end"},
    )


class FeedArgs(ma.Schema):
    after = fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={"description": "next_cursor of the previous poll; left out: from the start"},
    )
    limit = fields.Integer(
        load_default=feed.DEFAULT_LIMIT, validate=validate.Range(min=1, max=feed.MAX_LIMIT)
    )


class FeedPageSchema(ma.Schema):
    items = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next_cursor = fields.String(
        required=True,
        metadata={"description": "pass as `after` on the next poll (always given)"},
    )
    has_more = fields.Boolean(
        required=True,
        metadata={"description": "more entries are ready: poll again at once, not after a pause"},
    )


@blp.route("/audit-log")
class AuditLog(MethodView):
    @blp.tenant_required
    @blp.arguments(AuditLogArgs, location="query")
    @blp.response(200, AuditLogPageSchema, example={"items": [ENTRY_EXAMPLE], "next_cursor": None})
    def get(self, args: dict[str, Any]) -> Any:
        """The organization's audit log, newest first (owner and admin)

        Filters combine (AND). `actor` is a user id: their changes, by login or API key.
        Entries are kept AUDIT_RETENTION_DAYS (365)."""
        limit, cursor = args.pop("limit"), args.pop("cursor", None)
        with transaction() as session:
            return log.list_entries(
                session, current_actor(), _secret_key(), limit=limit, cursor=cursor, **args
            )


@blp.route("/audit-log/export.csv")
class AuditLogExport(MethodView):
    @blp.tenant_required
    @blp.arguments(AuditLogExportArgs, location="query")
    @blp.doc(
        responses=csv_response_doc(
            "id,occurred_at,actor_type,actor_user_id,actor_api_key_id,request_id,action,"
            "entity_type,entity_id,changes\r\n"
            '4711,2026-03-02T09:15:00.123456+00:00,user,1,,6f1c2a7e9b3d4c5a,deal.updated,deal,42,"'
            '{""amount"":[""1000.00"",""1500.00""]}"\r\n'
        )
    )
    def get(self, args: dict[str, Any]) -> Any:
        """Export the audit log as CSV (the log's filters and order; owner and admin)

        Streamed: any size, little memory. `changes` is a JSON object in one cell."""
        raw = args.pop("raw")
        return csv_download(audit_log_export(current_actor(), **args), "audit-log.csv", raw=raw)


@blp.route("/events")
class ChangeFeed(MethodView):
    @blp.tenant_required
    @blp.arguments(FeedArgs, location="query")
    @blp.response(
        200,
        FeedPageSchema,
        example={"items": [ENTRY_EXAMPLE], "next_cursor": "WyJmZWVkIiwx...", "has_more": False},
    )
    def get(self, args: dict[str, Any]) -> Any:
        """The change feed: the audit log oldest first, each entry exactly once (owner and admin)

        Poll with the `next_cursor` of the previous answer as `after`: every committed change
        comes exactly once, in a stable order, however transactions interleave (an entry
        appears once every transaction that began writing before it has ended, usually
        within milliseconds). A cursor from another organization, or altered, is 400
        INVALID_CURSOR; one given before the database was restored or replaced, 400
        CURSOR_STALE (start again without `after`). Entries older than AUDIT_RETENTION_DAYS
        are gone from the feed too."""
        with transaction() as session:
            return feed.read(
                session,
                current_actor(),
                _secret_key(),
                after=args.get("after"),
                limit=args["limit"],
            )
