"""Team invitations: owners/admins invite an e-mail address with a role; the invitee accepts
with the token from the e-mail, as a new account or logged in."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from flask import current_app
from flask.views import MethodView

from crm_domain.services.mailing import invitations as service
from crm_domain.services.records import auth as auth_service
from crm_domain.services.records import organizations as org_service
from crm_domain.settings import Settings

from ..access import current_user_id, forget_access
from ..extensions import Blueprint, transaction
from ..schemas import PageArgs, page_of
from .auth import _passwords, _start_session
from .invitation_schemas import (
    INVITATION_EXAMPLE,
    ORGANIZATION_EXAMPLE,
    TOKEN_ERRORS,
    TOKEN_EXAMPLE,
    AcceptNewUserSchema,
    AcceptSchema,
    InvitationCreateSchema,
    InvitationSchema,
    JoinedSchema,
    PreviewArgs,
    PreviewSchema,
    error_example,
)
from .organizations import MyOrganizationSchema, _org_row

blp = Blueprint("invitations", __name__, url_prefix="", description="Team invitations")


def _token_errors(func: Any) -> Any:
    for status, (description, example) in TOKEN_ERRORS.items():
        func = blp.alt_response(status, description=description, example=example)(func)
    return func


def _settings() -> Settings:
    return cast(Settings, current_app.extensions["crm_settings"])


@blp.route("/organizations/<int:organization_id>/invitations")
class Invitations(MethodView):
    @blp.login_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(
        200,
        page_of(InvitationSchema),
        example={
            "items": [INVITATION_EXAMPLE],
            "total": 1,
            "page": 1,
            "page_size": 20,
            "pages": 1,
            "next_cursor": None,
        },
    )
    @blp.alt_response(403, description="Not a member, or not owner/admin")
    def get(self, args: dict[str, Any], organization_id: int) -> Any:
        """Pending invitations (not accepted, revoked or expired), newest first; owner/admin"""
        with transaction() as session:
            role = org_service.require_role(session, organization_id, current_user_id())
            return service.list_pending(session, organization_id, role, PageArgs.page_request(args))

    @blp.login_required
    @blp.arguments(InvitationCreateSchema, example={"email": "bob@example.com", "role": "manager"})
    @blp.response(201, InvitationSchema, example=INVITATION_EXAMPLE)
    @blp.alt_response(
        403,
        description="Not a member, not owner/admin (SETTINGS_FORBIDDEN), or an admin inviting"
        " an owner (OWNER_ONLY)",
        example=error_example("OWNER_ONLY", "Only an owner can grant or remove the owner role"),
    )
    @blp.alt_response(409, description="The address belongs to a member (MEMBER_ALREADY_EXISTS)")
    def post(self, data: dict[str, Any], organization_id: int) -> Any:
        """Invite an e-mail address with a role: a single-use link goes out by e-mail.

        Inviting the same address again replaces the pending invitation (the old link stops
        working). The link expires after INVITATION_DAYS (7)."""
        settings = _settings()
        with transaction() as session:
            role = org_service.require_role(session, organization_id, current_user_id())
            return service.invite(
                session,
                organization_id=organization_id,
                inviter_id=current_user_id(),
                inviter_role=role,
                email=data["email"],
                role=data["role"],
                secret_key=settings.secret_key,
                lifetime=dt.timedelta(days=settings.invitation_days),
            )


@blp.route("/organizations/<int:organization_id>/invitations/<int:invitation_id>")
class InvitationById(MethodView):
    @blp.login_required
    @blp.response(204)
    @blp.alt_response(403, description="Not owner/admin; only an owner revokes an owner invite")
    @blp.alt_response(404, description="No pending invitation with this id in the organization")
    @blp.alt_response(409, description="Already accepted (INVITATION_ALREADY_ACCEPTED)")
    def delete(self, organization_id: int, invitation_id: int) -> None:
        """Revoke an invitation: its link stops working"""
        with transaction() as session:
            role = org_service.require_role(session, organization_id, current_user_id())
            service.revoke(
                session,
                organization_id=organization_id,
                actor_role=role,
                invitation_id=invitation_id,
            )


@blp.route("/invitations/preview")
class Preview(MethodView):
    @blp.public
    @blp.arguments(PreviewArgs, location="query")
    @blp.response(
        200,
        PreviewSchema,
        example={
            "organization": {"id": 1, "name": "Acme Inc"},
            "email": "bob@example.com",
            "role": "manager",
            "invited_by_name": "Alice Owner",
            "expires_at": "2026-11-30T10:00:00+00:00",
        },
    )
    @_token_errors
    def get(self, args: dict[str, Any]) -> dict[str, Any]:
        """What an invitation offers (the e-mail's link points here); accepts nothing"""
        with transaction() as session:
            invitation, org, inviter = service.preview(session, args["token"])
            return {
                "organization": org,
                "email": invitation.email,
                "role": invitation.role,
                "invited_by_name": inviter.name if inviter is not None else None,
                "expires_at": invitation.expires_at,
            }


@blp.route("/auth/accept-invitation")
class AcceptAsNewUser(MethodView):
    @blp.public
    @blp.arguments(
        AcceptNewUserSchema,
        example={"token": TOKEN_EXAMPLE, "name": "Bob Builder", "password": "StrongPassword123"},
    )
    @blp.response(
        201,
        JoinedSchema,
        example={
            "user": {
                "id": 2,
                "email": "bob@example.com",
                "name": "Bob Builder",
                "email_digest": True,
                "created_at": "2026-11-24T08:00:00+00:00",
            },
            "organization": ORGANIZATION_EXAMPLE,
            "access_token": "eyJhbGciOiJIUzI1NiIs...",
            "refresh_token": "eyJhbGciOiJIUzI1NiIs...",
            "token_type": "bearer",
            "expires_in": 900,
        },
    )
    @_token_errors
    @blp.alt_response(
        409,
        description="The invited address has an account: log in and POST /invitations/accept",
        example=error_example(
            "EMAIL_ALREADY_EXISTS",
            "An account with this address exists; log in and POST /invitations/accept instead",
        ),
    )
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Create an account for the invited address and join with the invited role.

        The account gets no organization of its own. Answers like /auth/register."""
        with transaction() as session:  # a bad token costs no password hashing
            service.find_by_token(session, data["token"])
        hashed = auth_service.hash_new_password(data["password"], _passwords())
        with transaction() as session:
            user, org, role = service.accept_as_new_user(
                session, token=data["token"], name=data["name"], hashed_password=hashed
            )
            body = _start_session(session, user.id)
            return {**body, "user": user, "organization": _org_row(org, role)}


@blp.route("/invitations/accept")
class Accept(MethodView):
    @blp.login_required
    @blp.arguments(AcceptSchema, example={"token": TOKEN_EXAMPLE})
    @blp.response(200, MyOrganizationSchema, example=ORGANIZATION_EXAMPLE)
    @_token_errors
    @blp.alt_response(
        403,
        description="The invitation was sent to another address than the user's",
        example=error_example(
            "INVITATION_EMAIL_MISMATCH",
            "This invitation was sent to another e-mail address than yours",
        ),
    )
    @blp.alt_response(409, description="Already a member (MEMBER_ALREADY_EXISTS)")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Join the organization as the logged-in user.

        The invitation's e-mail address must be the user's own (case-insensitive)."""
        with transaction() as session:
            org, role = service.accept_as_user(
                session, token=data["token"], user_id=current_user_id()
            )
        forget_access()
        return _org_row(org, role)
