"""Idempotency-Key on POST and PATCH, in-process: the first answer is replayed (status, body,
Location, ETag, `Idempotent-Replayed: true`) without doing the work again; another request
under the same key is a 422; each caller (user or API key, per organization) has keys of its
own; an error answer is not kept; the answer is stored in the change's own transaction; beat
purges expired keys. Concurrency on a real server: test_idempotency_server.py."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask.views import MethodView
from sqlalchemy import func, select, text, update
from werkzeug.test import TestResponse

from crm_api import create_app
from crm_api.errors import error_response
from crm_api.extensions import Blueprint, current_actor, transaction
from crm_domain import idempotency
from crm_domain.db import Database
from crm_domain.models import Activity, Deal, IdempotencyKey
from crm_domain.services.records import contacts
from crm_worker.tasks.idempotency import purge_expired

from .api import ApiClient, User, error_code
from .test_api_keys import make_key

REPLAYED = "Idempotent-Replayed"


def _key() -> str:
    return str(uuid.uuid4())


def _deals(db: Database, org: int) -> int:
    with db.transaction() as s:
        return int(s.scalar(select(func.count()).where(Deal.organization_id == org)) or 0)


def _post_deal(
    api: ApiClient, key: str, *, contact: int, title: str = "Retried", **who: Any
) -> TestResponse:
    body = {"contact_id": contact, "title": title, "amount": "10.00"}
    return api.post("/deals", json=body, headers={"Idempotency-Key": key}, **who)


def _win(api: ApiClient, owner: User, deal_id: int, key: str) -> TestResponse:
    """PATCH the deal to won under the idempotency key."""
    return api.patch(
        f"/deals/{deal_id}",
        user=owner,
        org=owner.org_id,
        json={"status": "won"},
        headers={"Idempotency-Key": key},
    )


@pytest.fixture
def owner(api: ApiClient) -> User:
    return api.register()


@pytest.fixture
def contact(api: ApiClient, owner: User) -> int:
    return int(api.contact(owner)["id"])


def test_a_retried_post_is_answered_the_same_and_done_once(
    api: ApiClient, db: Database, owner: User, contact: int
) -> None:
    key = _key()
    who = {"user": owner, "org": owner.org_id}
    first = _post_deal(api, key, contact=contact, **who)
    assert first.status_code == 201 and REPLAYED not in first.headers
    again = _post_deal(api, key, contact=contact, **who)
    assert again.status_code == 201
    assert again.headers[REPLAYED] == "true"
    assert again.get_data() == first.get_data()
    assert again.headers["Content-Type"] == first.headers["Content-Type"]
    assert _deals(db, owner.org_id) == 1
    # the same body spelled differently is the same request
    spelled = api.client.post(
        "/api/v1/deals",
        data=f'{{ "amount" : "10.00", "title": "Retried",  "contact_id": {contact} }}',
        headers={
            "Idempotency-Key": key,
            "Content-Type": "application/json",
            "Authorization": f"Bearer {owner.token}",
            "X-Organization-Id": str(owner.org_id),
        },
    )
    assert spelled.status_code == 201 and spelled.headers[REPLAYED] == "true"
    assert _deals(db, owner.org_id) == 1


def test_the_same_key_for_another_request_is_422(
    api: ApiClient, db: Database, owner: User, contact: int
) -> None:
    key = _key()
    who = {"user": owner, "org": owner.org_id}
    assert _post_deal(api, key, contact=contact, **who).status_code == 201
    other_body = _post_deal(api, key, contact=contact, title="Another", **who)
    assert other_body.status_code == 422, other_body.get_json()
    assert error_code(other_body) == "IDEMPOTENCY_KEY_REUSED"
    other_route = api.post("/contacts", json={"name": "x"}, headers={"Idempotency-Key": key}, **who)
    assert other_route.status_code == 422
    assert _deals(db, owner.org_id) == 1
    assert api.get("/contacts", **who).get_json()["total"] == 1


def test_a_patch_is_replayed_with_its_etag_and_leaves_one_timeline_entry(
    api: ApiClient, db: Database, owner: User
) -> None:
    deal = api.deal(owner)
    key = _key()
    first = _win(api, owner, deal["id"], key)
    assert first.status_code == 200
    # meanwhile someone else changes the deal: the replay is still the first answer
    assert (
        api.patch(
            f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"title": "Renamed"}
        ).status_code
        == 200
    )
    again = _win(api, owner, deal["id"], key)
    assert again.status_code == 200 and again.headers[REPLAYED] == "true"
    assert again.get_json() == first.get_json() and again.headers["ETag"] == first.headers["ETag"]
    assert api.get(f"/deals/{deal['id']}", user=owner, org=owner.org_id).get_json()["title"] == (
        "Renamed"
    )
    with db.transaction() as s:
        changes = s.scalar(
            select(func.count()).where(
                Activity.deal_id == deal["id"], Activity.type == "status_changed"
            )
        )
    assert changes == 1


def test_the_location_header_is_replayed(api: ApiClient, owner: User) -> None:
    key = _key()

    def upload() -> TestResponse:
        return api.client.post(
            "/api/v1/imports",
            data={"kind": "contacts", "file": (_csv(), "people.csv")},
            content_type="multipart/form-data",
            headers={
                "Authorization": f"Bearer {owner.token}",
                "X-Organization-Id": str(owner.org_id),
                "Idempotency-Key": key,
            },
        )

    first, again = upload(), upload()  # each body has a multipart boundary of its own
    assert first.status_code == again.status_code == 202
    assert again.headers[REPLAYED] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.get_json()["id"] == first.get_json()["id"]
    listed = api.get("/imports", user=owner, org=owner.org_id).get_json()
    assert listed["total"] == 1


def _csv() -> Any:
    import io

    return io.BytesIO(b"name,email\r\nAda,ada@example.com\r\n")


def test_callers_have_keys_of_their_own(
    api: ApiClient, db: Database, owner: User, contact: int
) -> None:
    """The same key from another user, from the user's API key, or in another organization
    is another key."""
    key = _key()
    api_key = make_key(api, owner)["key"]
    colleague = api.register()
    api.add_member(owner, owner.org_id, colleague, "manager")
    assert _post_deal(api, key, contact=contact, user=owner, org=owner.org_id).status_code == 201
    r = _post_deal(api, key, contact=contact, user=colleague, org=owner.org_id)
    assert r.status_code == 201 and REPLAYED not in r.headers
    r = _post_deal(api, key, contact=contact, token=api_key)
    assert r.status_code == 201 and REPLAYED not in r.headers
    assert _post_deal(api, key, contact=contact, token=api_key).headers[REPLAYED] == "true"
    assert _deals(db, owner.org_id) == 3
    # the colleague's own organization: a deal there, under the same key
    own = api.contact(colleague)
    r = _post_deal(api, key, contact=own["id"], user=colleague, org=colleague.org_id)
    assert r.status_code == 201 and REPLAYED not in r.headers


@pytest.mark.parametrize("bad", ["", "x" * 256, "tab\tinside", "caf\u00e9"])
def test_a_bad_key_is_400_and_nothing_is_done(
    api: ApiClient, db: Database, owner: User, contact: int, bad: str
) -> None:
    r = api.client.post(
        "/api/v1/deals",
        json={"contact_id": contact, "title": "T"},
        headers={
            "Authorization": f"Bearer {owner.token}",
            "X-Organization-Id": str(owner.org_id),
            "Idempotency-Key": bad.encode().decode("latin-1"),
        },
    )
    assert r.status_code == 400, r.get_json()
    assert error_code(r) == "IDEMPOTENCY_KEY_INVALID"
    assert _deals(db, owner.org_id) == 0


def test_a_key_of_255_characters_is_fine(api: ApiClient, owner: User, contact: int) -> None:
    key = "k" * 255
    who = {"user": owner, "org": owner.org_id}
    assert _post_deal(api, key, contact=contact, **who).status_code == 201
    assert _post_deal(api, key, contact=contact, **who).headers[REPLAYED] == "true"


def test_an_error_is_not_kept_a_retry_runs_again(api: ApiClient, db: Database, owner: User) -> None:
    deal = api.deal(owner, amount="0.00")
    key = _key()
    r = _win(api, owner, deal["id"], key)
    assert r.status_code == 400 and error_code(r) == "WON_REQUIRES_POSITIVE_AMOUNT"
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(IdempotencyKey.key == key)) == 0
    api.patch(f"/deals/{deal['id']}", user=owner, org=owner.org_id, json={"amount": "5.00"})
    r = _win(api, owner, deal["id"], key)
    assert r.status_code == 200 and REPLAYED not in r.headers
    assert r.get_json()["status"] == "won"
    assert _win(api, owner, deal["id"], key).headers[REPLAYED] == "true"


@pytest.fixture
def refusing_answers(db: Database) -> Iterator[str]:
    """A trigger that makes storing the answer fail for keys starting with the prefix it
    yields (as a crash between the change and its record would)."""
    prefix = f"fail-{uuid.uuid4().hex[:6]}-"
    function = f"refuse_{prefix.replace('-', '_')}"
    with db.transaction() as s:
        s.execute(
            text(
                f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN IF NEW.key LIKE '{prefix}%' AND NEW.status IS NOT NULL THEN"
                " RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$"
            )
        )
        s.execute(
            text(
                f"CREATE TRIGGER {function} BEFORE UPDATE ON idempotency_keys"
                f" FOR EACH ROW EXECUTE FUNCTION {function}()"
            )
        )
    try:
        yield prefix
    finally:
        with db.transaction() as s:
            s.execute(text(f"DROP TRIGGER {function} ON idempotency_keys"))
            s.execute(text(f"DROP FUNCTION {function}()"))


def test_the_change_and_its_answer_commit_together(
    api: ApiClient, db: Database, owner: User, contact: int, refusing_answers: str
) -> None:
    """Storing the answer fails: the deal made before it in the same request is not kept."""
    key = refusing_answers + "1"
    r = _post_deal(api, key, contact=contact, user=owner, org=owner.org_id)
    assert r.status_code == 500, r.get_json()
    assert _deals(db, owner.org_id) == 0
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(IdempotencyKey.key == key)) == 0


def test_routes_outside_an_organization_are_idempotent_too(api: ApiClient, owner: User) -> None:
    key = _key()

    def digest_off() -> TestResponse:
        return api.patch(
            "/auth/me", user=owner, json={"email_digest": False}, headers={"Idempotency-Key": key}
        )

    assert digest_off().status_code == 200
    assert digest_off().headers[REPLAYED] == "true"


def test_routes_without_a_caller_or_with_a_secret_answer_ignore_the_header(
    api: ApiClient, owner: User
) -> None:
    key = _key()
    logins = [
        api.post(
            "/auth/login",
            json={"email": owner.email, "password": "StrongPassword123"},
            headers={"Idempotency-Key": key},
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in logins] == [200, 200]
    assert logins[0].get_json()["refresh_token"] != logins[1].get_json()["refresh_token"]
    made = [
        api.post(
            "/api-keys",
            user=owner,
            org=owner.org_id,
            json={"name": "k", "scope": "read"},
            headers={"Idempotency-Key": key},
        )
        for _ in range(2)
    ]
    assert [r.status_code for r in made] == [201, 201] and REPLAYED not in made[1].headers
    assert made[0].get_json()["key"] != made[1].get_json()["key"]


def test_an_expired_key_is_new_again_and_beat_purges_expired_ones(
    api: ApiClient, db: Database, owner: User, contact: int
) -> None:
    key = _key()
    who = {"user": owner, "org": owner.org_id}
    assert _post_deal(api, key, contact=contact, **who).status_code == 201
    expire = (
        update(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .values(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    )
    with db.transaction() as s:
        s.execute(expire)
    r = _post_deal(api, key, contact=contact, title="A day later", **who)
    assert r.status_code == 201 and REPLAYED not in r.headers
    assert _deals(db, owner.org_id) == 2
    with db.transaction() as s:
        s.execute(expire)
        live = s.scalar(select(func.count()).where(IdempotencyKey.expires_at > func.now()))
    assert purge_expired() >= 1
    with db.transaction() as s:
        assert s.scalar(select(func.count()).where(IdempotencyKey.key == key)) == 0
        assert s.scalar(select(func.count()).select_from(IdempotencyKey)) == live
        assert idempotency.purge_expired(s) == 0


def test_an_error_answer_a_route_returns_keeps_nothing(db: Database, api: ApiClient) -> None:
    """A route that writes, then answers an error without raising (none does today: this
    route is the test's own): its change rolls back and its answer is not kept."""
    probe = create_app(OUTBOX_DISPATCH="none", TESTING=True, RATELIMIT_ENABLED=False)
    blp = Blueprint("probe", __name__)

    @blp.route("/probe")
    class Probe(MethodView):
        @blp.tenant_required
        def post(self) -> Any:
            with transaction() as session:
                contacts.create_contact(session, current_actor(), name="Refused")
            return error_response(409, "PROBE_REFUSED", "Refused after writing")

    probe.register_blueprint(blp, url_prefix="/api/v1")
    try:
        client = ApiClient(probe.test_client())
        owner = api.register()
        for _ in range(2):  # the retry runs again: nothing was kept
            r = client.post(
                "/probe", user=owner, org=owner.org_id, headers={"Idempotency-Key": "p"}
            )
            assert r.status_code == 409 and error_code(r) == "PROBE_REFUSED"
            assert REPLAYED not in r.headers
        assert api.get("/contacts", user=owner, org=owner.org_id).get_json()["total"] == 0
    finally:
        probe.extensions["crm_db"].dispose()
