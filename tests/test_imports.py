"""CSV import: the upload's checks, the run (in-process: the suite's outbox delivers inline and
runs the import right after the upload commits), per-row errors, duplicates, roles,
resumption after an interruption, tenant isolation and beat's safety net."""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import io
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import String, event, func, select, update
from sqlalchemy.orm import Session

from crm_domain import csvio
from crm_domain.db import Database
from crm_domain.enums import ImportKind, ImportStatus
from crm_domain.models import Contact, Deal, ImportFile, ImportJob, OutboxEvent
from crm_domain.services.transfer import import_run, imports, rows
from crm_worker.importing import run_import

from .api import ApiClient, User, error_code

CONTACTS_HEADER = "name,email,phone,owner_email\r\n"


AfterBatch = Callable[[int], None]


@pytest.fixture
def after_import_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[AfterBatch], contextlib.AbstractContextManager[None]]]:
    """`with after_import_batch(hook): ...` calls `hook(last_row)` right after each import
    batch commits, as a worker dying there would be seen (the hook raises)."""
    hooks: list[AfterBatch] = []
    record_batch = imports.record_batch

    def recording(session: Session, job: ImportJob, *, last_row: int, **kwargs: Any) -> None:
        record_batch(session, job, last_row=last_row, **kwargs)
        session.info["test_import_batch_row"] = last_row

    def committed(session: Session) -> None:
        last_row = session.info.pop("test_import_batch_row", None)
        if last_row is not None:
            for hook in list(hooks):
                hook(last_row)

    @contextlib.contextmanager
    def calling(hook: AfterBatch) -> Iterator[None]:
        hooks.append(hook)
        try:
            yield
        finally:
            hooks.remove(hook)

    monkeypatch.setattr(imports, "record_batch", recording)
    event.listen(Session, "after_commit", committed)
    try:
        yield calling
    finally:
        event.remove(Session, "after_commit", committed)


def _email(tag: str = "") -> str:
    return f"c-{tag}{uuid.uuid4().hex[:10]}@example.com"


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def _job(api: ApiClient, user: User, job_id: int, org: int | None = None) -> dict[str, Any]:
    r = api.get(f"/imports/{job_id}", user=user, org=org or user.org_id)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _import(
    api: ApiClient, user: User, content: str | bytes, org: int | None = None, **kw: Any
) -> dict[str, Any]:
    """Upload and return the finished job (the inline outbox runs it before we ask)."""
    r = api.upload(user, content, org=org, **kw)
    assert r.status_code == 202, r.get_json()
    body = r.get_json()
    assert r.headers["Location"].endswith(f"/api/v1/imports/{body['id']}")
    return _job(api, user, body["id"], org)


def _contacts(api: ApiClient, user: User, org: int | None = None, **query: Any) -> list[dict]:
    r = api.get("/contacts", user=user, org=org or user.org_id, query={"page_size": 100, **query})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


def _deals(api: ApiClient, user: User, org: int | None = None) -> list[dict]:
    r = api.get("/deals", user=user, org=org or user.org_id, query={"page_size": 100})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


# --- happy paths ------------------------------------------------------------------------------


def test_contacts_import_creates_every_row(api: ApiClient) -> None:
    owner = api.register()
    emails = [_email() for _ in range(3)]
    content = _csv(
        ["name", "email", "phone"],
        [["Ann", emails[0], "+1 555"], [" Bob ", emails[1], ""], ["Cid", emails[2], "42"]],
    )
    r = api.upload(owner, content, filename="people.csv")
    assert r.status_code == 202, r.get_json()
    queued = r.get_json()
    assert queued["status"] == "pending"
    assert queued["rows_total"] == 3
    assert queued["kind"] == "contacts"
    assert queued["on_duplicate"] == "skip"
    assert queued["filename"] == "people.csv"

    job = _job(api, owner, queued["id"])
    assert job["status"] == "done", job
    assert (job["rows_total"], job["rows_done"]) == (3, 3)
    assert (job["created"], job["updated"], job["skipped"], job["error_rows"]) == (3, 0, 0, 0)
    assert job["errors"] == [] and job["errors_total"] == 0
    assert job["started_at"] and job["finished_at"]
    got = {c["email"]: c for c in _contacts(api, owner)}
    assert set(got) == set(emails)
    assert got[emails[0]]["phone"] == "+1 555"
    assert got[emails[1]]["name"] == "Bob"  # trimmed like the API trims
    assert got[emails[1]]["phone"] is None
    assert {c["owner_id"] for c in got.values()} == {owner.id}


def test_the_file_is_dropped_when_the_job_is_done(api: ApiClient, db: Database) -> None:
    owner = api.register()
    job = _import(api, owner, CONTACTS_HEADER + "Ann,,,\r\n")
    assert job["status"] == "done"
    with db.transaction() as s:
        assert s.get(ImportFile, job["id"]) is None


def test_deals_import_with_status_stage_and_contact_by_email_or_id(api: ApiClient) -> None:
    owner = api.register()
    by_email = api.contact(owner, email=_email())
    by_id = api.contact(owner, email=None)
    content = _csv(
        ["title", "amount", "currency", "status", "stage", "contact_id", "contact_email"],
        [
            ["Won deal", "1500.5", "eur", "won", "closed", "", by_email["email"].upper()],
            ["Fresh", "", "", "", "", str(by_id["id"]), ""],
            ["Lost", "20", "GBP", "lost", "proposal", str(by_id["id"]), ""],
        ],
    )
    job = _import(api, owner, content, kind="deals")
    assert job["status"] == "done", job
    assert (job["created"], job["error_rows"]) == (3, 0), job["errors"]
    deals = {d["title"]: d for d in _deals(api, owner)}
    won = deals["Won deal"]
    assert (won["amount"], won["currency"], won["status"], won["stage"]) == (
        "1500.50",
        "EUR",
        "won",
        "closed",
    )
    assert won["contact_id"] == by_email["id"]
    fresh = deals["Fresh"]
    assert (fresh["amount"], fresh["currency"], fresh["status"], fresh["stage"]) == (
        "0.00",
        "USD",
        "new",
        "qualification",
    )
    assert fresh["contact_id"] == by_id["id"]
    assert {d["owner_id"] for d in deals.values()} == {owner.id}


def test_imported_deals_count_in_analytics_with_one_event_per_batch(
    api: ApiClient, db: Database
) -> None:
    owner = api.register()
    contact = api.contact(owner)
    rows = [[f"D{i}", "10.00", "USD", "won", "closed", str(contact["id"])] for i in range(7)]
    content = _csv(["title", "amount", "currency", "status", "stage", "contact_id"], rows)
    job = _import(api, owner, content, kind="deals")
    assert job["created"] == 7
    summary = api.get("/analytics/deals/summary", user=owner, org=owner.org_id).get_json()
    assert summary["total_deals"] == 7
    assert summary["by_status"]["won"] == {"count": 7, "total_amount": "70.00"}
    with db.transaction() as s:
        events = s.scalars(
            select(OutboxEvent).where(
                OutboxEvent.organization_id == owner.org_id, OutboxEvent.topic == "deal.changed"
            )
        ).all()
    assert len(events) == 1  # one batch (500 rows), one event
    assert events[0].payload == {"import_id": job["id"], "deals": 7}
    # no timeline entries: an imported deal is created, like a POST /deals
    deal = _deals(api, owner)[0]
    r = api.get(f"/deals/{deal['id']}/activities", user=owner, org=owner.org_id)
    assert r.get_json()["items"] == []


def test_utf8_bom_crlf_quotes_and_blank_lines(api: ApiClient) -> None:
    owner = api.register()
    e1, e2 = _email(), _email()
    content = (
        "\ufeffName,EMAIL,Phone\r\n"
        f'"Müller, Jürgen",{e1},"+49 ""30"""\r\n'
        "\r\n"
        f'"Multi\nLine",{e2},\r\n'
    ).encode()
    job = _import(api, owner, content)
    assert job["rows_total"] == 2
    # the quoted line break stays inside its cell (one row of three cells), where a name,
    # which is one line, refuses it
    assert (job["created"], job["error_rows"]) == (1, 1), job["errors"]
    [error] = job["errors"]
    assert (error["row"], error["field"], error["code"]) == (4, "name", "VALIDATION_ERROR")
    assert "single line" in error["message"]
    got = {c["email"]: c for c in _contacts(api, owner)}
    assert got[e1]["name"] == "Müller, Jürgen"
    assert got[e1]["phone"] == '+49 "30"'
    assert e2 not in got


def test_list_imports_newest_first(api: ApiClient) -> None:
    owner = api.register()
    first = _import(api, owner, CONTACTS_HEADER + "A,,,\r\n")
    second = _import(api, owner, CONTACTS_HEADER + "B,,,\r\n")
    r = api.get("/imports", user=owner, org=owner.org_id)
    assert r.status_code == 200
    body = r.get_json()
    assert [j["id"] for j in body["items"]] == [second["id"], first["id"]]
    assert body["total"] == 2
    assert "errors" not in body["items"][0]


# --- row errors -------------------------------------------------------------------------------


