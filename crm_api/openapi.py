"""What the OpenAPI document says beyond what flask-smorest derives from the schemas."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from crm_domain.text import SINGLE_LINE_PATTERN

from . import conditional
from .schemas import DecimalString, SingleLine

# A string the API accepts has no NUL character (PostgreSQL cannot store one). JSON Schema
# has no word for the other rule (no unpaired surrogates): the API description states it.
NO_NUL_PATTERN = "^[^\\u0000]*$"

TEXT_RULES = (
    "Strings in request bodies and query strings (field names included) must not contain NUL "
    "(U+0000) nor unpaired surrogates (a lone `\\ud800` escape): 400 `VALIDATION_ERROR` naming "
    "the field. Single-line fields (names, titles, e-mail addresses, phone numbers, URLs, "
    "webhook descriptions) refuse control characters (U+0000 to U+001F, U+007F to U+009F) and "
    "the line and paragraph separators U+2028 and U+2029 the same way; multi-line text (a "
    "task's description, a comment) takes line breaks. "
    'Amounts are decimal strings with two decimals (`"10000.00"`, '
    "`type: string, format: decimal`)."
)


def _text_pattern(
    converter: Any, field: ma.fields.Field, ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """apispec attribute function: document the text rules on every input string without a
    more precise pattern, enum or format of its own: the single-line rule where the field
    has it, else the NUL rule."""
    plain_input_string = (
        ret.get("type") == "string"
        and not ret.get("readOnly")
        and not {"pattern", "enum", "format"} & set(ret)
    )
    if not plain_input_string:
        return {}
    single_line = any(isinstance(v, SingleLine) for v in field.validators)
    return {"pattern": SINGLE_LINE_PATTERN if single_line else NO_NUL_PATTERN}


def document(api: Any) -> None:
    """Call before registering blueprints: schemas are converted when their paths are added."""
    api.register_field(DecimalString, "string", "decimal")
    api.ma_plugin.converter.add_attribute_function(_text_pattern)
    conditional.register_components(api.spec, api.ERROR_SCHEMA)
