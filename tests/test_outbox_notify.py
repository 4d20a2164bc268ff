"""OUTBOX_WAKE=notify (the default) on a real stack (the Procfile's processes): the web process
asks for no drain itself; a trigger NOTIFYs at commit and beat's listener
(crm_worker.outbox_listener) asks for one. The safety-net sweep is an hour away here, so only
the notification can deliver within seconds.

- an event committed while beat listens is delivered;
- with beat stopped, an event stays pending (the web published nothing);
- beat, started again, asks for a drain as its listener connects: the event is delivered."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from crm_domain.db import Database
from crm_domain.models import OutboxEvent

from .stack import running_stack, wait_until

QUIET_SECONDS = 3.0  # ample for a drain to run had anyone asked for one


def _pending(db: Database, org: int) -> int:
    with db.transaction() as s:
        return int(
            s.scalar(
                select(func.count())
                .select_from(OutboxEvent)
                .where(OutboxEvent.organization_id == org, OutboxEvent.delivered_at.is_(None))
            )
            or 0
        )


def _patch(stack: Any, tenant: dict[str, Any], stage: str) -> None:
    status, body = stack.http(
        "PATCH", f"/deals/{tenant['deal']}", {"stage": stage}, tenant["token"], tenant["org"]
    )
    assert status == 200, body


def test_beat_hears_each_commit_and_the_web_asks_for_nothing(
    test_services: Any, tmp_path: Path, db: Database
) -> None:
    with running_stack(
        test_services, tmp_path, "notify", OUTBOX_REDISPATCH_SECONDS="3600"
    ) as stack:
        tenant = stack.tenant()  # its deal's event, committed while beat listens
        wait_until(lambda: _pending(db, tenant["org"]) == 0, 30, 0.1)
        _patch(stack, tenant, "proposal")
        wait_until(lambda: _pending(db, tenant["org"]) == 0, 30, 0.1)

        stack.beat.stop()
        _patch(stack, tenant, "negotiation")
        time.sleep(QUIET_SECONDS)
        assert _pending(db, tenant["org"]) > 0, stack.logs()  # nobody asked for a drain

        stack.beat.start()
        wait_until(lambda: _pending(db, tenant["org"]) == 0, 30, 0.1)
