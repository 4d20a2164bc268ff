"""The caller's organizations and organization members."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from marshmallow import fields

from crm_domain.enums import Role
from crm_domain.services.records import organizations as org_service

from ..access import current_user_id, forget_access
from ..extensions import Blueprint, transaction
from ..schemas import Schema, email_field, name_field

blp = Blueprint(
    "organizations", __name__, url_prefix="/organizations", description="Organizations and members"
)


class MyOrganizationSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    role = fields.Enum(Role, by_value=True, dump_only=True)


class OrganizationCreateSchema(Schema):
    name = name_field(required=True)


class MemberSchema(Schema):
    user_id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    role = fields.Enum(Role, by_value=True, dump_only=True)
    joined_at = fields.DateTime(dump_only=True)


class MemberCreateSchema(Schema):
    email = email_field(required=True)
    role = fields.Enum(Role, by_value=True, load_default=Role.MEMBER)


class MemberUpdateSchema(Schema):
    role = fields.Enum(Role, by_value=True, required=True)


def _org_row(org: Any, role: Role) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "created_at": org.created_at, "role": role}


def _member_row(member: Any, user: Any) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "name": user.name,
        "role": member.role,
        "joined_at": member.created_at,
    }


@blp.route("/me")
class MyOrganizations(MethodView):
    @blp.login_required
    @blp.response(200, MyOrganizationSchema(many=True))
    def get(self) -> list[dict[str, Any]]:
        """Organizations the current user belongs to, with their role in each

        Answers a bare array with all of them, not the page (`{"items": [...], ...}`) other
        lists answer: a user belongs to few organizations. It stays so in /api/v1.
        """
        with transaction() as session:
            return [
                _org_row(o, r) for o, r in org_service.memberships_of(session, current_user_id())
            ]


@blp.route("")
class Organizations(MethodView):
    @blp.login_required
    @blp.arguments(OrganizationCreateSchema)
    @blp.response(201, MyOrganizationSchema)
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create an organization; the creator becomes its owner"""
        with transaction() as session:
            org = org_service.create(session, name=data["name"], creator_id=current_user_id())
            return _org_row(org, Role.OWNER)


@blp.route("/<int:organization_id>/members")
class Members(MethodView):
    @blp.login_required
    @blp.response(200, MemberSchema(many=True))
    @blp.alt_response(403, description="Not a member of the organization")
    def get(self, organization_id: int) -> list[dict[str, Any]]:
        """Members of the organization (any member may list them)

        Answers a bare array with every member, not the page (`{"items": [...], ...}`) other
        lists answer. It stays so in /api/v1.
        """
        with transaction() as session:
            org_service.require_role(session, organization_id, current_user_id())
            return [
                _member_row(m, u) for m, u in org_service.list_members(session, organization_id)
            ]

    @blp.login_required
    @blp.arguments(MemberCreateSchema)
    @blp.response(201, MemberSchema)
    @blp.alt_response(403, description="Only owner/admin; only an owner grants owner")
    @blp.alt_response(404, description="No registered user with this email")
    @blp.alt_response(409, description="Already a member")
    def post(self, data: dict[str, Any], organization_id: int) -> dict[str, Any]:
        """Add a registered user to the organization"""
        with transaction() as session:
            actor_role = org_service.require_role(session, organization_id, current_user_id())
            member, user = org_service.add_member(
                session,
                organization_id=organization_id,
                actor_role=actor_role,
                email=data["email"],
                role=data["role"],
            )
            return _member_row(member, user)


@blp.route("/<int:organization_id>/members/<int:user_id>")
class MemberById(MethodView):
    @blp.login_required
    @blp.arguments(MemberUpdateSchema)
    @blp.response(200, MemberSchema)
    @blp.alt_response(403, description="Only owner/admin; only an owner changes owners")
    @blp.alt_response(404, description="Not a member")
    @blp.alt_response(409, description="The last owner cannot be demoted")
    def patch(self, data: dict[str, Any], organization_id: int, user_id: int) -> dict[str, Any]:
        """Change a member's role"""
        with transaction() as session:
            actor_role = org_service.require_role(session, organization_id, current_user_id())
            member, user = org_service.change_role(
                session,
                organization_id=organization_id,
                actor_role=actor_role,
                user_id=user_id,
                role=data["role"],
            )
        forget_access()
        return _member_row(member, user)

    @blp.login_required
    @blp.response(204)
    @blp.alt_response(403, description="Only owner/admin; only an owner removes owners")
    @blp.alt_response(404, description="Not a member")
    @blp.alt_response(409, description="The last owner cannot be removed")
    def delete(self, organization_id: int, user_id: int) -> None:
        """Remove a member from the organization"""
        with transaction() as session:
            actor_role = org_service.require_role(session, organization_id, current_user_id())
            org_service.remove_member(
                session, organization_id=organization_id, actor_role=actor_role, user_id=user_id
            )
        forget_access()
