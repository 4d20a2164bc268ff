"""gunicorn's logging: our `crm_domain.logs` configuration (text or JSON) for gunicorn's
own loggers and the application's, and the access log with the request's route template,
status, duration, user, organization, how it authenticated (`auth`: token, key or none; an
API key by its id, never the key) (left in the WSGI environ by crm_api.observability) and
request id (the `X-Request-ID` response header).

`AccessLogger` (gunicorn's `logger_class`) gives the access line only the atoms these formats
use: gunicorn's own makes one of every request header, response header and WSGI environ key,
and a formatted timestamp, for every request (3.5 % of a web worker's CPU under get deal).

gunicorn writes the access line after the response went out, so its duration is the whole
request. The line never holds the query string, a header other than X-Request-ID, or a
body: no token or password can reach it. gunicorn.conf.py uses `logconfig()`,
`access_log_format()` and `AccessLogger`."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from gunicorn.glogging import Logger

from crm_domain import logs

from .observability import (
    API_KEY_ID_KEY,
    AUTH_KEY,
    HEADER,
    ORGANIZATION_KEY,
    ROUTE_KEY,
    USER_KEY,
)

# gunicorn access-log atoms: https://docs.gunicorn.org/en/stable/settings.html#access-log-format
# The WSGI environ keys the line shows (observability leaves them there), and their atoms.
_ENVIRON_KEYS = (ROUTE_KEY, USER_KEY, ORGANIZATION_KEY, AUTH_KEY, API_KEY_ID_KEY)
_ENVIRON_ATOMS = tuple((f"{{{key}}}e", key) for key in _ENVIRON_KEYS)
ROUTE, USER, ORGANIZATION, AUTH, API_KEY_ID = (atom for atom, _ in _ENVIRON_ATOMS)
_REQUEST_ID_HEADER = HEADER.lower()
REQUEST_ID_ATOM = f"{{{_REQUEST_ID_HEADER}}}o"  # the X-Request-ID response header

TEXT_ACCESS_FORMAT = (
    '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(M)sms'
    f" route=%({ROUTE})s user=%({USER})s org=%({ORGANIZATION})s"
    f" auth=%({AUTH})s key=%({API_KEY_ID})s"
)
JSON_ACCESS_MESSAGE = "%(m)s %(U)s %(s)s"  # the fields are separate keys (AccessFields)

_TEXT = {
    "remote_addr": "h",
    "method": "m",
    "path": "U",
    "route": ROUTE,
    "auth": AUTH,
    "request_id": REQUEST_ID_ATOM,
}
_NUMBERS = {
    "status": "s",
    "bytes": "B",
    "user_id": USER,
    "organization_id": ORGANIZATION,
    "api_key_id": API_KEY_ID,
}


class AccessFields(logging.Filter):
    """On gunicorn.access: the access atoms as fields of the record (JSON keys)."""

    def filter(self, record: logging.LogRecord) -> bool:
        atoms = record.args
        if not isinstance(atoms, Mapping):
            return True
        for field, atom in _TEXT.items():
            setattr(record, field, atoms.get(atom))
        for field, atom in _NUMBERS.items():
            value = atoms.get(atom)
            setattr(record, field, int(str(value)) if str(value).isdigit() else None)
        micros = atoms.get("D")
        record.duration_ms = round(micros / 1000, 3) if isinstance(micros, int) else None
        return True


class AccessLogger(Logger):
    """gunicorn's logger, with only the access atoms TEXT_ACCESS_FORMAT and AccessFields
    read (any other atom is "-", as gunicorn answers for one it lacks)."""

    def atoms(self, resp: Any, req: Any, environ: Any, request_time: Any) -> dict[str, Any]:
        status = resp.status
        if isinstance(status, str):
            status = status.split(None, 1)[0]
        micros = request_time.seconds * 1_000_000 + request_time.microseconds
        atoms: dict[str, Any] = {
            "h": environ.get("REMOTE_ADDR", "-"),
            "m": environ.get("REQUEST_METHOD"),
            "U": environ.get("PATH_INFO"),
            "s": status,
            "B": getattr(resp, "sent", None),
            "D": micros,
            "M": micros // 1000,
        }
        for atom, key in _ENVIRON_ATOMS:
            if key in environ:
                atoms[atom] = environ[key]
        for name, value in resp.headers:
            if name.lower() == _REQUEST_ID_HEADER:
                atoms[REQUEST_ID_ATOM] = value
        return atoms


def access_log_format(fmt: str) -> str:
    return JSON_ACCESS_MESSAGE if fmt == "json" else TEXT_ACCESS_FORMAT


def logconfig(fmt: str, *, access: bool = True) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: everything through the root handler of `logs.config`."""
    config = logs.config(fmt)
    config["filters"]["access_fields"] = {"()": AccessFields}
    config["loggers"] = {
        "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
        "gunicorn.access": {
            "level": "INFO" if access else "WARNING",
            "handlers": [],
            "propagate": True,
            "filters": ["access_fields"],
        },
    }
    return config
