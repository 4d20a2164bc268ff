"""Custom field values against their definitions: each value checked and put in its stored
form, a write merged key by key into a record's values, every problem reported by key.

Stored (and shown) forms: text, url, email and single_select a string; number a decimal
string without exponent ("1250.5"); boolean true/false; date "YYYY-MM-DD"; datetime ISO 8601
in UTC ("2026-12-07T09:30:00+00:00"); multi_select a list of option values; user a user id.
A null (or an empty string or list) clears the key: absent keys are never stored."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

import marshmallow as ma

from .. import text
from ..custom_definitions import Definition, Definitions

MAX_TEXT = 1000
MAX_URL = 2000
MAX_EMAIL = 320
NUMBER_RE = re.compile(r"^-?[0-9]{1,15}(\.[0-9]{1,6})?$")
_EMAIL = ma.validate.Email()


# As `previous`: archived options are accepted (a value moved from another record of the
# organization, e.g. by a merge, rather than chosen anew).
KEEP_ARCHIVED: Any = object()


class Invalid(ValueError):
    """One value's problem (its message)."""


@dataclass
class Merged:
    """A write merged into a record's values: the new values, the problems by key, and the
    user ids that must be members of the organization (user fields)."""

    values: dict[str, Any]
    errors: dict[str, list[str]] = field(default_factory=dict)
    user_ids: dict[str, int] = field(default_factory=dict)


def _string(value: Any, max_len: int, *, single_line: bool = True) -> str:
    if not isinstance(value, str):
        raise Invalid("Not a valid string.")
    value = value.strip()
    if len(value) > max_len:
        raise Invalid(f"Longer than maximum length {max_len}.")
    if single_line and text.line_breaking_character(value) is not None:
        raise Invalid("Must be a single line: no control characters or line breaks.")
    return value


def _number(value: Any) -> str:
    if not isinstance(value, str) or not NUMBER_RE.match(value.strip()):
        raise Invalid('Must be a decimal string, e.g. "1250.50" (up to 15 digits, 6 decimals).')
    try:
        number = Decimal(value.strip())
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits decimals only
        raise Invalid("Not a valid number.") from exc
    return format(number.normalize(), "f") if number else "0"


def _date(value: Any) -> str:
    if not isinstance(value, str) or len(value) != 10:
        raise Invalid("Not a valid date (YYYY-MM-DD).")
    try:
        return dt.date.fromisoformat(value).isoformat()
    except ValueError as exc:
        raise Invalid("Not a valid date (YYYY-MM-DD).") from exc


def _datetime(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 40:
        raise Invalid("Not a valid datetime (ISO 8601 with a timezone).")
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as exc:
        raise Invalid("Not a valid datetime (ISO 8601 with a timezone).") from exc
    if parsed.tzinfo is None:
        raise Invalid("The datetime needs a timezone (e.g. Z or +02:00).")
    try:
        return parsed.astimezone(dt.UTC).isoformat()
    except OverflowError as exc:
        raise Invalid("The datetime is out of range.") from exc


def _url(value: Any) -> str:
    url = _string(value, MAX_URL)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in url:
        raise Invalid("Not a valid URL (http or https).")
    return url


def _email(value: Any) -> str:
    address = _string(value, MAX_EMAIL)
    try:
        _EMAIL(address)
    except ma.ValidationError as exc:
        raise Invalid("Not a valid email address.") from exc
    return address


def _option(definition: Definition, value: Any, previous: Any) -> str:
    if not isinstance(value, str) or value not in definition.options:
        raise Invalid(f"Not one of the options: {value!r}.")
    archived = definition.options[value]
    kept = previous is KEEP_ARCHIVED or previous == value
    kept = kept or (isinstance(previous, list) and value in previous)
    if archived and not kept:
        raise Invalid(f"The option {value!r} is archived.")
    return value


def clean(definition: Definition, value: Any, previous: Any = None) -> Any:
    """`value` in its stored form, None to clear; raises Invalid. `previous` (the record's
    value) may keep an archived option it already has."""
    if value is None or value == "" or value == []:
        return None
    kind = definition.type
    if kind == "text":
        return _string(value, MAX_TEXT, single_line=False) or None
    if kind == "number":
        return _number(value)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise Invalid("Not a valid boolean (true or false).")
        return value
    if kind == "date":
        return _date(value)
    if kind == "datetime":
        return _datetime(value)
    if kind == "single_select":
        return _option(definition, value, previous)
    if kind == "multi_select":
        if not isinstance(value, list):
            raise Invalid("Must be a list of option values.")
        return list(dict.fromkeys(_option(definition, v, previous) for v in value))
    if kind == "url":
        return _url(value) or None
    if kind == "email":
        return _email(value) or None
    if kind == "user":
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value < 2**31:
            raise Invalid("Must be the id of a member of the organization.")
        return value
    raise Invalid(f"Unknown type {kind!r}.")  # pragma: no cover - definitions are checked


def merge(
    definitions: Definitions,
    stored: Mapping[str, Any] | None,
    incoming: Mapping[str, Any] | None,
    *,
    creating: bool,
    keep_archived: bool = False,
) -> Merged:
    """Merge `incoming` ({key: value}, null clears) into `stored` key by key. Unknown keys
    are refused; required fields must have a value on create and may not be cleared; the
    values of keys no longer defined are dropped. `keep_archived`: values that already exist
    elsewhere (a merge's) may be archived options."""
    current = {k: v for k, v in (stored or {}).items() if k in definitions}
    merged = Merged(values=dict(current))
    for key, value in (incoming or {}).items():
        definition = definitions.get(key)
        if definition is None:
            merged.errors[key] = ["Unknown custom field."]
            continue
        try:
            previous = KEEP_ARCHIVED if keep_archived else current.get(key)
            cleaned = clean(definition, value, previous)
        except Invalid as exc:
            merged.errors[key] = [str(exc)]
            continue
        if cleaned is None:
            merged.values.pop(key, None)
            if definition.required:
                merged.errors[key] = ["This field is required: it cannot be cleared."]
            continue
        merged.values[key] = cleaned
        if definition.type == "user":
            merged.user_ids[key] = cleaned
    if creating:
        for key, definition in definitions.items():
            if definition.required and key not in merged.values and key not in merged.errors:
                merged.errors[key] = ["Missing data for required field."]
    return merged


def custom_fields_field(**kwargs: Any) -> ma.fields.Dict:
    """The `custom_fields` of a write: {key: value}; checked against the organization's
    definitions by the service (crm_domain.services.records.custom_fields)."""
    return ma.fields.Dict(
        keys=ma.fields.String(),
        values=ma.fields.Raw(allow_none=True),
        metadata={
            "description": "{key: value} by the organization's custom field definitions "
            "(GET /custom-fields); a write merges key by key, null clears a key. Problems are "
            "reported by key in details.errors.custom_fields",
            "example": {"budget": "12500.50", "segment": "enterprise", "renewal": "2027-01-31"},
        },
        **kwargs,
    )
