"""Duplicate contacts: finding them, merging them."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields, validate

from crm_domain.services.records import duplicates, merge

from ..extensions import Blueprint, current_actor, transaction
from ..schemas import Schema, id_field
from .contacts import ContactSchema

blp = Blueprint(
    "contact_merge",
    __name__,
    url_prefix="/contacts",
    description="Duplicate contacts: find and merge",
)

CONTACT_EXAMPLE = {
    "id": 12,
    "organization_id": 1,
    "owner_id": 2,
    "name": "John Doe",
    "email": "John.Doe@example.com",
    "phone": "+1 (555) 010-0100",
    "created_at": "2026-01-05T10:00:00+00:00",
    "updated_at": "2026-01-05T10:00:00+00:00",
}


class DuplicateSchema(Schema):
    contact = fields.Nested(ContactSchema, dump_only=True)
    score = fields.Float(
        dump_only=True,
        metadata={"description": "1.0 same e-mail, 0.9 same phone, a similar name 0.6-1.0"},
    )
    reasons = fields.List(
        fields.String(metadata={"enum": [duplicates.EMAIL, duplicates.PHONE, duplicates.NAME]}),
        dump_only=True,
    )


class DuplicatesSchema(Schema):
    items = fields.List(fields.Nested(DuplicateSchema), dump_only=True)


class MergeSchema(Schema):
    merge_ids = fields.List(
        id_field(),
        required=True,
        validate=validate.Length(min=1, max=merge.MAX_MERGE),
        metadata={"description": "the contacts merged into this one (then trashed)"},
    )
    prefer = fields.Dict(
        keys=fields.String(validate=validate.Length(min=1, max=64)),
        values=id_field(),
        load_default=dict,
        metadata={
            "description": "field -> the contact (this one or one of merge_ids) whose value "
            f"wins; fields: {', '.join(merge.MERGEABLE_FIELDS)}. Unnamed fields keep this "
            "contact's value, or take the first merged contact's where this one has none.",
            "example": {"email": 15},
        },
    )


@blp.route("/<int:contact_id>/duplicates")
class ContactDuplicates(MethodView):
    @blp.tenant_required
    @blp.response(
        200,
        DuplicatesSchema,
        example={"items": [{"contact": CONTACT_EXAMPLE, "score": 1.0, "reasons": ["email"]}]},
    )
    @blp.alt_response(404, description="Contact not found in this organization")
    def get(self, contact_id: int) -> Any:
        """Likely duplicates of a contact, best first

        Same e-mail ignoring case (score 1.0), same phone digits (0.9), or a similar name (its
        trigram word similarity). Contacts in the trash are never listed."""
        with transaction() as session:
            found = duplicates.find_duplicates(session, current_actor(), contact_id)
            return {
                "items": [
                    {"contact": d.contact, "score": d.score, "reasons": d.reasons} for d in found
                ]
            }


@blp.route("/<int:contact_id>/merge")
class ContactMerge(MethodView):
    @blp.tenant_required
    @blp.arguments(MergeSchema, example={"merge_ids": [15, 16], "prefer": {"email": 15}})
    @blp.response(200, ContactSchema)
    @blp.alt_response(
        400,
        description="MERGE_INTO_ITSELF, MERGE_UNKNOWN_FIELD, MERGE_PREFER_OUTSIDE, ...",
    )
    @blp.alt_response(403, description="A member merges only contacts they own")
    @blp.alt_response(404, description="A contact is not in this organization (missing_ids)")
    def post(self, data: dict[str, Any], contact_id: int) -> Any:
        """Merge contacts into this one, in one transaction

        Moves every deal of the merged contacts (with its tasks and timeline: one entry per
        moved deal) here, fills this contact's empty fields from them (`prefer` picks the
        winner of a field), and moves them to the trash marked as merged (restoring one is
        409). Webhook: `contact.merged`."""
        with transaction() as session:
            return merge.merge_contacts(
                session, current_actor(), contact_id, data["merge_ids"], data["prefer"]
            )
