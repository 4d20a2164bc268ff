"""Logging for every process (API, workers, beat): readable text by default, one JSON object
per line with LOG_FORMAT=json (python-json-logger), and the request id on every record.

`config()` is a `logging.config.dictConfig` dictionary: gunicorn takes it as
`logconfig_dict` (crm_api.access_log adds its access logger), Celery through its
`setup_logging` signal (crm_worker.observability)."""

from __future__ import annotations

import logging
from typing import Any

from . import request_id

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] [%(request_id)s] %(name)s: %(message)s"
# The record attributes every JSON line carries (renamed), after "time" (ISO 8601, UTC);
# `extra` fields of a record are added as keys of their own.
JSON_FIELDS = ["levelname", "name", "process", "message", "request_id"]
JSON_RENAMES = {"levelname": "level", "name": "logger", "process": "pid"}


class RequestIdFilter(logging.Filter):
    """Puts the current request id on a record (unless the record brings its own, as the
    outbox's per-event lines and the access log do); `missing` when there is none."""

    def __init__(self, missing: str | None = None) -> None:
        super().__init__()
        self.missing = missing

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id.current() or self.missing
        return True


def config(fmt: str = "text", level: str | int = "INFO") -> dict[str, Any]:
    """Root logger to stderr in `fmt` ("text" or "json") at `level`."""
    if fmt not in FORMATS:
        raise ValueError(f"LOG_FORMAT must be one of {FORMATS}, not {fmt!r}")
    if fmt == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": JSON_RENAMES,
            "timestamp": "time",
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "request_id": {"()": RequestIdFilter, "missing": None if fmt == "json" else "-"}
        },
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stderr",
                "formatter": "default",
                "filters": ["request_id"],
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }
