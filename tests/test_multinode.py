"""Past one machine: two API servers and two fast workers on one database and broker.

Each API is a gunicorn master of its own on its own port (as on two hosts behind a load
balancer), each fast worker a Celery node of its own name. Writers go through both APIs at
once; one API and one worker are SIGKILLed mid-stream. Nothing is lost (every write that was
answered 2xx is in the database) and nothing doubles (every committed write's timeline entry
exists exactly once). One beat serves both nodes (docs/SCALING.md: beat is a singleton)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import func, select

from crm_domain.db import Database
from crm_domain.models import Activity, Contact, OutboxEvent
from scripts.procfile import Process

from .stack import Stack, running_stack, wait_until
from .test_workers import DELIVERY_TIMEOUT, timeline_matches_outbox, undelivered

pytestmark = pytest.mark.worker

MAX_WRITES = 400  # per writer: a bound on the loop, never reached in a normal run
MAX_SECONDS = 90


@dataclass
class Writer:
    """Alternates a deal's status and creates contacts through one API; after that API stops
    answering it moves on to the other (what a load balancer does)."""

    name: str
    bases: list[str]
    deal: int
    patches_ok: int = 0
    patches_sent: int = 0
    contacts_ok: list[int] = field(default_factory=list)
    failures: int = 0
    served_by: dict[str, int] = field(default_factory=dict)
    status: str = "new"  # the deal's status as last seen (a new deal is "new")

    def run(self, stack: Stack, token: str, org: int, stop: threading.Event) -> None:
        deadline = time.monotonic() + MAX_SECONDS
        for i in range(MAX_WRITES):
            if stop.is_set() or time.monotonic() > deadline:
                return
            base = self.bases[0]
            if i % 3 == 2:
                body = {"name": f"{self.name}-{i}-{uuid.uuid4().hex[:6]}"}
                code, answer = stack.http("POST", "/contacts", body, token, org, base=base)
                if code == 201:
                    self.contacts_ok.append(answer["id"])
            else:
                # Each one a change of the committed status (after a failover the deal was
                # read again: a request cut off by the kill may or may not have committed).
                body = {"status": "in_progress" if self.status == "new" else "new"}
                self.patches_sent += 1
                code, answer = stack.http(
                    "PATCH", f"/deals/{self.deal}", body, token, org, base=base
                )
                if code == 200:
                    self.patches_ok += 1
                    self.status = answer["status"]
            if 200 <= code < 300:
                self.served_by[base] = self.served_by.get(base, 0) + 1
            elif code == 0 and len(self.bases) > 1:  # this API is gone: fail over
                self.failures += 1
                self.bases.pop(0)
                code, answer = stack.http(
                    "GET", f"/deals/{self.deal}", None, token, org, base=self.bases[0]
                )
                assert code == 200, (code, answer)
                self.status = answer["status"]
            else:
                raise AssertionError(f"{self.name}: unexpected answer {code} {answer}")


def drains_done(process: Process) -> int:
    assert process.log_path is not None
    text = process.log_path.read_text(errors="replace") if process.log_path.exists() else ""
    return sum(
        1 for line in text.splitlines() if "crm.outbox.drain[" in line and "succeeded" in line
    )


def status_changes(db: Database, deal_id: int) -> int:
    with db.transaction() as s:
        return (
            s.scalar(
                select(func.count()).where(
                    Activity.deal_id == deal_id, Activity.type == "status_changed"
                )
            )
            or 0
        )


def test_two_apis_and_two_workers_lose_and_double_nothing_when_one_of_each_is_killed(
    app, db: Database, test_services, tmp_path: Path
) -> None:
    with running_stack(test_services, tmp_path, "multinode") as stack:
        web_b, base_b = stack.add_web("web-b")
        worker_b = stack.add_worker("fast-b")
        token, org = stack.register()
        code, contact = stack.http("POST", "/contacts", {"name": "C"}, token, org)
        assert code == 201, contact
        deals = []
        for title in ("A", "B"):
            code, deal = stack.http(
                "POST", "/deals", {"contact_id": contact["id"], "title": title}, token, org
            )
            assert code == 201, deal
            deals.append(deal["id"])
        # Writer "a" starts on API A, writer "b" on API B; both fail over to the survivor.
        writers = [
            Writer("a", [stack.base], deals[0]),
            Writer("b", [base_b, stack.base], deals[1]),
        ]
        stop = threading.Event()
        errors: list[BaseException] = []

        def guarded(target: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    target()
                except BaseException as error:  # reported by the main thread
                    errors.append(error)
                    stop.set()

            return run

        threads = [
            threading.Thread(target=guarded(lambda w=w: w.run(stack, token, org, stop)))
            for w in writers
        ]
        for thread in threads:
            thread.start()
        try:
            # Mid-stream: both APIs have served writes and both workers have drained.
            wait_until(
                lambda: (
                    errors
                    or (
                        all(
                            len(w.served_by) == 1 and sum(w.served_by.values()) >= 10
                            for w in writers
                        )
                        and drains_done(stack.worker) > 0
                        and drains_done(worker_b) > 0
                    )
                ),
                60,
                0.05,
            )
            assert not errors, errors
            web_b.kill()  # SIGKILL the gunicorn master and its workers: requests in flight die
            stack.worker.kill()  # SIGKILL node A's worker: its claimed batch is neither
            # committed nor acknowledged
            killed_at = [w.patches_sent + len(w.contacts_ok) for w in writers]
            wait_until(
                lambda: (
                    errors
                    or all(
                        w.patches_sent + len(w.contacts_ok) >= n + 30
                        for w, n in zip(writers, killed_at, strict=True)
                    )
                ),
                60,
                0.05,
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        assert not errors, errors
        # Writer b lost API B and carried on through API A.
        assert writers[1].failures == 1 and writers[1].bases == [stack.base]
        assert stack.base in writers[1].served_by and base_b in writers[1].served_by
        try:
            wait_until(lambda: undelivered(db, org) == 0, DELIVERY_TIMEOUT, 0.5)
        except TimeoutError:
            pytest.fail(f"events left undelivered\n{stack.logs()}")

        # Nothing lost: every 2xx write is in the database ...
        for writer in writers:
            with db.transaction() as s:
                found = s.scalars(
                    select(Contact.id).where(
                        Contact.organization_id == org, Contact.id.in_(writer.contacts_ok)
                    )
                ).all()
            assert sorted(found) == sorted(writer.contacts_ok)
            # ... and every committed status change has its timeline entry. A request cut
            # off by the kill may have committed without an answer: at most the ones sent.
            changes = status_changes(db, writer.deal)
            assert writer.patches_ok <= changes <= writer.patches_sent, writer
        # Nothing doubled: each timeline event of the organization became exactly one entry.
        timeline_matches_outbox(db, org)
        with db.transaction() as s:
            events = s.scalar(
                select(func.count()).where(
                    OutboxEvent.organization_id == org, OutboxEvent.topic == "timeline.activity"
                )
            )
            entries = s.scalar(select(func.count()).where(Activity.organization_id == org))
        assert events == entries
        # The survivor worker took over what the killed one left.
        assert worker_b.alive and drains_done(worker_b) > 0