def test_row_errors_carry_row_numbers_and_fields(api: ApiClient) -> None:
    owner = api.register()
    outsider = api.register()
    good = _email()
    content = _csv(
        ["name", "email", "phone", "owner_email"],
        [
            ["Good", good, "", ""],  # row 2
            ["", "not-an-email", "", ""],  # row 3: two problems
            ["Nul\x00name", "", "", ""],  # row 4
            ["Owner elsewhere", "", "", outsider.email],  # row 5
            ["Long phone", "", "9" * 51, ""],  # row 6
        ],
    )
    content += "Too,many,cells,in,this,row\r\n"  # row 7
    job = _import(api, owner, content)
    assert job["status"] == "done"
    assert (job["rows_done"], job["created"], job["error_rows"]) == (6, 1, 5)
    errors = [(e["row"], e["field"], e["code"]) for e in job["errors"]]
    assert errors == [
        (3, "name", "VALIDATION_ERROR"),
        (3, "email", "VALIDATION_ERROR"),
        (4, "name", "VALIDATION_ERROR"),
        (5, "owner_email", "OWNER_NOT_FOUND"),
        (6, "phone", "VALIDATION_ERROR"),
        (7, "", "CSV_ROW_WIDTH"),
    ]
    assert job["errors_total"] == 6
    messages = {(e["row"], e["field"]): e["message"] for e in job["errors"]}
    assert messages[(3, "email")] == "Not a valid email address."
    assert messages[(4, "name")] == "Must not contain NUL characters."
    assert [c["email"] for c in _contacts(api, owner)] == [good]

    r = api.get(f"/imports/{job['id']}/errors.csv", user=owner, org=owner.org_id)
    assert r.status_code == 200
    assert r.mimetype == "text/csv"
    assert "attachment" in r.headers["Content-Disposition"]
    lines = list(csv.reader(io.StringIO(r.get_data(as_text=True))))
    assert lines[0] == ["row", "field", "code", "message"]
    assert [(int(a), b, c) for a, b, c, _ in lines[1:]] == errors


def test_deal_rows_get_the_api_rules(api: ApiClient) -> None:
    owner = api.register()
    other_org = api.register()
    foreign = api.contact(other_org, email=_email("foreign"))
    contact = api.contact(owner)
    cid = str(contact["id"])
    content = _csv(
        ["title", "amount", "currency", "status", "stage", "contact_id", "contact_email"],
        [
            ["Won at zero", "0", "", "won", "closed", cid, ""],  # row 2
            ["Bad enums", "5", "EURO", "done", "start", cid, ""],  # row 3
            ["Foreign id", "5", "", "", "", str(foreign["id"]), ""],  # row 4
            ["Foreign email", "5", "", "", "", "", foreign["email"]],  # row 5
            ["No contact", "5", "", "", "", "", ""],  # row 6
            ["Bad id", "-3", "", "", "", "abc", ""],  # row 7
            ["Fine", "5", "", "in_progress", "negotiation", cid, ""],  # row 8
        ],
    )
    job = _import(api, owner, content, kind="deals")
    assert (job["created"], job["error_rows"]) == (1, 6)
    errors = {(e["row"], e["field"]): e["code"] for e in job["errors"]}
    assert errors == {
        (2, "amount"): "WON_REQUIRES_POSITIVE_AMOUNT",
        (3, "currency"): "VALIDATION_ERROR",
        (3, "status"): "VALIDATION_ERROR",
        (3, "stage"): "VALIDATION_ERROR",
        (4, "contact_id"): "CONTACT_NOT_FOUND",
        (5, "contact_email"): "CONTACT_NOT_FOUND",
        (6, "contact_email"): "VALIDATION_ERROR",
        (7, "amount"): "VALIDATION_ERROR",
        (7, "contact_id"): "VALIDATION_ERROR",
    }
    assert [d["title"] for d in _deals(api, owner)] == ["Fine"]
    assert [d["title"] for d in _deals(api, other_org)] == []


# --- duplicates -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["skip", "update"])
def test_duplicates_by_email_skip_or_update(api: ApiClient, mode: str) -> None:
    owner = api.register()
    email = _email()
    existing = api.contact(owner, name="Old name", email=email, phone="111")
    fresh = _email()
    content = _csv(
        ["name", "email"],
        [["New name", email.upper()], ["Fresh", fresh], ["Fresh again", fresh]],
    )
    job = _import(api, owner, content, on_duplicate=mode)
    assert job["on_duplicate"] == mode
    got = {c["email"].lower(): c for c in _contacts(api, owner)}
    assert len(got) == 2  # no second contact for either e-mail
    if mode == "skip":
        assert (job["created"], job["updated"], job["skipped"]) == (1, 0, 2)
        assert got[email]["name"] == "Old name"
        assert got[fresh]["name"] == "Fresh"
    else:
        assert (job["created"], job["updated"], job["skipped"]) == (1, 2, 0)
        assert got[email]["id"] == existing["id"]
        assert got[email]["name"] == "New name"
        assert got[email]["email"] == email.upper()
        assert got[email]["phone"] == "111"  # no phone column: the phone stays
        assert got[fresh]["name"] == "Fresh again"


