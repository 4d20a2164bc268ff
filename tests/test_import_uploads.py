"""What POST /imports refuses before anything is stored: each a clear 4xx in the unified error
body, never a 500, and no job is created."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import func, select

from crm_api import create_app
from crm_domain.db import Database
from crm_domain.models import ImportJob
from crm_domain.settings import Settings

from .api import PREFIX, ApiClient, User, error_code

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def owner(app) -> User:
    return ApiClient(app.test_client()).register()


def _jobs(db: Database, user: User) -> int:
    with db.transaction() as s:
        return s.scalar(select(func.count()).where(ImportJob.organization_id == user.org_id)) or 0


BAD_FILES = [
    ("empty", b"", "contacts", "CSV_EMPTY"),
    ("bom only", b"\xef\xbb\xbf", "contacts", "CSV_EMPTY"),
    ("header only", b"name,email\r\n", "contacts", "CSV_NO_ROWS"),
    ("header and blank lines", b"name,email\r\n\r\n,\r\n", "contacts", "CSV_NO_ROWS"),
    (
        "latin-1",
        "name,email\r\nMüller,m@example.com\r\n".encode("latin-1"),
        "contacts",
        "CSV_NOT_UTF8",
    ),
    ("utf-16", "name\r\nAnn\r\n".encode("utf-16"), "contacts", "CSV_NOT_UTF8"),
    (
        "unbalanced quote",
        b'name,email\r\n"Ann,a@example.com\r\nBob,b@example.com\r\n',
        "contacts",
        "CSV_MALFORMED",
    ),
    ("text after a closing quote", b'name\r\n"Ann"x\r\n', "contacts", "CSV_MALFORMED"),
    (
        "missing required column",
        b"email,phone\r\na@example.com,1\r\n",
        "contacts",
        "CSV_MISSING_COLUMNS",
    ),
    ("deal without a contact column", b"title,amount\r\nX,1\r\n", "deals", "CSV_MISSING_COLUMNS"),
    ("unknown column", b"name,emial\r\nAnn,a@example.com\r\n", "contacts", "CSV_UNKNOWN_COLUMNS"),
    ("deal column in contacts", b"name,title\r\nAnn,X\r\n", "contacts", "CSV_UNKNOWN_COLUMNS"),
    ("repeated column", b"name,Name\r\nAnn,Ann\r\n", "contacts", "CSV_DUPLICATE_COLUMNS"),
]


@pytest.mark.parametrize(
    ("content", "kind", "code"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES]
)
def test_bad_files_are_400(
    api: ApiClient, db: Database, owner: User, content: bytes, kind: str, code: str
) -> None:
    before = _jobs(db, owner)
    r = api.upload(owner, content, kind=kind)
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == code
    assert r.get_json()["error"]["message"]
    assert _jobs(db, owner) == before


def test_bad_bytes_are_located(api: ApiClient, owner: User) -> None:
    content = "name,email\r\nAnn,a@example.com\r\nMüller,m@example.com\r\n".encode("latin-1")
    r = api.upload(owner, content)
    assert error_code(r) == "CSV_NOT_UTF8"
    details = r.get_json()["error"]["details"]
    assert (details["line"], details["byte"]) == (3, content.index(b"\xfc"))


def test_malformed_csv_names_the_row(api: ApiClient, owner: User) -> None:
    content = b'name\r\nAnn\r\nBob\r\n"Cid\r\n'
    r = api.upload(owner, content)
    assert error_code(r) == "CSV_MALFORMED"
    assert r.get_json()["error"]["details"]["row"] == 4


def test_missing_columns_lists_the_expected_ones(api: ApiClient, owner: User) -> None:
    r = api.upload(owner, b"title\r\nX\r\n", kind="deals")
    details = r.get_json()["error"]["details"]
    assert "contact_id or contact_email" in r.get_json()["error"]["message"]
    assert details["expected"][:2] == ["title", "amount"]
    assert details["found"] == ["title"]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"kind": "tasks"}, "kind"),
        ({"kind": ""}, "kind"),
        ({}, "kind"),
        ({"kind": "contacts", "on_duplicate": "merge"}, "on_duplicate"),
        ({"kind": "contacts", "extra": "1"}, "extra"),
    ],
)
def test_bad_form_fields_are_400(
    api: ApiClient, db: Database, owner: User, form: dict[str, str], field: str
) -> None:
    import io

    before = _jobs(db, owner)
    r = api.client.post(
        PREFIX + "/imports",
        data={**form, "file": (io.BytesIO(b"name\r\nAnn\r\n"), "a.csv")},
        content_type="multipart/form-data",
        headers={"Authorization": f"Bearer {owner.token}", "X-Organization-Id": str(owner.org_id)},
    )
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == "VALIDATION_ERROR"
    assert field in r.get_json()["error"]["details"]["errors"]["multipart"]
    assert _jobs(db, owner) == before


def test_no_file_or_a_json_body_is_400(api: ApiClient, owner: User) -> None:
    r = api.post("/imports", user=owner, org=owner.org_id, json={"kind": "contacts"})
    assert r.status_code == 400
    assert error_code(r) == "VALIDATION_ERROR"
    assert "file" in r.get_json()["error"]["details"]["errors"]["multipart"]


def test_a_file_over_the_limit_is_413(api: ApiClient, db: Database, owner: User) -> None:
    before = _jobs(db, owner)
    line = b"Name,someone@example.com,+1 555 0100,\r\n"
    content = b"name,email,phone,owner_email\r\n" + line * (20 * MIB // len(line) + 1)
    assert len(content) > 20 * MIB
    r = api.upload(owner, content)
    assert r.status_code == 413, r.get_json()
    assert error_code(r) == "PAYLOAD_TOO_LARGE"
    assert r.get_json()["error"]["message"] == "An upload may be at most 20971520 bytes (20 MiB)"
    assert _jobs(db, owner) == before


def test_a_file_of_exactly_the_limit_is_accepted(app) -> None:
    """The limit is the file's size: the multipart framing around it does not count."""
    limit = 100_000
    small = create_app(
        dataclasses.replace(Settings.from_env(), import_max_bytes=limit),
        TESTING=True,
        OUTBOX_DISPATCH="none",
        RATELIMIT_ENABLED=False,
    )
    try:
        api = ApiClient(small.test_client())
        owner = api.register()
        header, line = b"name,email\r\n", b"Someone,\r\n"
        rows = (limit - len(header)) // len(line)
        padded = b"S" * ((limit - len(header)) % len(line) + len(line) - 3) + b",\r\n"
        exact = header + line * (rows - 1) + padded
        assert len(exact) == limit
        r = api.upload(owner, exact, filename="a-rather-long-file-name-" + "x" * 200 + ".csv")
        assert r.status_code == 202, r.get_json()
        assert r.get_json()["rows_total"] == rows
        r = api.upload(owner, header + line * (rows - 1) + b"S" + padded)  # one byte more
        assert r.status_code == 413 and error_code(r) == "PAYLOAD_TOO_LARGE"
        assert (
            r.get_json()["error"]["message"]
            == "An upload may be at most 100000 bytes (0.0953674 MiB)"
        )
    finally:
        small.extensions["crm_db"].dispose()


def test_uploads_may_exceed_the_usual_1_mib_but_other_bodies_may_not(
    api: ApiClient, owner: User
) -> None:
    line = b"N" * 250 + b",,+1 555 0100,\r\n"
    content = b"name,email,phone,owner_email\r\n" + line * (2 * MIB // len(line))
    r = api.upload(owner, content)
    assert r.status_code == 202, r.get_json()
    assert r.get_json()["rows_total"] == 2 * MIB // len(line)
    r = api.post("/contacts", user=owner, org=owner.org_id, json={"name": "x" * (2 * MIB)})
    assert r.status_code == 413
    assert error_code(r) == "PAYLOAD_TOO_LARGE"


def test_nobody_uploads_without_a_token_or_membership(api: ApiClient, owner: User) -> None:
    stranger = api.register()
    r = api.upload(stranger, b"name\r\nA\r\n", org=owner.org_id)
    assert r.status_code == 403
    assert error_code(r) == "NOT_ORGANIZATION_MEMBER"
    r = api.client.post(PREFIX + "/imports", data={"kind": "contacts"})
    assert r.status_code == 401
