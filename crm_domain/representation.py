"""Resources as the API shows them in JSON, for payloads built where there is no HTTP layer
(events recorded by the services and by the workers, sent as webhooks).

The field lists and formats are the API schemas' (crm_api.resources.*): amounts are strings
with two decimals, enums their values, timestamps and dates ISO 8601. tests/test_webhooks.py
compares every kind with the API's own response, so the two cannot drift apart silently."""

from __future__ import annotations

import datetime as dt
import enum
from decimal import Decimal
from typing import Any

from .custom_definitions import shown_keys

CONTACT_FIELDS = (
    "id",
    "organization_id",
    "owner_id",
    "name",
    "email",
    "phone",
    "created_at",
    "updated_at",
)
DEAL_FIELDS = (
    "id",
    "organization_id",
    "contact_id",
    "owner_id",
    "title",
    "amount",
    "currency",
    "status",
    "stage",
    "created_at",
    "updated_at",
)
TASK_FIELDS = (
    "id",
    "organization_id",
    "deal_id",
    "title",
    "description",
    "due_date",
    "is_done",
    "created_at",
    "updated_at",
)
ACTIVITY_FIELDS = ("id", "deal_id", "author_id", "type", "payload", "created_at")
REPORT_FIELDS = (
    "id",
    "organization_id",
    "kind",
    "status",
    "period_start",
    "period_end",
    "requested_by",
    "created_at",
    "completed_at",
    "data",
    "error",
)
FIELDS_BY_KIND = {
    "contact": CONTACT_FIELDS,
    "deal": DEAL_FIELDS,
    "task": TASK_FIELDS,
    "activity": ACTIVITY_FIELDS,
    "report": REPORT_FIELDS,
}


def json_value(value: Any) -> Any:
    """One attribute in the API's JSON format."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return f"{value.quantize(Decimal('0.01'))}"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


# Kinds whose JSON carries `custom_fields` ({key: value or null} over the live definitions).
WITH_CUSTOM_FIELDS = frozenset({"contact", "deal", "task"})


def custom_fields_of(obj: Any) -> dict[str, Any]:
    """A contact's, deal's or task's `custom_fields`: every live key, null when unset; the
    values of deleted definitions are hidden (crm_domain.custom_definitions)."""
    stored = obj.custom_fields or {}
    return {key: stored.get(key) for key in shown_keys(obj)}


def dump(kind: str, obj: Any) -> dict[str, Any]:
    """`obj` (a model instance of `kind`) as the API's JSON object."""
    data = {name: json_value(getattr(obj, name)) for name in FIELDS_BY_KIND[kind]}
    if kind in WITH_CUSTOM_FIELDS:
        data["custom_fields"] = custom_fields_of(obj)
    return data