def test_update_with_an_empty_phone_cell_clears_it(api: ApiClient) -> None:
    owner = api.register()
    email = _email()
    api.contact(owner, email=email, phone="111")
    job = _import(
        api, owner, _csv(["name", "email", "phone"], [["X", email, ""]]), on_duplicate="update"
    )
    assert job["updated"] == 1
    assert _contacts(api, owner)[0]["phone"] is None


# --- roles ------------------------------------------------------------------------------------


def test_member_imports_only_rows_they_own(api: ApiClient) -> None:
    team = api.team()
    member, manager = team["member"], team["manager"]
    theirs = api.contact(manager, email=_email("mgr"))
    mine = api.contact(member, email=_email("mine"))
    new = _email("new")
    content = _csv(
        ["name", "email", "phone", "owner_email"],
        [
            ["Self-owned", new, "", member.email.upper()],  # row 2: naming themselves is fine
            ["Given away", _email(), "", manager.email],  # row 3: 403 rule
            ["Not mine", theirs["email"], "", ""],  # row 4: update of another's contact
            ["Mine", mine["email"], "", ""],  # row 5
        ],
    )
    job = _import(api, member, content, on_duplicate="update")
    errors = {(e["row"], e["field"]): e["code"] for e in job["errors"]}
    assert errors == {(3, "owner_email"): "OWNER_ASSIGN_FORBIDDEN", (4, "email"): "NOT_OWNER"}
    assert (job["created"], job["updated"], job["error_rows"]) == (1, 1, 2)
    got = {c["email"]: c for c in _contacts(api, member)}
    assert got[new]["owner_id"] == member.id
    assert got[mine["email"]]["name"] == "Mine"
    assert got[theirs["email"]]["name"] == theirs["name"]


def test_manager_assigns_owners_by_email(api: ApiClient) -> None:
    team = api.team()
    manager, member = team["manager"], team["member"]
    contact = api.contact(manager)
    content = _csv(
        ["title", "contact_id", "owner_email"],
        [["For member", contact["id"], member.email], ["Own", contact["id"], ""]],
    )
    job = _import(api, manager, content, kind="deals")
    assert (job["created"], job["error_rows"]) == (2, 0)
    owners = {d["title"]: d["owner_id"] for d in _deals(api, manager)}
    assert owners == {"For member": member.id, "Own": manager.id}


def test_retry_rules(api: ApiClient, app, db: Database, after_import_batch) -> None:
    team = api.team()
    member, member2, owner = team["member"], team["member2"], team["owner"]
    job_id = _pending_job(db, member, CONTACTS_HEADER + "A,,,\r\nB,,,\r\n", kind="contacts")

    def crash(last_row: int) -> None:
        raise Crash("boom")

    settings = app.extensions["crm_settings"]
    with after_import_batch(crash):
        assert run_import(db, job_id, settings) is ImportStatus.FAILED
    r = api.post(f"/imports/{job_id}/retry", user=member2, org=member.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_OWNER"
    r = api.post(f"/imports/{job_id}/retry", user=owner, org=member.org_id)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["status"] == "pending"
    job = _job(api, owner, job_id)
    assert (job["status"], job["created"], job["error"]) == ("done", 2, None)
    assert len(_contacts(api, owner)) == 2  # the retry wrote nothing twice
    r = api.post(f"/imports/{job_id}/retry", user=member, org=member.org_id)
    assert r.status_code == 409
    assert error_code(r) == "IMPORT_NOT_RETRYABLE"


def test_a_job_fails_when_its_creator_left_the_organization(
    api: ApiClient, app, db: Database
) -> None:
    owner, user = api.register(), api.register()
    api.add_member(owner, owner.org_id, user, "manager")
    user.org_id = owner.org_id
    job_id = _pending_job(db, user, CONTACTS_HEADER + "A,,,\r\n", kind="contacts")
    r = api.delete(f"/organizations/{owner.org_id}/members/{user.id}", user=owner)
    assert r.status_code == 204
    assert run_import(db, job_id, app.extensions["crm_settings"]) is ImportStatus.FAILED
    body = _job(api, owner, job_id)
    assert body["status"] == "failed"
    assert body["error"] == "The importing user is no longer a member of the organization"
    assert _contacts(api, owner) == []


def _actor(user_id: int, org_id: int):
    from crm_domain.context import Actor
    from crm_domain.enums import Role

    return Actor(user_id=user_id, organization_id=org_id, role=Role.MANAGER)


# --- interruption and resumption --------------------------------------------------------------


class Crash(Exception):
    pass


def _pending_job(db: Database, user: User, content: str, kind: str = "deals") -> int:
    """A job created without delivering its outbox event (the test runs it by hand)."""
    from crm_domain.csvio import inspect

    layout = inspect(io.BytesIO(content.encode()), kind)  # type: ignore[arg-type]
    session = db.new_session()
    session.info["outbox_publisher"] = None
    try:
        with session.begin():
            job = imports.create(
                session,
                _actor(user.id, user.org_id),
                kind=kind,  # type: ignore[arg-type]
                on_duplicate="skip",  # type: ignore[arg-type]
                filename="x.csv",
                content=content.encode(),
                rows_total=layout.rows,
            )
            return job.id
    finally:
        session.close()


def _count(db: Database, model: Any, org: int) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).where(model.organization_id == org)) or 0


