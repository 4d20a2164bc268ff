"""Shared marshmallow schemas and fields."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from crm_domain.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, PageRequest
from crm_domain.validation.fields import (
    AMOUNT_PATTERN,
    MAX_AMOUNT,
    MAX_ID,
    DecimalString,
    Schema,
    SingleLine,
    Trimmed,
    amount_field,
    email_field,
    id_field,
    line_field,
    name_field,
)

# The shared field vocabulary lives below both layers (crm_domain.validation.fields); the
# API's modules keep importing it from here.
__all__ = [
    "AMOUNT_PATTERN",
    "MAX_AMOUNT",
    "MAX_ID",
    "DecimalString",
    "PageArgs",
    "Schema",
    "SingleLine",
    "StrictBoolean",
    "Trimmed",
    "amount_field",
    "email_field",
    "id_field",
    "line_field",
    "name_field",
    "page_example",
    "page_of",
    "query_id_field",
    "total_field",
]


class StrictBoolean(fields.Boolean):
    """JSON true or false only (not "yes", 1 or 0)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


def query_id_field(**kwargs: Any) -> fields.Integer:
    """An id in the query string: there every value is a string, so `strict` would reject all."""
    return fields.Integer(validate=validate.Range(min=1, max=MAX_ID), **kwargs)


TOTAL_PATTERN = r"^[0-9]+\.[0-9]{2}$"  # sums and averages: two decimals, any size


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


def page_example(item: dict[str, Any]) -> dict[str, Any]:
    """A documented example of a one-item page."""
    return {
        "items": [item],
        "total": 1,
        "page": 1,
        "page_size": 20,
        "pages": 1,
        "next_cursor": None,
    }
