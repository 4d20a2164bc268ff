"""Imports on a real stack: gunicorn, a Celery worker consuming the "imports" queue, beat. The
upload's outbox event reaches the worker through the drain; a worker killed mid-import is
replaced and beat's re-queueing resumes the job after the last committed batch."""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from crm_domain.db import Database
from crm_domain.models import Contact
from crm_domain.services.transfer import imports

from .stack import Stack, running_stack, wait_until

pytestmark = pytest.mark.worker

STALL_SECONDS = 3
# How long an import may take before the test gives up waiting: a safety net, not a speed
# requirement (40,000 rows on a loaded 2-core machine took over two minutes).
DONE_TIMEOUT = 300


@pytest.fixture(scope="module")
def stack(app, test_services, tmp_path_factory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("import-stack")
    env = {"IMPORT_STALL_SECONDS": str(STALL_SECONDS), "IMPORT_BATCH_SIZE": "200"}
    with running_stack(test_services, workdir, "imports", **env) as s:
        yield s


@pytest.fixture
def tenant(stack: Stack) -> dict[str, Any]:
    token, org = stack.register("importer")
    return {"token": token, "org": org}


def upload(stack: Stack, tenant: dict[str, Any], content: bytes, kind: str) -> dict[str, Any]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="kind"\r\n\r\n{kind}\r\n'.encode(),
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n'
        "Content-Type: text/csv\r\n\r\n".encode(),
        content,
        f"\r\n--{boundary}--\r\n".encode(),
    ]
    request = urllib.request.Request(
        f"{stack.base}/api/v1/imports",
        data=b"".join(parts),
        method="POST",
        headers={
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Authorization": f"Bearer {tenant['token']}",
            "X-Organization-Id": str(tenant["org"]),
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 202
        return json.loads(response.read())


def job(stack: Stack, tenant: dict[str, Any], job_id: int) -> dict[str, Any]:
    status, body = stack.http("GET", f"/imports/{job_id}", None, tenant["token"], tenant["org"])
    assert status == 200, body
    return body


def contacts_csv(n: int) -> bytes:
    tag = uuid.uuid4().hex[:6]
    lines = ["name,email,phone"] + [
        f"Person {i},p{i}-{tag}@example.com,+1 555 {i}" for i in range(n)
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


def contact_count(db: Database, org: int) -> tuple[int, int]:
    """(contacts, distinct import rows) of the organization."""
    with db.transaction() as s:
        row = s.execute(
            select(func.count(), func.count(func.distinct(Contact.import_row))).where(
                Contact.organization_id == org
            )
        ).one()
    return row[0], row[1]


def test_an_upload_is_imported_by_the_worker(stack: Stack, db: Database, tenant) -> None:
    queued = upload(stack, tenant, contacts_csv(1000), "contacts")
    assert queued["status"] == "pending"
    done = wait_until(
        lambda: (j := job(stack, tenant, queued["id"]))["status"] in ("done", "failed") and j,
        60,
        0.2,
    )
    assert done["status"] == "done", (done, stack.logs())
    assert (done["rows_done"], done["created"], done["error_rows"]) == (1000, 1000, 0)
    assert contact_count(db, tenant["org"]) == (1000, 1000)


def test_a_killed_worker_is_replaced_and_the_import_resumes(
    stack: Stack, db: Database, tenant
) -> None:
    rows = 40_000
    queued = upload(stack, tenant, contacts_csv(rows), "contacts")
    running = wait_until(
        lambda: (j := job(stack, tenant, queued["id"]))["rows_done"] >= 400 and j, 60, 0.02
    )
    assert running["status"] == "running"
    stack.importer.kill()  # SIGKILL mid-batch: no acknowledgement, no clean-up
    stalled = job(stack, tenant, queued["id"])

    def no_progress_for_a_stall_interval() -> bool:
        """What beat goes by: no heartbeat for IMPORT_STALL_SECONDS (a positive signal that
        nothing, not even an orphaned pool process, carried on with the job)."""
        with db.transaction() as s:
            return queued["id"] in imports.stalled(s, dt.timedelta(seconds=STALL_SECONDS))

    wait_until(no_progress_for_a_stall_interval, 60, 0.2)
    assert job(stack, tenant, queued["id"])["rows_done"] == stalled["rows_done"] < rows
    assert stalled["status"] == "running"
    stack.importer.start()  # what a process manager does; beat re-queues the stalled job
    done = wait_until(
        lambda: (j := job(stack, tenant, queued["id"]))["status"] in ("done", "failed") and j,
        DONE_TIMEOUT,
        0.5,
    )
    assert done["status"] == "done", (done, stack.logs())
    assert (done["rows_done"], done["created"], done["error_rows"]) == (rows, rows, 0)
    assert contact_count(db, tenant["org"]) == (rows, rows)  # nothing twice, nothing lost
