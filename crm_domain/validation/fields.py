"""The vocabulary of request fields: the base schema (unknown fields are an error), trimmed
strings, names, ids and amounts. Shared by the API's schemas (crm_api) and the domain's
validation of a single write (crm_domain.validation.writes), so both apply the same rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

MAX_AMOUNT = Decimal("9999999999.99")  # NUMERIC(12, 2)
MAX_ID = 2**31 - 1


class Schema(ma.Schema):
    """Base schema: unknown body fields are an error (clients learn of typos)."""

    class Meta:
        unknown = ma.RAISE


class Trimmed(fields.String):
    """A string with surrounding white space removed; blank counts as missing when required."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result = super()._deserialize(value, attr, data, **kwargs)
        return result.strip()


def name_field(max_len: int = 255, **kwargs: Any) -> Trimmed:
    return Trimmed(validate=validate.Length(min=1, max=max_len), **kwargs)


def id_field(**kwargs: Any) -> fields.Integer:
    return fields.Integer(strict=True, validate=validate.Range(min=1, max=MAX_ID), **kwargs)


class DecimalString(fields.Decimal):
    """A decimal carried as a JSON string ("10000.00"), so no cent is lost to binary floating
    point. OpenAPI: `type: string, format: decimal` (create_app registers the mapping)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(places=2, as_string=True, **kwargs)


AMOUNT_PATTERN = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"


def amount_field(**kwargs: Any) -> DecimalString:
    """A deal amount, 0 to 9999999999.99 (NUMERIC(12, 2)); answered with two decimals."""
    metadata = {
        "example": "10000.00",
        "pattern": AMOUNT_PATTERN,
        "description": 'a decimal string, 0 to 9999999999.99, e.g. "10000.00"',
        **kwargs.pop("metadata", {}),
    }
    return DecimalString(
        validate=validate.Range(min=Decimal(0), max=MAX_AMOUNT), metadata=metadata, **kwargs
    )
