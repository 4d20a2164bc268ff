"""Registration, login, token refresh with rotation, logout."""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import jwt as pyjwt
from flask import current_app
from flask.views import MethodView
from flask_jwt_extended import decode_token, get_jwt
from marshmallow import fields, validate

from crm_domain.errors import Unauthorized
from crm_domain.passwords import PasswordHasher
from crm_domain.services.mailing import digests
from crm_domain.services.records import auth as auth_service

from ..access import current_user_id, forget_access
from ..extensions import Blueprint, transaction
from ..jwt import issue_tokens, new_session_id, user_id_of
from ..metrics import count_login
from ..schemas import Schema, StrictBoolean, Trimmed, email_field, name_field

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Authentication")

password_field = fields.String(
    required=True,
    validate=validate.Length(min=1),
    load_only=True,
    metadata={"description": "8 to 72 bytes (UTF-8)", "example": "StrongPassword123"},
)
# Registration enforces 8 to 72 bytes (auth_service.check_password_length): in characters,
# that is 8 to 72 for ASCII and fewer for other scripts, hence the lengths documented here.
new_password_field = fields.String(
    required=True,
    validate=validate.Length(min=1),
    load_only=True,
    metadata={
        "description": "8 to 72 bytes once UTF-8 encoded (bcrypt's limit): 8 to 72 ASCII"
        " characters; other characters take 2 to 4 bytes each. Otherwise 400.",
        "minLength": 8,
        "maxLength": 72,
        "example": "StrongPassword123",
    },
)


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    email_digest = fields.Boolean(dump_only=True, metadata={"description": "daily task e-mail"})
    created_at = fields.DateTime(dump_only=True)


class UserUpdateSchema(Schema):
    email_digest = StrictBoolean(required=True, metadata={"example": False})


class OrganizationRefSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class RegisterSchema(Schema):
    email = email_field(required=True)
    password = new_password_field
    name = name_field(required=True)
    organization_name = name_field(required=True)


class LoginSchema(Schema):
    email = Trimmed(required=True, validate=validate.Length(min=1, max=320))
    password = password_field


class RefreshSchema(Schema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=1))


class TokensSchema(Schema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "access token seconds"})


class RegisteredSchema(TokensSchema):
    user = fields.Nested(UserSchema, required=True)
    organization = fields.Nested(OrganizationRefSchema, required=True)


def _passwords() -> PasswordHasher:
    return cast(PasswordHasher, current_app.extensions["crm_passwords"])


def _tokens(user_id: int, session_id: str, grant: auth_service.TokenGrant) -> dict[str, Any]:
    access, refresh = issue_tokens(user_id, session_id, grant)
    lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    return {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": int(lifetime.total_seconds()),
    }


def _start_session(session: Any, user_id: int) -> dict[str, Any]:
    sid = new_session_id()
    grant = auth_service.start_session(
        session,
        session_id=sid,
        user_id=user_id,
        lifetime=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"],
    )
    return _tokens(user_id, sid, grant)


@blp.route("/register")
class Register(MethodView):
    @blp.public
    @blp.arguments(RegisterSchema)
    @blp.response(201, RegisteredSchema)
    @blp.alt_response(409, description="Email already registered")
    @blp.alt_response(429, description="Too many attempts (RATE_LIMITED, see Retry-After)")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Register a user and their first organization (the user becomes its owner)"""
        hashed = auth_service.hash_new_password(data["password"], _passwords())
        with transaction() as session:
            user, org = auth_service.register(
                session,
                email=data["email"],
                hashed_password=hashed,
                name=data["name"],
                organization_name=data["organization_name"],
            )
            body = _start_session(session, user.id)
            return {**body, "user": user, "organization": org}


@blp.route("/login")
class Login(MethodView):
    @count_login
    @blp.public
    @blp.arguments(LoginSchema)
    @blp.response(200, TokensSchema)
    @blp.alt_response(401, description="Invalid credentials")
    @blp.alt_response(429, description="Too many attempts (RATE_LIMITED, see Retry-After)")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Log in and receive an access/refresh token pair"""
        # The password check runs outside any transaction: it holds no pool connection while
        # it waits for a hashing slot and hashes.
        with transaction() as session:
            stored = auth_service.find_credentials(session, data["email"])
        user_id = auth_service.check_credentials(stored, data["password"], _passwords())
        with transaction() as session:
            return _start_session(session, user_id)


def _decode_refresh(token: str) -> dict[str, Any]:
    try:
        claims = decode_token(token)
    except pyjwt.ExpiredSignatureError as exc:
        raise Unauthorized("Refresh token has expired", code="TOKEN_EXPIRED") from exc
    except (pyjwt.InvalidTokenError, ValueError, KeyError) as exc:
        raise Unauthorized("Invalid refresh token", code="INVALID_TOKEN") from exc
    if claims.get("type") != "refresh" or not claims.get("sid") or not claims.get("jti"):
        raise Unauthorized("A refresh token is required", code="INVALID_TOKEN")
    if user_id_of(claims) is None or not isinstance(claims["sid"], str):
        raise Unauthorized("Refresh token claims are malformed", code="INVALID_TOKEN")
    return claims


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.public
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokensSchema)
    @blp.alt_response(401, description="Invalid, expired, revoked or reused refresh token")
    @blp.alt_response(429, description="Too many attempts (RATE_LIMITED, see Retry-After)")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Exchange a refresh token for a new pair (the old refresh token stops working).

        The token just replaced, presented again within REFRESH_REUSE_GRACE_SECONDS (10 s by
        default) of that refresh, gets the same new pair again, so concurrent refreshes with
        one token all succeed. Any older token, or that one after the window, is reuse: it
        revokes every token of that login session."""
        claims = _decode_refresh(data["refresh_token"])
        user_id, sid = int(claims["sub"]), claims["sid"]
        grace = dt.timedelta(seconds=current_app.config["REFRESH_REUSE_GRACE_SECONDS"])
        try:
            with transaction() as session:
                grant = auth_service.rotate_session(
                    session, session_id=sid, presented_jti=claims["jti"], grace=grace
                )
        except auth_service.TokenReused:
            with transaction() as session:
                auth_service.revoke_session(session, sid, reason="reuse")
            forget_access()
            raise
        return _tokens(user_id, sid, grant)


@blp.route("/logout")
class Logout(MethodView):
    @blp.login_required
    @blp.response(204)
    def post(self) -> None:
        """Revoke the current login session (its access and refresh tokens)"""
        with transaction() as session:
            auth_service.revoke_session(session, get_jwt()["sid"], reason="logout")
        forget_access()


@blp.route("/me")
class Me(MethodView):
    @blp.login_required
    @blp.response(200, UserSchema)
    def get(self) -> Any:
        """The current user"""
        with transaction() as session:
            user = auth_service.get_user(session, current_user_id())
            if user is None:
                raise Unauthorized("User not found")
            return user

    @blp.login_required
    @blp.arguments(UserUpdateSchema, example={"email_digest": False})
    @blp.response(
        200,
        UserSchema,
        example={
            "id": 2,
            "email": "bob@example.com",
            "name": "Bob Builder",
            "email_digest": False,
            "created_at": "2026-11-24T08:00:00+00:00",
        },
    )
    def patch(self, data: dict[str, Any]) -> Any:
        """Change the current user's preferences: `email_digest` (the daily task e-mail)"""
        with transaction() as session:
            user = digests.set_email_digest(session, current_user_id(), data["email_digest"])
            if user is None:
                raise Unauthorized("User not found")
            return user
