"""Bulk actions on a real stack: gunicorn, the Celery worker of the "imports" queue, beat. The
POST's outbox event reaches the worker through the drain; a worker killed mid-job is
replaced and beat's re-queueing resumes the job after the last committed batch, so every
record is changed exactly once (one event each, the counters adding up)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from crm_domain.db import Database
from crm_domain.models import Deal, OutboxEvent
from crm_domain.services.transfer import bulk_actions

from .stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.worker

STALL_SECONDS = 3
DONE_TIMEOUT = 300  # a safety net on a loaded machine, not a speed requirement


@pytest.fixture(scope="module")
def stack(app, test_services, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("bulk-stack")
    with running_stack(
        test_services, workdir, "bulk", IMPORT_STALL_SECONDS=str(STALL_SECONDS)
    ) as s:
        yield s


def seed_deals(stack: Stack, db: Database, n: int) -> tuple[dict[str, Any], list[int]]:
    """A tenant with `n` deals (written straight to the database: the API would take long)."""
    tenant = stack.tenant()
    with db.transaction() as s:
        template = s.get(Deal, tenant["deal"])
        assert template is not None
        rows = [
            {
                "organization_id": template.organization_id,
                "contact_id": template.contact_id,
                "owner_id": template.owner_id,
                "title": f"Deal {i}",
                "amount": template.amount,
                "currency": template.currency,
                "status": template.status,
                "stage": template.stage,
            }
            for i in range(n)
        ]
        ids = list(s.scalars(insert(Deal).returning(Deal.id), rows))
    return tenant, sorted([tenant["deal"], *ids])


def job(stack: Stack, tenant: dict[str, Any], job_id: int) -> dict[str, Any]:
    status, body = stack.http(
        "GET", f"/bulk-actions/{job_id}", None, tenant["token"], tenant["org"]
    )
    assert status == 200, body
    return dict(body)


def finished(stack: Stack, tenant: dict[str, Any], job_id: int) -> dict[str, Any]:
    return dict(
        wait_until(
            lambda: (j := job(stack, tenant, job_id))["status"] in ("done", "failed") and j,
            DONE_TIMEOUT,
            0.5,
        )
    )


def status_events(db: Database, org: int) -> tuple[int, int]:
    """(deal.status_changed events of the organization, distinct deals among them)."""
    with db.transaction() as s:
        row = s.execute(
            select(func.count(), func.count(func.distinct(OutboxEvent.payload["id"]))).where(
                OutboxEvent.organization_id == org, OutboxEvent.topic == "deal.status_changed"
            )
        ).one()
    return row[0], row[1]


def post(stack: Stack, tenant: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    status, queued = stack.http("POST", "/bulk-actions", body, tenant["token"], tenant["org"])
    assert status == 202, queued
    assert queued["status"] == "pending"
    return dict(queued)


def test_a_bulk_action_is_run_by_the_worker(stack: Stack, db: Database) -> None:
    tenant, _ = seed_deals(stack, db, 300)
    body = {"entity": "deal", "action": "update", "filter": {}, "changes": {"status": "lost"}}
    done = finished(stack, tenant, post(stack, tenant, body)["id"])
    assert done["status"] == "done", (done, stack.logs())
    assert (done["total"], done["done"], done["succeeded"], done["failed"]) == (301, 301, 301, 0)
    assert status_events(db, tenant["org"]) == (301, 301)


def test_a_killed_worker_is_replaced_and_the_job_resumes(stack: Stack, db: Database) -> None:
    tenant, ids = seed_deals(stack, db, 6000)
    body = {"entity": "deal", "action": "update", "ids": ids, "changes": {"status": "won"}}
    queued = post(stack, tenant, body)
    running = wait_until(
        lambda: (j := job(stack, tenant, queued["id"]))["done"] >= 400 and j, 120, 0.02
    )
    assert running["status"] == "running"
    stack.importer.kill()  # SIGKILL mid-batch: no acknowledgement, no clean-up
    stopped = job(stack, tenant, queued["id"])

    def no_progress_for_a_stall_interval() -> bool:
        with db.transaction() as s:
            stale = dt.timedelta(seconds=STALL_SECONDS)
            return queued["id"] in bulk_actions.stalled(s, stale)

    wait_until(no_progress_for_a_stall_interval, 60, 0.2)
    assert job(stack, tenant, queued["id"])["done"] == stopped["done"] < len(ids)
    stack.importer.start()  # what a process manager does; beat re-queues the stalled job
    done = finished(stack, tenant, queued["id"])
    assert done["status"] == "done", (done, stack.logs())
    total = len(ids)
    assert (done["total"], done["done"], done["succeeded"], done["failed"]) == (
        total,
        total,
        total,
        0,
    )
    assert status_events(db, tenant["org"]) == (total, total)  # nothing twice, nothing lost
