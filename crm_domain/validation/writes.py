"""What a single write of a contact or a deal may carry: the schemas the API loads a request
body with (crm_api.resources) and an import loads each CSV row with
(crm_domain.services.transfer.rows), so a row meets exactly the rules a POST meets."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, pre_load, validate

from ..enums import DealStage, DealStatus
from ..rules import DEFAULT_AMOUNT, DEFAULT_CURRENCY
from .custom_values import custom_fields_field
from .fields import (
    Schema,
    Trimmed,
    amount_field,
    email_field,
    id_field,
    line_field,
    name_field,
)


class ContactCreateSchema(Schema):
    name = name_field(required=True)
    email = email_field(allow_none=True)
    phone = line_field(50, allow_none=True)
    owner_id = id_field(metadata={"description": "manager and above only; defaults to the caller"})
    custom_fields = custom_fields_field()


class ContactUpdateSchema(Schema):
    name = name_field()
    email = email_field(allow_none=True)
    phone = line_field(50, allow_none=True)
    owner_id = id_field()
    custom_fields = custom_fields_field()


def currency_field(**kwargs: Any) -> fields.String:
    return fields.String(
        validate=validate.Regexp(r"^[A-Z]{3}$", error="Must be a 3-letter ISO 4217 code."),
        metadata={"example": "EUR", "description": "ISO 4217 code (lower case is upper-cased)"},
        **kwargs,
    )


class _UpperCurrency(Schema):
    @pre_load
    def upper_currency(self, data: Any, **_: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("currency"), str):
            return {**data, "currency": data["currency"].strip().upper()}
        return data


class DealCreateSchema(_UpperCurrency):
    contact_id = id_field(required=True)
    title = name_field(required=True)
    amount = amount_field(
        load_default=DEFAULT_AMOUNT,
        allow_none=True,
        metadata={"description": 'a decimal string; left out or null: "0.00"'},
    )
    currency = currency_field(load_default=DEFAULT_CURRENCY)
    owner_id = id_field(metadata={"description": "manager and above only; defaults to the caller"})
    custom_fields = custom_fields_field()


class DealUpdateSchema(_UpperCurrency):
    title = name_field()
    amount = amount_field()
    currency = currency_field()
    status = fields.Enum(DealStatus, by_value=True)
    stage = fields.Enum(DealStage, by_value=True)
    owner_id = id_field()
    contact_id = id_field()
    custom_fields = custom_fields_field()


description_field = Trimmed(allow_none=True, validate=validate.Length(max=10_000))


class TaskUpdateSchema(Schema):
    title = name_field()
    description = description_field
    due_date = fields.Date(metadata={"description": "today (UTC) or later"})
    is_done = fields.Boolean()
    custom_fields = custom_fields_field()