def _deal_csv(contact_id: int, n: int, bad_every: int = 0) -> str:
    rows = [
        [f"Deal {i}", "0" if bad_every and i % bad_every == 0 else "10", "won", contact_id]
        for i in range(n)
    ]
    return _csv(["title", "amount", "status", "contact_id"], rows)


def test_a_failed_run_resumes_after_the_last_committed_batch(
    api: ApiClient, app, db: Database, after_import_batch
) -> None:
    owner = api.register()
    contact = api.contact(owner)
    job_id = _pending_job(db, owner, _deal_csv(contact["id"], 23, bad_every=5))
    settings = app.extensions["crm_settings"]
    settings_small = type(settings)(**{**settings.__dict__, "import_batch_size": 4})
    seen: list[int] = []

    def crash_after_three_batches(last_row: int) -> None:
        seen.append(last_row)
        if len(seen) == 3:
            raise Crash("worker lost")

    with after_import_batch(crash_after_three_batches):
        status = run_import(db, job_id, settings_small)
    assert status is ImportStatus.FAILED
    job = _job(api, owner, job_id)
    assert job["status"] == "failed"
    assert "worker lost" in job["error"]
    assert job["rows_done"] == 12  # three committed batches of four
    assert _count(db, Deal, owner.org_id) == 12 - 3  # rows 0, 5, 10 are errors
    assert job["errors_total"] == 3

    r = api.post(f"/imports/{job_id}/retry", user=owner, org=owner.org_id)
    assert r.status_code == 202
    job = _job(api, owner, job_id)
    assert job["status"] == "done"
    assert (job["rows_done"], job["created"], job["error_rows"]) == (23, 18, 5)
    assert [e["row"] for e in job["errors"]] == [2, 7, 12, 17, 22]  # each reported once
    assert _count(db, Deal, owner.org_id) == 18
    titles = sorted(d["title"] for d in _deals(api, owner))
    assert len(titles) == len(set(titles))


def test_a_dead_run_is_taken_over_and_rows_are_never_written_twice(
    api: ApiClient, app, db: Database, after_import_batch
) -> None:
    owner = api.register()
    contact = api.contact(owner)
    job_id = _pending_job(db, owner, _deal_csv(contact["id"], 10))
    settings = app.extensions["crm_settings"]
    small = type(settings)(**{**settings.__dict__, "import_batch_size": 3})

    def die(last_row: int) -> None:
        raise KeyboardInterrupt  # like a worker killed mid-run: nothing marks the job

    with pytest.raises(KeyboardInterrupt), after_import_batch(die):
        run_import(db, job_id, small)
    job = _job(api, owner, job_id)
    assert (job["status"], job["rows_done"]) == ("running", 3)

    # a live-looking run is not claimed again...
    assert run_import(db, job_id, small) is None
    # ...one without a heartbeat for IMPORT_STALL_SECONDS is, and beat lists it
    with db.transaction() as s:
        s.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(heartbeat_at=func.now() - dt.timedelta(minutes=5))
        )
        assert job_id in imports.stalled(s, dt.timedelta(seconds=60))
    assert run_import(db, job_id, small) is ImportStatus.DONE
    assert _count(db, Deal, owner.org_id) == 10

    # even rows handed to the writer again insert nothing twice (the import row key)
    content = _deal_csv(contact["id"], 10).encode()
    with db.transaction() as s:
        s.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(status="pending", last_row=1, rows_done=0, created_count=0)
        )
        s.add(ImportFile(job_id=job_id, size=len(content), content=content))
    assert run_import(db, job_id, small) is ImportStatus.DONE
    assert _count(db, Deal, owner.org_id) == 10
    assert _job(api, owner, job_id)["created"] == 0


