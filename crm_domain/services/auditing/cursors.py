"""Cursors of the audit log and the change feed: the position, signed and bound to one
organization (and, for the feed, to the database's identity). A cursor that was altered, made
up, or issued to another organization (or for the other list) is refused with 400
INVALID_CURSOR; one of another database identity with 400 CURSOR_STALE."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json

from ...errors import ValidationFailed

_MAC_BYTES = 12


def invalid() -> ValidationFailed:
    return ValidationFailed("Invalid cursor", code="INVALID_CURSOR")


def _mac(secret_key: str, payload: bytes) -> bytes:
    key = hashlib.sha256(f"crm-audit-cursor:{secret_key}".encode()).digest()
    return hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def encode(
    secret_key: str, kind: str, organization_id: int, position: list[int], epoch: str = ""
) -> str:
    payload = json.dumps([kind, organization_id, epoch, position], separators=(",", ":"))
    return f"{_b64(payload.encode())}.{_b64(_mac(secret_key, payload.encode()))}"


def decode(
    secret_key: str, kind: str, organization_id: int, cursor: str, *, size: int, epoch: str = ""
) -> list[int]:
    """The position in `cursor` (`size` integers), which must be this kind's, for this
    organization (and this database identity)."""
    try:
        body, mac = cursor.split(".")
        payload = _unb64(body)
        valid = hmac.compare_digest(_unb64(mac), _mac(secret_key, payload))
        found = json.loads(payload) if valid else [None] * 4
        found_kind, found_org, found_epoch, position = found
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        valid = False
    if not valid or found_kind != kind:
        raise invalid()
    if found_org != organization_id:
        raise ValidationFailed("The cursor belongs to another organization", code="INVALID_CURSOR")
    if found_epoch != epoch:
        raise ValidationFailed(
            "The database was restored or replaced since this cursor was given: its positions "
            "no longer hold. Start again without it (and skip the entries you have already)",
            code="CURSOR_STALE",
        )
    if (
        not isinstance(position, list)
        or len(position) != size
        or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in position
        )
    ):
        raise invalid()
    return position
