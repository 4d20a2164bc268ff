"""Keep housekeeping out of the worker log when it found nothing to do.

Beat runs the outbox safety net every few seconds; Celery would log "received" and
"succeeded" for each run. This filter drops those lines for the tasks in QUIET_TASKS unless
the task returned something truthy (it acted), so an idle worker's log stays empty and a
re-dispatch that did something still shows."""

from __future__ import annotations

import logging

QUIET_TASKS = frozenset(
    {"crm.outbox.redispatch", "crm.reports.resend_pending", "crm.analytics.sweep_stale"}
)
_IDLE_RESULTS = frozenset({"0", "False", "None", "[]"})


class QuietWhenIdle(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if not isinstance(args, dict) or args.get("name") not in QUIET_TASKS:
            return True
        if "return_value" in args:
            return str(args["return_value"]) not in _IDLE_RESULTS
        return "received" not in str(record.msg)


def install() -> None:
    """Attach to the loggers Celery reports task receipt and completion on."""
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).addFilter(QuietWhenIdle())