def test_rows_that_cannot_be_read_or_written_are_row_errors_and_the_rest_are_imported(
    api: ApiClient, app, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader that raises on a row, and one that lets through a value the database refuses
    (as a loader without the NUL check would): each such row is a ROW_FAILED row error with
    the reason, and every other row of its batch and of the file is imported."""
    owner = api.register()
    table = [[f"Name {i}", _email(), "", ""] for i in range(10)]
    table[3][0], table[6][0] = "explode", "NUL"  # CSV rows 5 and 8
    job_id = _pending_job(
        db, owner, _csv(["name", "email", "phone", "owner_email"], table), "contacts"
    )
    schema_loader = rows.LOADERS[ImportKind.CONTACTS]

    def loader(cells: dict[str, str]) -> dict[str, Any]:
        data = schema_loader(cells)
        if data["name"] == "explode":
            raise RuntimeError("the loader broke on this row")
        if data["name"] == "NUL":
            data["name"] = "NUL\x00"  # PostgreSQL cannot store it in text
        return data

    monkeypatch.setitem(rows.LOADERS, ImportKind.CONTACTS, loader)
    options = import_run.Options(stale_after=dt.timedelta(minutes=5), batch_size=4)
    status = import_run.run(db, job_id, options)
    assert status is ImportStatus.DONE
    job = _job(api, owner, job_id)
    assert (job["rows_done"], job["created"], job["error_rows"]) == (10, 8, 2), job["errors"]
    errors = [(e["row"], e["field"], e["code"]) for e in job["errors"]]
    assert errors == [(5, "", "ROW_FAILED"), (8, "", "ROW_FAILED")]
    assert "the loader broke on this row" in job["errors"][0]["message"]
    assert "NUL" in job["errors"][1]["message"]
    names = sorted(c["name"] for c in _contacts(api, owner))
    assert names == sorted(f"Name {i}" for i in range(10) if i not in (3, 6))


# --- values longer than their column ---------------------------------------------------------


def _too_long(model: Any, column: str) -> str:
    """A value one character longer than the column holds."""
    return "L" * (model.__table__.c[column].type.length + 1)


def test_over_long_names_and_titles_are_row_errors_with_the_api_s_message(
    api: ApiClient,
) -> None:
    """The rows meet the API's length rules: the row error names the field and says what a
    POST would say, and nothing of the row is written, cut or whole."""
    owner = api.register()
    contact = api.contact(owner, email=_email())
    name, title = _too_long(Contact, "name"), _too_long(Deal, "title")
    posted = {
        "name": api.post("/contacts", user=owner, org=owner.org_id, json={"name": name}),
        "title": api.post(
            "/deals",
            user=owner,
            org=owner.org_id,
            json={"title": title, "contact_id": contact["id"]},
        ),
    }
    said = {f: r.get_json()["error"]["details"]["errors"]["json"][f] for f, r in posted.items()}

    contacts = _import(api, owner, _csv(["name"], [["Kept"], [name]]))
    deals = _import(
        api,
        owner,
        _csv(["title", "contact_id"], [["Kept", contact["id"]], [title, contact["id"]]]),
        kind="deals",
    )
    for job, field in ((contacts, "name"), (deals, "title")):
        assert (job["created"], job["error_rows"]) == (1, 1), job["errors"]
        [error] = job["errors"]
        assert (error["row"], error["field"], error["code"]) == (3, field, "VALIDATION_ERROR")
        assert [error["message"]] == said[field]
    assert sorted(c["name"] for c in _contacts(api, owner)) == ["John Doe", "Kept"]
    assert [d["title"] for d in _deals(api, owner)] == ["Kept"]


def _text_of_length(column: str, length: int) -> str:
    """A value of `length` characters the column's field takes were it not for its length."""
    if "email" in column:
        return "a" * (length - len("@example.com")) + "@example.com"
    return "9" * length if column == "phone" else "L" * length


@pytest.mark.parametrize(
    ("kind", "model", "required"),
    [
        (ImportKind.CONTACTS, Contact, {"name": "N"}),
        (ImportKind.DEALS, Deal, {"title": "T", "contact_id": "1"}),
    ],
)
def test_each_text_column_takes_from_a_row_exactly_what_it_holds(
    kind: ImportKind, model: Any, required: dict[str, str]
) -> None:
    """Every CSV column stored in a varchar(n) column: n characters load, n + 1 are the
    row's error on that column (the row schemas and the tables cannot drift apart)."""
    load = rows.LOADERS[kind]
    checked = []
    for name in csvio.COLUMNS[kind]:
        column = model.__table__.c.get(name)
        if column is None or type(column.type) is not String:  # a lookup, a number, an enum
            continue
        n = column.type.length
        fits = "USD"[:n] if name == "currency" else _text_of_length(name, n)
        assert load({**required, name: fits})[name] == fits, name
        with pytest.raises(rows.RowInvalid) as refused:
            load({**required, name: fits + fits[-1]})
        assert list(refused.value.errors) == [name]
        checked.append(name)
    assert checked == {"contacts": ["name", "email", "phone"], "deals": ["title", "currency"]}[kind]


@pytest.mark.parametrize(
    ("kind", "model", "column"),
    [(ImportKind.CONTACTS, Contact, "name"), (ImportKind.DEALS, Deal, "title")],
)
def test_a_value_longer_than_its_column_is_never_cut_on_the_way_in(
    api: ApiClient,
    db: Database,
    monkeypatch: pytest.MonkeyPatch,
    kind: ImportKind,
    model: Any,
    column: str,
) -> None:
    """Should a value longer than its column get past the row's schema (a schema that no
    longer matches its table), the database refuses the row (a ROW_FAILED row error) instead
    of the write cutting it to the column's length; the rows around it are imported."""
    owner = api.register()
    contact = api.contact(owner, email=_email())
    long_value = _too_long(model, column)
    schema_loader = rows.LOADERS[kind]

    def loader(cells: dict[str, str]) -> dict[str, Any]:
        data = schema_loader(cells)
        if data[column] == "Long":
            data[column] = long_value  # as a schema without the column's length lets it through
        return data

    monkeypatch.setitem(rows.LOADERS, kind, loader)
    other = [] if kind is ImportKind.CONTACTS else [contact["id"]]
    table = [[name, *other] for name in ("Before", "Long", "After")]  # CSV rows 2 to 4
    header = [column] if kind is ImportKind.CONTACTS else [column, "contact_id"]
    job_id = _pending_job(db, owner, _csv(header, table), kind.value)
    options = import_run.Options(stale_after=dt.timedelta(minutes=5))
    assert import_run.run(db, job_id, options) is ImportStatus.DONE
    job = _job(api, owner, job_id)
    assert (job["created"], job["error_rows"]) == (2, 1), job["errors"]
    [error] = job["errors"]
    assert (error["row"], error["code"]) == (3, "ROW_FAILED")
    assert error["message"] == (
        "The row could not be written: StringDataRightTruncation: "
        f"value too long for type character varying({len(long_value) - 1})"
    )
    if kind is ImportKind.CONTACTS:
        stored = [c["name"] for c in _contacts(api, owner) if c["id"] != contact["id"]]
    else:
        stored = [d["title"] for d in _deals(api, owner)]
    assert sorted(stored) == ["After", "Before"]


class Frozen(BaseException):
    """A run that stops mid-job without a trace (its worker froze or was killed): nothing
    marks the job, its lease stays."""


def _no_heartbeat_for_minutes(db: Database, job_id: int) -> None:
    """The clock: the job's run has shown no progress for longer than IMPORT_STALL_SECONDS."""
    with db.transaction() as s:
        s.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(heartbeat_at=func.now() - dt.timedelta(minutes=5))
        )


