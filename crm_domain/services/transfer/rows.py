"""How a CSV row is validated: with the schemas of a single write (crm_domain.validation.writes,
the ones a POST meets), adapted only where a CSV differs from JSON: every cell is text, and
the owner and a deal's contact are named by e-mail. Used by the import run (import_run)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import marshmallow as ma
from marshmallow import fields, validates_schema

from ...enums import ImportKind
from ...validation.fields import email_field, id_field
from ...validation.writes import ContactCreateSchema, DealCreateSchema, DealUpdateSchema


class RowInvalid(Exception):
    """A loader's verdict on a row: {column: [messages]}."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


# Turns a row's cells ({column: text}, empty cells left out) into the values the write schema
# loads from them, or raises RowInvalid.
RowLoader = Callable[[dict[str, str]], dict[str, Any]]


class ContactRowSchema(ContactCreateSchema):
    owner_email = email_field()


class DealRowSchema(DealCreateSchema, DealUpdateSchema):
    """A deal's create fields plus the status and stage of the update schema."""

    contact_id = id_field()
    contact_email = email_field()
    owner_email = email_field()

    @validates_schema
    def names_a_contact(self, data: dict[str, Any], **_: Any) -> None:
        if data.get("contact_id") is None and data.get("contact_email") is None:
            raise ma.ValidationError("contact_id or contact_email is required", "contact_email")


def _loader(schema: ma.Schema) -> RowLoader:
    integers = {name for name, f in schema.fields.items() if isinstance(f, fields.Integer)}

    def load(cells: dict[str, str]) -> dict[str, Any]:
        data: dict[str, Any] = {}
        nul: dict[str, list[str]] = {}
        for column, value in cells.items():
            if "\x00" in value:  # PostgreSQL cannot store NUL in text
                nul[column] = ["Must not contain NUL characters."]
            elif column in integers and value.isascii() and value.isdigit():
                data[column] = int(value)  # a cell is text; the schema's integers are strict
            else:
                data[column] = value
        if nul:
            raise RowInvalid(nul)
        try:
            return schema.load(data)
        except ma.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"": exc.messages}
            raise RowInvalid(
                {column: [str(m) for m in msgs] for column, msgs in messages.items()}
            ) from exc

    return load


LOADERS: dict[ImportKind, RowLoader] = {
    ImportKind.CONTACTS: _loader(ContactRowSchema(exclude=("owner_id",))),
    ImportKind.DEALS: _loader(DealRowSchema(exclude=("owner_id",))),
}
