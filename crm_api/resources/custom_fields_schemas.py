"""Custom fields in the API: the definitions' schemas and examples, the `custom_fields` of
a contact's, deal's or task's JSON, and the `cf.<key>` filters and `sort` of their lists."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import fields, post_load, validate

from crm_domain import representation
from crm_domain.custom_definitions import ENTITIES, KEY_PATTERN, TYPES
from crm_domain.services.records.custom_queries import CustomQuery

from ..schemas import PageArgs, Schema, StrictBoolean, Trimmed, line_field, name_field

EXAMPLE = {
    "id": 7,
    "organization_id": 1,
    "entity": "deal",
    "key": "segment",
    "label": "Segment",
    "type": "single_select",
    "required": False,
    "description": "Which market the deal belongs to",
    "options": [
        {"value": "smb", "label": "Small business", "archived": False},
        {"value": "enterprise", "label": "Enterprise", "archived": False},
    ],
    "created_at": "2026-12-07T09:30:00+00:00",
    "updated_at": "2026-12-07T09:30:00+00:00",
}
CREATE_EXAMPLE = {k: EXAMPLE[k] for k in ("entity", "key", "label", "type", "options")}


class OptionSchema(Schema):
    value = fields.String(
        required=True,
        metadata={"description": "immutable; A-Z a-z 0-9 _ . - (1 to 100)", "example": "smb"},
    )
    label = line_field(100, min_len=1, required=True)
    archived = StrictBoolean(
        load_default=False, metadata={"description": "kept by records, refused on new writes"}
    )


def _options(**kwargs: Any) -> fields.List:
    return fields.List(
        fields.Nested(OptionSchema),
        metadata={
            "description": "select types only; on PATCH the whole list: every existing value "
            "must stay (archive instead of removing), labels and `archived` may change"
        },
        **kwargs,
    )


description_field = Trimmed(allow_none=True, validate=validate.Length(max=1000))


class CustomFieldSchema(Schema):
    id = fields.Integer(dump_only=True)
    organization_id = fields.Integer(dump_only=True)
    entity = fields.String(dump_only=True)
    key = fields.String(dump_only=True)
    label = fields.String(dump_only=True)
    type = fields.String(dump_only=True)
    required = fields.Boolean(dump_only=True)
    description = fields.String(dump_only=True, allow_none=True)
    options = fields.List(fields.Nested(OptionSchema), dump_only=True)
    created_at = fields.DateTime(dump_only=True)
    updated_at = fields.DateTime(dump_only=True)


class CustomFieldCreateSchema(Schema):
    entity = fields.String(required=True, validate=validate.OneOf(ENTITIES))
    key = fields.String(
        required=True,
        validate=validate.Regexp(KEY_PATTERN, error="Must match {regex} (1 to 40 characters)."),
        metadata={"description": "immutable; unique per entity in the organization"},
    )
    label = name_field(required=True)
    type = fields.String(
        required=True,
        validate=validate.OneOf(TYPES),
        metadata={"description": "never changes (make a new field instead)"},
    )
    required = StrictBoolean(load_default=False)
    description = description_field
    options = _options()


class CustomFieldUpdateSchema(Schema):
    label = name_field()
    required = StrictBoolean()
    description = description_field
    options = _options()


class CustomFieldListArgs(PageArgs):
    entity = fields.String(validate=validate.OneOf(ENTITIES))


class CustomFieldsOf(fields.Dict):
    """A record's `custom_fields`: every live definition's key, null when unset."""

    def get_value(
        self, obj: Any, attr: str, accessor: Any = None, default: Any = ma.missing
    ) -> Any:
        return representation.custom_fields_of(obj)


def custom_fields_of() -> CustomFieldsOf:
    return CustomFieldsOf(
        dump_only=True,
        metadata={
            "description": "{key: value} for every custom field of the organization (null: "
            "unset); see GET /custom-fields",
            "example": {"budget": "12500.5", "segment": "enterprise", "renewal": None},
        },
    )


SORT_PATTERN = r"^-?cf\.[a-z][a-z0-9_]{0,39}$"


class CustomListArgs(ma.Schema):
    """`sort=cf.<key>` and the `cf.<key>[.gte|.lte|.empty]=value` filters, given to the
    service as `custom` (a CustomQuery). Other unknown parameters are ignored, as webargs
    ignores them in every query string."""

    sort = fields.String(
        validate=validate.Regexp(SORT_PATTERN, error="Must be cf.<key> or -cf.<key>."),
        metadata={
            "description": "by a custom field: `cf.<key>` ascending, `-cf.<key>` descending "
            "(unset last, ties by id; replaces the default order). Filters: `cf.<key>=value` "
            "(a select's comma list: any of them), `cf.<key>.gte` / `.lte` (number, date, "
            "datetime), `cf.<key>.empty=true|false`",
            "example": "-cf.budget",
        },
    )

    def load(self, data: Any, *, unknown: str | None = None, **kwargs: Any) -> Any:
        # webargs excludes unknown query parameters; the cf.* ones must come through. Loaded
        # directly (a bulk action's filter), other unknown fields stay an error.
        if unknown is None and isinstance(data, dict):
            bad = [k for k in data if k not in self.load_fields and not k.startswith("cf.")]
            if bad:
                raise ma.ValidationError({k: ["Unknown field."] for k in bad})
        return super().load(data, unknown=ma.INCLUDE, **kwargs)

    @post_load
    def custom_query(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        filters: dict[str, str] = {}
        for name in [k for k in data if k not in self.fields]:
            value = data.pop(name)
            if name.startswith("cf.") and isinstance(value, str):
                filters[name] = value
        sort = data.pop("sort", None)
        data["custom"] = CustomQuery(filters, sort) if filters or sort else None
        return data