def test_a_run_whose_job_was_taken_over_writes_no_further_batch(
    api: ApiClient, app, db: Database, after_import_batch
) -> None:
    """Run A stalls after its first batch; run B takes the job over, writes the second batch
    and freezes in turn. When A wakes up, the lease is B's: A writes nothing more and stops
    (it does not write the batch B wrote, nor finish the job)."""
    owner = api.register()
    contact = api.contact(owner)
    job_id = _pending_job(db, owner, _deal_csv(contact["id"], 10))
    settings = app.extensions["crm_settings"]
    small = type(settings)(**{**settings.__dict__, "import_batch_size": 3})
    phase = ["a stalls"]

    def after_batch(last_row: int) -> None:
        if phase[0] == "a stalls":  # A's first batch is committed; A stalls here
            phase[0] = "b runs"
            _no_heartbeat_for_minutes(db, job_id)
            with pytest.raises(Frozen):
                run_import(db, job_id, small)  # B takes the job over...
            phase[0] = "a wakes up"
        elif phase[0] == "b runs":
            raise Frozen  # ...and freezes after its first batch

    with after_import_batch(after_batch):
        assert run_import(db, job_id, small) is None
    assert phase == ["a wakes up"]
    job = _job(api, owner, job_id)
    assert (job["status"], job["rows_done"], job["created"]) == ("running", 6, 6)
    assert _count(db, Deal, owner.org_id) == 6
    with db.transaction() as s:
        assert s.get_one(ImportJob, job_id).attempts == 2

    _no_heartbeat_for_minutes(db, job_id)  # B never wakes up: beat's next run finishes
    assert run_import(db, job_id, small) is ImportStatus.DONE
    job = _job(api, owner, job_id)
    assert (job["status"], job["rows_done"], job["created"]) == ("done", 10, 10)
    assert _count(db, Deal, owner.org_id) == 10


