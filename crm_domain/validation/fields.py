"""The vocabulary of request fields: the base schema (unknown fields are an error), trimmed
strings, single-line text (names, e-mail addresses; the rule is crm_domain.text), ids and
amounts. Shared by the API's schemas (crm_api) and the domain's validation of a single write
(crm_domain.validation.writes), so both apply the same rules."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from .. import text

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


class SingleLine(validate.Validator):
    """The single-line text rule (crm_domain.text): no control character, line or paragraph
    separator. Every one-line input (names, titles, e-mail addresses, phone numbers, labels,
    URLs) carries it; multi-line text (a task's description, a comment) does not."""

    error = "Must be a single line: no control characters or line breaks ({character} found)."

    def __call__(self, value: str) -> str:
        found = text.line_breaking_character(value)
        if found is not None:
            raise ma.ValidationError(self.error.format(character=f"U+{ord(found):04X}"))
        return value


def line_field(max_len: int, *, min_len: int = 0, **kwargs: Any) -> Trimmed:
    """One line of text (surrounding white space trimmed), `min_len` to `max_len` characters."""
    length = validate.Length(min=min_len or None, max=max_len)
    return Trimmed(validate=[length, SingleLine()], **kwargs)


def name_field(max_len: int = 255, **kwargs: Any) -> Trimmed:
    """A name or title: one line, not blank."""
    return line_field(max_len, min_len=1, **kwargs)


def email_field(**kwargs: Any) -> fields.Email:
    """An e-mail address (at most 320 characters, one line: the address goes into headers)."""
    return fields.Email(validate=[validate.Length(max=320), SingleLine()], **kwargs)


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
