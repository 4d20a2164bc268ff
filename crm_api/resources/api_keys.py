"""API keys (personal access tokens) for integrations: create (the key is shown once), list,
revoke."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask.views import MethodView
from marshmallow import fields

from crm_domain.enums import ApiKeyScope
from crm_domain.services.records import api_keys as service

from ..access import forget_access
from ..extensions import Blueprint, current_actor, transaction
from ..schemas import PageArgs, Schema, name_field, page_example, page_of

blp = Blueprint(
    "api_keys",
    __name__,
    url_prefix="/api-keys",
    description=(
        "API keys for scripts and integrations: `Authorization: Bearer crm_...` acts as the "
        "key's user in the key's organization, with the user's role at the time of each "
        "request (a removed member's keys stop working). A `read` key only reads. Keys are "
        "made with a login token; they do not work on the account's and organizations' routes "
        "(/auth, /organizations, invitations)."
    ),
)

KEY_EXAMPLE = "crm_3f9a1c0b7d2e_Hq0m2a8XkT9r4dY6bWcZ1uVpL5sNe7gJf3iRoK8tQxA"
EXAMPLE = {
    "id": 4,
    "user_id": 1,
    "name": "Nightly ERP sync",
    "scope": "write",
    "prefix": "crm_3f9a1c0b7d2e",
    "created_at": "2026-03-02T09:15:00.123456+00:00",
    "last_used_at": "2026-03-03T02:00:07.000000+00:00",
    "expires_at": None,
}


class ApiKeySchema(Schema):
    id = fields.Integer(dump_only=True)
    user_id = fields.Integer(dump_only=True, metadata={"description": "whose key it is"})
    name = fields.String(dump_only=True)
    scope = fields.Enum(ApiKeyScope, by_value=True, dump_only=True)
    prefix = fields.Method(
        "_prefix",
        dump_only=True,
        metadata={"type": "string", "description": "the key's first, public part"},
    )
    created_at = fields.DateTime(dump_only=True)
    last_used_at = fields.DateTime(
        dump_only=True,
        allow_none=True,
        metadata={"description": "updated at most once a minute"},
    )
    expires_at = fields.DateTime(dump_only=True, allow_none=True)

    def _prefix(self, key: Any) -> str:
        return service.visible_prefix(key.lookup)


class ApiKeyCreatedSchema(ApiKeySchema):
    key = fields.String(
        dump_only=True,
        metadata={
            "description": "The key: send it as `Authorization: Bearer <key>`. Shown in this "
            "answer only (only a hash of it is stored); store it now."
        },
    )


class ApiKeyCreateSchema(Schema):
    name = name_field(100, required=True, metadata={"example": "Nightly ERP sync"})
    scope = fields.Enum(
        ApiKeyScope,
        by_value=True,
        required=True,
        metadata={"description": "read: GET only; write: whatever the user may do"},
    )
    expires_at = fields.AwareDateTime(
        default_timezone=dt.UTC,
        allow_none=True,
        metadata={"description": "optional; in the future; no expiry when left out"},
    )


class _Created:
    """The new key's row with the key itself, for ApiKeyCreatedSchema."""

    def __init__(self, row: Any, key: str) -> None:
        self.row = row
        self.key = key

    def __getattr__(self, name: str) -> Any:
        return getattr(self.row, name)


@blp.route("")
class ApiKeys(MethodView):
    @blp.tenant_required
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, page_of(ApiKeySchema), example=page_example(EXAMPLE))
    def get(self, args: dict[str, Any]) -> Any:
        """The caller's keys in this organization, newest first (owners and admins: everyone's)

        The keys themselves are never shown again, only their public prefix."""
        with transaction() as session:
            return service.list_keys(session, current_actor(), PageArgs.page_request(args))

    @blp.tenant_required(api_keys=False, idempotent=False)
    @blp.arguments(ApiKeyCreateSchema, example={"name": "Nightly ERP sync", "scope": "write"})
    @blp.response(
        201, ApiKeyCreatedSchema, example={**EXAMPLE, "last_used_at": None, "key": KEY_EXAMPLE}
    )
    def post(self, data: dict[str, Any]) -> Any:
        """Create a key for this organization; the answer shows the key, this once

        The key acts as the caller in this organization. Needs a login token (an API key
        cannot make keys: 403 API_KEY_NOT_ALLOWED). No Idempotency-Key here: a replay could
        not show the key again, which is stored nowhere."""
        with transaction() as session:
            row, key = service.create(session, current_actor(), **data)
            return _Created(row, key)


@blp.route("/<int:api_key_id>")
class ApiKeyById(MethodView):
    @blp.tenant_required
    @blp.response(204)
    @blp.alt_response(404, description="Not a key the caller may see, in this organization")
    def delete(self, api_key_id: int) -> None:
        """Revoke a key at once: the caller's own, or any member's for owners and admins"""
        with transaction() as session:
            service.revoke(session, current_actor(), api_key_id)
        forget_access()
