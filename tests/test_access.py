"""The per-process memos of the request path (crm_api/access.py) never outlast what they
remember: an expired token is refused although its claims were cached, a session revoked or
a member removed elsewhere is refused within ACCESS_CHECK_CACHE_SECONDS, and this process
forgets at once what it changed itself."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from flask_jwt_extended import create_access_token
from sqlalchemy import delete, update

from crm_api import memo
from crm_domain.models import AuthSession, OrganizationMember

from .api import ApiClient, error_code


def _deals(api: ApiClient, token: str, org: int) -> int:
    return api.client.get(
        "/api/v1/deals",
        headers={"Authorization": f"Bearer {token}", "X-Organization-Id": str(org)},
    ).status_code


def _claims(app, token: str) -> dict:
    from flask_jwt_extended import decode_token

    with app.app_context():
        return decode_token(token)


def test_an_expired_token_is_refused_although_it_was_verified_before(app, api: ApiClient):
    user = api.register()
    claims = _claims(app, user.token)
    with app.app_context():
        short = create_access_token(
            identity=str(user.id),
            additional_claims={"sid": claims["sid"]},
            expires_delta=dt.timedelta(seconds=1),
        )
    assert _deals(api, short, user.org_id) == 200
    time.sleep(1.2)
    r = api.client.get(
        "/api/v1/deals", headers={"Authorization": f"Bearer {short}", "X-Organization-Id": "1"}
    )
    assert r.status_code == 401 and error_code(r) == "TOKEN_EXPIRED"


def test_a_token_whose_subject_is_not_a_user_id_is_a_401(app, api: ApiClient) -> None:
    user = api.register()
    claims = _claims(app, user.token)
    with app.app_context():
        odd = create_access_token(identity="not-a-number", additional_claims={"sid": claims["sid"]})
    r = api.client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {odd}"})
    assert r.status_code == 401 and error_code(r) == "INVALID_TOKEN"


class Clock:
    """The `time` module as crm_api.memo (the access memos) sees it in these tests: its
    monotonic clock moves only when the test moves it (wall-clock time is the real one: tokens
    expire as usual), so "within the memo's TTL" is checked exactly, whatever the machine's
    load."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        return self.now

    @staticmethod
    def time() -> float:
        return time.time()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(memo, "time", fake)
    return fake


def test_a_session_revoked_elsewhere_is_refused_within_the_memo_ttl(
    app, api, db, clock: Clock
) -> None:
    user = api.register()
    assert _deals(api, user.token, user.org_id) == 200  # remembered as alive
    ttl = app.extensions["crm_access_memo"].ttl
    with db.transaction() as s:  # another process (or node) revokes it
        s.execute(
            update(AuthSession)
            .where(AuthSession.user_id == user.id)
            .values(revoked_at=dt.datetime.now(dt.UTC))
        )
    clock.now += ttl + 0.001  # just past the memo's TTL
    assert _deals(api, user.token, user.org_id) == 401


def test_a_member_removed_elsewhere_is_refused_within_the_memo_ttl(
    app, api, db, clock: Clock
) -> None:
    team = api.team()
    member = team["member"]
    assert _deals(api, member.token, member.org_id) == 200
    ttl = app.extensions["crm_access_memo"].ttl
    with db.transaction() as s:
        s.execute(
            delete(OrganizationMember).where(
                OrganizationMember.user_id == member.id,
                OrganizationMember.organization_id == member.org_id,
            )
        )
    clock.now += ttl + 0.001
    assert _deals(api, member.token, member.org_id) == 403


def test_this_process_forgets_its_own_changes_at_once(api: ApiClient) -> None:
    team = api.team()
    owner, member = team["owner"], team["member"]
    assert _deals(api, member.token, member.org_id) == 200
    r = api.delete(f"/organizations/{owner.org_id}/members/{member.id}", user=owner)
    assert r.status_code == 204
    assert _deals(api, member.token, member.org_id) == 403  # no second of grace here
    assert _deals(api, owner.token, owner.org_id) == 200
    assert api.post("/auth/logout", user=owner).status_code == 204
    assert _deals(api, owner.token, owner.org_id) == 401
