"""Registration, login, token refresh with rotation, logout."""

from __future__ import annotations

from typing import Any

import jwt as pyjwt
from flask import current_app
from flask.views import MethodView
from flask_jwt_extended import decode_token, get_jwt
from marshmallow import fields, validate

from crm_domain.errors import Unauthorized
from crm_domain.services import auth as auth_service

from ..access import current_user_id, forget_access
from ..extensions import Blueprint, transaction
from ..jwt import issue_tokens, new_session_id
from ..metrics import count_login
from ..schemas import Schema, Trimmed, name_field

blp = Blueprint("auth", __name__, url_prefix="/auth", description="Authentication")

password_field = fields.String(
    required=True,
    validate=validate.Length(min=1),
    load_only=True,
    metadata={"description": "8 to 72 bytes (UTF-8)", "example": "StrongPassword123"},
)


class UserSchema(Schema):
    id = fields.Integer(dump_only=True)
    email = fields.String(dump_only=True)
    name = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class OrganizationRefSchema(Schema):
    id = fields.Integer(dump_only=True)
    name = fields.String(dump_only=True)
    created_at = fields.DateTime(dump_only=True)


class RegisterSchema(Schema):
    email = fields.Email(required=True, validate=validate.Length(max=320))
    password = password_field
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


def _tokens(user_id: int, session_id: str) -> tuple[dict[str, Any], str]:
    access, refresh, refresh_jti = issue_tokens(user_id, session_id)
    lifetime = current_app.config["JWT_ACCESS_TOKEN_EXPIRES"]
    body = {
        "access_token": access,
        "refresh_token": refresh,
        "token_type": "bearer",
        "expires_in": int(lifetime.total_seconds()),
    }
    return body, refresh_jti


def _start_session(session: Any, user_id: int) -> dict[str, Any]:
    sid = new_session_id()
    body, jti = _tokens(user_id, sid)
    auth_service.start_session(
        session,
        session_id=sid,
        user_id=user_id,
        refresh_jti=jti,
        lifetime=current_app.config["JWT_REFRESH_TOKEN_EXPIRES"],
    )
    return body


@blp.route("/register")
class Register(MethodView):
    @blp.public
    @blp.arguments(RegisterSchema)
    @blp.response(201, RegisteredSchema)
    @blp.alt_response(409, description="Email already registered")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Register a user and their first organization (the user becomes its owner)"""
        auth_service.check_password_length(data["password"])
        with transaction() as session:
            user, org = auth_service.register(
                session,
                email=data["email"],
                password=data["password"],
                name=data["name"],
                organization_name=data["organization_name"],
                rounds=current_app.config["BCRYPT_ROUNDS"],
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
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Log in and receive an access/refresh token pair"""
        with transaction() as session:
            user = auth_service.authenticate(
                session, email=data["email"], password=data["password"]
            )
            return _start_session(session, user.id)


def _decode_refresh(token: str) -> dict[str, Any]:
    try:
        claims = decode_token(token)
    except pyjwt.ExpiredSignatureError as exc:
        raise Unauthorized("Refresh token has expired", code="TOKEN_EXPIRED") from exc
    except (pyjwt.InvalidTokenError, ValueError, KeyError) as exc:
        raise Unauthorized("Invalid refresh token", code="INVALID_TOKEN") from exc
    if claims.get("type") != "refresh" or not claims.get("sid") or not claims.get("jti"):
        raise Unauthorized("A refresh token is required", code="INVALID_TOKEN")
    return claims


@blp.route("/refresh")
class Refresh(MethodView):
    @blp.public
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokensSchema)
    @blp.alt_response(401, description="Invalid, expired, revoked or reused refresh token")
    def post(self, data: dict[str, Any]) -> dict[str, Any]:
        """Exchange a refresh token for a new pair (the old refresh token stops working).

        Presenting an already-used refresh token revokes every token of that login session."""
        claims = _decode_refresh(data["refresh_token"])
        user_id, sid = int(claims["sub"]), claims["sid"]
        try:
            with transaction() as session:
                body, new_jti = _tokens(user_id, sid)
                auth_service.rotate_session(
                    session, session_id=sid, presented_jti=claims["jti"], new_jti=new_jti
                )
                return body
        except auth_service.TokenReused:
            with transaction() as session:
                auth_service.revoke_session(session, sid, reason="reuse")
            forget_access()
            raise


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