def test_a_job_whose_runs_keep_dying_is_given_up_after_max_attempts(
    api: ApiClient, app, db: Database, after_import_batch
) -> None:
    owner = api.register()
    rows = "".join(f"Person {i},,,\r\n" for i in range(imports.MAX_ATTEMPTS * 2))
    job_id = _pending_job(db, owner, CONTACTS_HEADER + rows, kind="contacts")
    settings = app.extensions["crm_settings"]
    one_row = type(settings)(**{**settings.__dict__, "import_batch_size": 1})

    def dies(last_row: int) -> None:
        raise Frozen

    for _ in range(imports.MAX_ATTEMPTS):  # each run commits one row, then its worker dies
        with pytest.raises(Frozen), after_import_batch(dies):
            run_import(db, job_id, one_row)
        _no_heartbeat_for_minutes(db, job_id)
    assert run_import(db, job_id, one_row) is None  # the next run gives up instead
    job = _job(api, owner, job_id)
    assert (job["status"], job["rows_done"]) == ("failed", imports.MAX_ATTEMPTS)
    assert job["error"] == (
        f"Gave up after {imports.MAX_ATTEMPTS} attempts; retry when the cause is fixed"
    )
    assert len(_contacts(api, owner)) == imports.MAX_ATTEMPTS
    # once the cause is fixed, a retry resumes it with a fresh count of attempts
    r = api.post(f"/imports/{job_id}/retry", user=owner, org=owner.org_id)
    assert r.status_code == 202, r.get_json()
    job = _job(api, owner, job_id)
    assert (job["status"], job["created"]) == ("done", imports.MAX_ATTEMPTS * 2)
    assert len(_contacts(api, owner)) == imports.MAX_ATTEMPTS * 2


def test_finished_jobs_are_not_claimed_again(api: ApiClient, app, db: Database) -> None:
    owner = api.register()
    job = _import(api, owner, CONTACTS_HEADER + "A,,,\r\n")
    assert run_import(db, job["id"], app.extensions["crm_settings"]) is None
    assert len(_contacts(api, owner)) == 1


def test_beat_lists_pending_jobs_whose_run_request_was_lost(api: ApiClient, db: Database) -> None:
    owner = api.register()
    job_id = _pending_job(db, owner, CONTACTS_HEADER + "A,,,\r\n", kind="contacts")
    with db.transaction() as s:
        assert job_id not in imports.stalled(s, dt.timedelta(seconds=60))
        s.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(created_at=func.now() - dt.timedelta(minutes=5))
        )
    with db.transaction() as s:
        assert job_id in imports.stalled(s, dt.timedelta(seconds=60))


# --- tenants ----------------------------------------------------------------------------------


def test_imports_never_touch_another_organization(api: ApiClient, db: Database) -> None:
    a, b = api.register(), api.register()
    shared = _email("shared")
    b_contact = api.contact(b, name="B's", email=shared)
    job = _import(api, a, _csv(["name", "email"], [["A's", shared]]), on_duplicate="update")
    assert (job["created"], job["updated"]) == (1, 0)  # B's contact is not a duplicate for A
    assert _contacts(api, b)[0]["name"] == b_contact["name"]
    assert _count(db, Contact, b.org_id) == 1
    r = api.get(f"/imports/{job['id']}", user=b, org=b.org_id)
    assert r.status_code == 404
    assert error_code(r) == "IMPORT_NOT_FOUND"
    for path in (f"/imports/{job['id']}/errors.csv", f"/imports/{job['id']}/retry"):
        method = "POST" if path.endswith("retry") else "GET"
        r = api.call(method, path, user=b, org=b.org_id)
        assert r.status_code == 404, path
    assert api.get("/imports", user=b, org=b.org_id).get_json()["items"] == []
