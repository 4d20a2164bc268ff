"""What the invitation routes take and answer: the schemas, the token field and the documented
examples (answers and token errors)."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from crm_domain.enums import Role

from ..schemas import Schema, email_field, name_field
from .auth import TokensSchema, UserSchema, password_field
from .organizations import MyOrganizationSchema

TOKEN_EXAMPLE = "q3Vf1n0bYc8l0xJgI8k0cQm2l8r3hC8oZ8kU7yQy0aE"
INVITATION_EXAMPLE = {
    "id": 7,
    "organization_id": 1,
    "email": "bob@example.com",
    "role": "manager",
    "invited_by": 1,
    "created_at": "2026-11-23T10:00:00+00:00",
    "expires_at": "2026-11-30T10:00:00+00:00",
}
ORGANIZATION_EXAMPLE = {
    "id": 1,
    "name": "Acme Inc",
    "created_at": "2026-11-01T09:00:00+00:00",
    "role": "manager",
}


def error_example(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": {}}}


TOKEN_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    404: (
        "Unknown token",
        error_example("INVITATION_NOT_FOUND", "No invitation has this token"),
    ),
    410: (
        "INVITATION_USED, INVITATION_REVOKED (revoked or replaced by a newer invitation, or the"
        " inviter may no longer grant the role) or INVITATION_EXPIRED",
        error_example("INVITATION_EXPIRED", "This invitation has expired; ask for a new one"),
    ),
}


def _token_field() -> fields.String:
    return fields.String(
        required=True,
        validate=validate.Length(min=1, max=256),
        metadata={"description": "the token from the invitation e-mail", "example": TOKEN_EXAMPLE},
    )


class InvitationSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    role = fields.Enum(Role, by_value=True, dump_only=True)
    invited_by = fields.Integer(dump_only=True, allow_none=True)
    created_at = fields.DateTime(dump_only=True)
    expires_at = fields.DateTime(dump_only=True)


class InvitationCreateSchema(Schema):
    email = email_field(required=True)
    role = fields.Enum(
        Role,
        by_value=True,
        load_default=Role.MEMBER,
        metadata={"description": "owner only from an owner; admins invite admin/manager/member"},
    )


class AcceptNewUserSchema(Schema):
    token = _token_field()
    name = name_field(required=True)
    password = password_field


class AcceptSchema(Schema):
    token = _token_field()


class PreviewArgs(ma.Schema):
    token = _token_field()


class PreviewOrganizationSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)


class PreviewSchema(Schema):
    organization = fields.Nested(PreviewOrganizationSchema, dump_only=True)
    email = fields.String(dump_only=True)
    role = fields.Enum(Role, by_value=True, dump_only=True)
    invited_by_name = fields.String(dump_only=True, allow_none=True)
    expires_at = fields.DateTime(dump_only=True)


class JoinedSchema(TokensSchema):
    user = fields.Nested(UserSchema, required=True)
    organization = fields.Nested(MyOrganizationSchema, required=True)
