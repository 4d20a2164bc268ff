"""Shared marshmallow schemas and fields."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from crm_domain import text
from crm_domain.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest

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


class StrictBoolean(fields.Boolean):
    """JSON true or false only (not "yes", 1 or 0)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


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


def query_id_field(**kwargs: Any) -> fields.Integer:
    """An id in the query string: there every value is a string, so `strict` would reject all."""
    return fields.Integer(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


class DecimalString(fields.Decimal):
    """A decimal carried as a JSON string ("10000.00"), so no cent is lost to binary floating
    point. OpenAPI: `type: string, format: decimal` (create_app registers the mapping)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(places=2, as_string=True, **kwargs)


AMOUNT_PATTERN = r"^[0-9]{1,10}(\.[0-9]{1,2})?$"
TOTAL_PATTERN = r"^[0-9]+\.[0-9]{2}$"  # sums and averages: two decimals, any size


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


def total_field(**kwargs: Any) -> DecimalString:
    """A computed sum or average of amounts (documentation of a dumped value)."""
    metadata = {"example": "1000.00", "pattern": TOTAL_PATTERN, **kwargs.pop("metadata", {})}
    return DecimalString(dump_only=True, metadata=metadata, **kwargs)


class PageArgs(ma.Schema):
    page = fields.Integer(load_default=1, validate=validate.Range(min=1, max=1_000_000))
    page_size = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE, validate=validate.Range(min=1, max=MAX_PAGE_SIZE)
    )
    cursor = fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={
            "description": "next_cursor of the previous page: keyset pagination (no total, "
            "same speed on every page; `page` is then ignored)"
        },
    )

    PAGE_FIELDS = ("page", "page_size", "cursor")

    @staticmethod
    def page_request(args: dict[str, Any]) -> PageRequest:
        return PageRequest(
            page=args.pop("page"), page_size=args.pop("page_size"), cursor=args.pop("cursor", None)
        )


_PAGE_SCHEMAS: dict[str, type[ma.Schema]] = {}


def page_of(item: type[ma.Schema]) -> type[ma.Schema]:
    """The pagination envelope {items, total, page, page_size, pages} around `item`."""
    name = item.__name__.removesuffix("Schema") + "PageSchema"
    if name not in _PAGE_SCHEMAS:
        _PAGE_SCHEMAS[name] = type(
            name,
            (ma.Schema,),
            {
                "items": fields.List(fields.Nested(item), required=True),
                "total": fields.Integer(
                    required=True, allow_none=True, metadata={"description": "null with a cursor"}
                ),
                "page": fields.Integer(
                    required=True, allow_none=True, metadata={"description": "null with a cursor"}
                ),
                "page_size": fields.Integer(required=True),
                "pages": fields.Integer(
                    required=True, allow_none=True, metadata={"description": "null with a cursor"}
                ),
                "next_cursor": fields.String(
                    required=True,
                    allow_none=True,
                    metadata={"description": "pass as `cursor` for the next page; null at the end"},
                ),
            },
        )
    return _PAGE_SCHEMAS[name]
