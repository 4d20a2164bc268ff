"""What the OpenAPI document says beyond what flask-smorest derives from the schemas."""

from __future__ import annotations

from typing import Any

import marshmallow as ma

from . import conditional
from .schemas import DecimalString

# A string the API accepts has no NUL character (PostgreSQL cannot store one). JSON Schema
# has no word for the other rule (no unpaired surrogates): the API description states it.
NO_NUL_PATTERN = "^[^\\u0000]*$"

TEXT_RULES = (
    "Strings in request bodies and query strings (field names included) must not contain NUL "
    "(U+0000) nor unpaired surrogates (a lone `\\ud800` escape): 400 `VALIDATION_ERROR` naming "
    'the field. Amounts are decimal strings with two decimals (`"10000.00"`, '
    "`type: string, format: decimal`)."
)


def _no_nul(
    converter: Any, field: ma.fields.Field, ret: dict[str, Any], **_: Any
) -> dict[str, Any]:
    """apispec attribute function: document the NUL rule on every input string without a
    more precise pattern, enum or format of its own."""
    plain_input_string = (
        ret.get("type") == "string"
        and not ret.get("readOnly")
        and not {"pattern", "enum", "format"} & set(ret)
    )
    return {"pattern": NO_NUL_PATTERN} if plain_input_string else {}


def document(api: Any) -> None:
    """Call before registering blueprints: schemas are converted when their paths are added."""
    api.register_field(DecimalString, "string", "decimal")
    api.ma_plugin.converter.add_attribute_function(_no_nul)
    conditional.register_components(api.spec, api.ERROR_SCHEMA)
