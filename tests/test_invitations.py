"""Team invitations over HTTP, with the e-mails sent to a real SMTP server (aiosmtpd) by the
sending step the e-mail worker runs: invite -> e-mail -> accept with the token from the
e-mail; reuse, expiry, revocation, replacement, role escalation, the logged-in accept."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import func, select, update

from crm_domain.models import Invitation, OutboundEmail, OutboxEvent
from crm_domain.services.mailing import invitations
from crm_worker.consumers import MailWakeup
from crm_worker.dispatch import Dispatcher

from .api import PASSWORD, ApiClient, User, error_code
from .mail import BASE_URL, SENDER, Received, SmtpServer, invitation_link, send_all, token_from

INVITATION_KEYS = {
    "id",
    "organization_id",
    "email",
    "role",
    "invited_by",
    "created_at",
    "expires_at",
}


def _email() -> str:
    return f"invitee-{uuid.uuid4().hex[:10]}@example.com"


def _invite(
    api: ApiClient, user: User, email: str, role: str = "member", org: int | None = None
) -> dict[str, Any]:
    r = api.post(
        f"/organizations/{org or user.org_id}/invitations",
        user=user,
        json={"email": email, "role": role},
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def _mail(db, smtp: SmtpServer, email: str) -> Received:
    send_all(db, smtp)
    [received] = smtp.to(email)
    return received


def _accept_new(api: ApiClient, token: str, name: str = "Bob Invitee", **extra: Any):
    return api.post(
        "/auth/accept-invitation",
        json={"token": token, "name": name, "password": PASSWORD, **extra},
    )


def _expect(response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    assert error_code(response) == code
    return response.get_json()["error"]


def _pending(api: ApiClient, user: User, org: int | None = None) -> list[dict[str, Any]]:
    r = api.get(f"/organizations/{org or user.org_id}/invitations", user=user)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["items"]


# --- the whole flow -------------------------------------------------------------------------


def test_invite_email_and_accept_as_a_new_user(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register(name="Alice Owner", org_name="Acme Invitations")
    email = _email()
    before = dt.datetime.now(dt.UTC)
    invitation = _invite(api, owner, email.upper(), "manager")
    assert set(invitation) == INVITATION_KEYS  # no token in the answer: it goes by e-mail only
    assert invitation["email"] == email
    assert invitation["role"] == "manager"
    assert invitation["organization_id"] == owner.org_id
    assert invitation["invited_by"] == owner.id
    expires = dt.datetime.fromisoformat(invitation["expires_at"])
    assert (
        before + dt.timedelta(days=7) <= expires <= dt.datetime.now(dt.UTC) + dt.timedelta(days=7)
    )
    assert _pending(api, owner) == [invitation]

    received = _mail(db, smtp, email)
    assert received.recipients == [email]
    assert received.message["To"] == email
    assert received.message["From"] == SENDER
    assert received.subject == "Alice Owner invited you to join Acme Invitations"
    text, html = received.part("plain"), received.part("html")
    assert "as manager" in text and "<strong>manager</strong>" in html
    link = invitation_link(received)
    assert link.startswith(f"{BASE_URL}/api/v1/invitations/preview?token=")
    assert f'href="{link}"' in html
    token = token_from(received)
    with db.transaction() as session:  # only the token's hash is stored, nowhere the token
        row = session.get(Invitation, invitation["id"])
        assert row.token_hash == invitations.hash_token(token) and token not in str(vars(row))
        for table in ("outbox_events", "outbound_emails", "invitations"):
            dump = session.execute(sa.text(f"SELECT t::text FROM {table} t")).scalars().all()
            assert not [line for line in dump if token in line], table

    # The link shows the invitation (a GET on the API; the token works as it is in the link).
    r = api.client.get(link.removeprefix(BASE_URL))
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {
        "organization": {"id": owner.org_id, "name": "Acme Invitations"},
        "email": email,
        "role": "manager",
        "invited_by_name": "Alice Owner",
        "expires_at": invitation["expires_at"],
    }

    r = _accept_new(api, token, name="Bob Invitee")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["user"]["email"] == email and body["user"]["name"] == "Bob Invitee"
    assert body["organization"]["id"] == owner.org_id
    assert body["organization"]["role"] == "manager"
    assert body["token_type"] == "bearer" and body["refresh_token"]
    token_b = body["access_token"]

    # The new user sees the organization with the invited role, and no organization of their own.
    r = api.get("/organizations/me", token=token_b)
    assert r.status_code == 200
    assert [(o["id"], o["role"]) for o in r.get_json()] == [(owner.org_id, "manager")]
    # ... acts in it as a manager: assigns a contact to the owner (a member could not).
    r = api.post(
        "/contacts",
        token=token_b,
        org=owner.org_id,
        json={"name": "Via invitation", "owner_id": owner.id},
    )
    assert r.status_code == 201, r.get_json()
    members = api.get(f"/organizations/{owner.org_id}/members", user=owner).get_json()
    assert {(m["email"], m["role"]) for m in members} == {
        (owner.email, "owner"),
        (email, "manager"),
    }
    assert _pending(api, owner) == []
    # ... and logs in with the password they chose.
    r = api.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert r.status_code == 200


def test_the_token_works_once(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    email = _email()
    _invite(api, owner, email)
    token = token_from(_mail(db, smtp, email))
    assert _accept_new(api, token).status_code == 201

    _expect(_accept_new(api, token, name="Mallory"), 410, "INVITATION_USED")
    _expect(api.get("/invitations/preview", query={"token": token}), 410, "INVITATION_USED")
    other = api.register(email=f"other-{email}")
    _expect(
        api.post("/invitations/accept", user=other, json={"token": token}), 410, "INVITATION_USED"
    )
    with db.transaction() as session:
        assert session.scalar(select(func.count()).where(Invitation.email == email)) == 1


def test_an_expired_invitation_cannot_be_used(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    email = _email()
    invitation = _invite(api, owner, email)
    token = token_from(_mail(db, smtp, email))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with db.transaction() as session:
        session.execute(
            update(Invitation).where(Invitation.id == invitation["id"]).values(expires_at=past)
        )
    error = _expect(_accept_new(api, token), 410, "INVITATION_EXPIRED")
    assert dt.datetime.fromisoformat(error["details"]["expired_at"]) == past
    _expect(api.get("/invitations/preview", query={"token": token}), 410, "INVITATION_EXPIRED")
    assert _pending(api, owner) == []
    # Nobody was created.
    assert api.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 401
    # Inviting again gives a fresh link.
    _invite(api, owner, email)
    send_all(db, smtp)
    fresh = token_from(smtp.to(email)[-1])
    assert fresh != token
    assert _accept_new(api, fresh).status_code == 201


def test_a_revoked_invitation_cannot_be_used(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    email = _email()
    invitation = _invite(api, owner, email)
    token = token_from(_mail(db, smtp, email))
    path = f"/organizations/{owner.org_id}/invitations/{invitation['id']}"
    r = api.delete(path, user=owner)
    assert r.status_code == 204
    _expect(_accept_new(api, token), 410, "INVITATION_REVOKED")
    assert _pending(api, owner) == []
    _expect(api.delete(path, user=owner), 404, "INVITATION_NOT_FOUND")


def test_revoked_before_sending_sends_nothing(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    email = _email()
    invitation = _invite(api, owner, email)
    r = api.delete(f"/organizations/{owner.org_id}/invitations/{invitation['id']}", user=owner)
    assert r.status_code == 204
    send_all(db, smtp)
    assert smtp.to(email) == []
    with db.transaction() as session:
        [status] = session.scalars(
            select(OutboundEmail.status).where(OutboundEmail.to_address == email)
        ).all()
    assert status == "skipped"


def test_inviting_again_replaces_the_token(api: ApiClient, db, smtp: SmtpServer) -> None:
    owner = api.register()
    email = _email()
    first = _invite(api, owner, email, "member")
    old_token = token_from(_mail(db, smtp, email))
    second = _invite(api, owner, email, "admin")
    assert second["id"] != first["id"]
    send_all(db, smtp)
    [_, again] = smtp.to(email)
    new_token = token_from(again)
    assert new_token != old_token
    assert _pending(api, owner) == [second]

    _expect(_accept_new(api, old_token), 410, "INVITATION_REVOKED")
    r = _accept_new(api, new_token)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["organization"]["role"] == "admin"


def test_a_second_delivery_of_the_event_sends_no_second_email(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    owner = api.register()
    email = _email()
    invitation = _invite(api, owner, email)
    send_all(db, smtp)
    assert len(smtp.to(email)) == 1
    with db.transaction() as session:
        event_id = session.scalar(
            select(OutboxEvent.id).where(
                OutboxEvent.topic == invitations.INVITATION_TOPIC,
                OutboxEvent.payload["invitation_id"].as_integer() == invitation["id"],
            )
        )
        # As if the worker died after the batch was applied but before it was marked.
        session.execute(
            update(OutboxEvent).where(OutboxEvent.id == event_id).values(delivered_at=None)
        )
    woken: list[bool] = []
    assert Dispatcher().register(lambda: MailWakeup(lambda: woken.append(True))).deliver(db) >= 1
    assert woken == [True]  # the handler ran again ...
    with db.transaction() as session:
        assert session.get(OutboxEvent, event_id).delivered_at is not None
        queued = session.scalar(select(func.count()).where(OutboundEmail.to_address == email))
    assert queued == 1  # ... and queued nothing new
    send_all(db, smtp)
    assert len(smtp.to(email)) == 1


# --- who may invite what ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inviter", "role", "status", "code"),
    [
        ("owner", "owner", 201, None),
        ("owner", "admin", 201, None),
        ("owner", "member", 201, None),
        ("admin", "admin", 201, None),
        ("admin", "manager", 201, None),
        ("admin", "member", 201, None),
        ("admin", "owner", 403, "OWNER_ONLY"),
        ("manager", "member", 403, "SETTINGS_FORBIDDEN"),
        ("member", "member", 403, "SETTINGS_FORBIDDEN"),
    ],
)
def test_an_invitation_never_grants_more_than_the_inviter_may(
    api: ApiClient, inviter: str, role: str, status: int, code: str | None
) -> None:
    team = api.team()
    r = api.post(
        f"/organizations/{team['owner'].org_id}/invitations",
        user=team[inviter],
        json={"email": _email(), "role": role},
    )
    if code is None:
        assert r.status_code == status, r.get_json()
        assert r.get_json()["role"] == role
    else:
        _expect(r, status, code)


def test_admins_cannot_revoke_or_replace_an_owner_invitation(api: ApiClient) -> None:
    team = api.team()
    owner, admin = team["owner"], team["admin"]
    email = _email()
    invitation = _invite(api, owner, email, "owner")
    path = f"/organizations/{owner.org_id}/invitations/{invitation['id']}"
    _expect(api.delete(path, user=admin), 403, "OWNER_ONLY")
    r = api.post(
        f"/organizations/{owner.org_id}/invitations",
        user=admin,
        json={"email": email, "role": "member"},
    )
    _expect(r, 403, "OWNER_ONLY")
    assert [i["id"] for i in _pending(api, owner)] == [invitation["id"]]
    assert api.delete(path, user=owner).status_code == 204


def test_only_owners_and_admins_see_and_revoke_invitations(api: ApiClient) -> None:
    team = api.team()
    owner = team["owner"]
    stranger = api.register()
    # Each organization has a pending invitation of its own (the test needs no other rows).
    theirs = _invite(api, stranger, _email())
    invitation = _invite(api, owner, _email())
    assert [i["id"] for i in _pending(api, team["admin"])] == [invitation["id"]]
    assert [i["id"] for i in _pending(api, stranger)] == [theirs["id"]]
    path = f"/organizations/{owner.org_id}/invitations"
    for role in ("manager", "member"):
        _expect(api.get(path, user=team[role]), 403, "SETTINGS_FORBIDDEN")
        r = api.delete(f"{path}/{invitation['id']}", user=team[role])
        _expect(r, 403, "SETTINGS_FORBIDDEN")
    _expect(api.get(path, user=stranger), 403, "NOT_ORGANIZATION_MEMBER")
    _expect(api.post(path, user=stranger, json={"email": _email()}), 403, "NOT_ORGANIZATION_MEMBER")
    # Another organization's invitation id is not found in the stranger's own organization.
    r = api.delete(
        f"/organizations/{stranger.org_id}/invitations/{invitation['id']}", user=stranger
    )
    _expect(r, 404, "INVITATION_NOT_FOUND")
    assert [i["id"] for i in _pending(api, owner)] == [invitation["id"]]
    assert [i["id"] for i in _pending(api, stranger)] == [theirs["id"]]


def test_an_inviter_demoted_before_acceptance_invalidates_the_invitation(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    team = api.team()
    owner, admin = team["owner"], team["admin"]
    email = _email()
    _invite(api, admin, email, "admin")
    token = token_from(_mail(db, smtp, email))
    r = api.patch(
        f"/organizations/{owner.org_id}/members/{admin.id}", user=owner, json={"role": "member"}
    )
    assert r.status_code == 200
    _expect(_accept_new(api, token), 410, "INVITATION_REVOKED")
    members = api.get(f"/organizations/{owner.org_id}/members", user=owner).get_json()
    assert email not in {m["email"] for m in members}


def test_inviting_a_member_is_a_conflict(api: ApiClient) -> None:
    team = api.team()
    r = api.post(
        f"/organizations/{team['owner'].org_id}/invitations",
        user=team["owner"],
        json={"email": team["member"].email.upper()},
    )
    _expect(r, 409, "MEMBER_ALREADY_EXISTS")


# --- accepting as an existing user ----------------------------------------------------------------


def test_a_logged_in_user_accepts_an_invitation_to_their_address(
    api: ApiClient, db, smtp: SmtpServer
) -> None:
    owner = api.register(org_name="Host Org")
    email = _email()
    existing = api.register(email=email, org_name="Own Org")
    _invite(api, owner, email, "admin")
    token = token_from(_mail(db, smtp, email))

    # An account with the address exists: the new-account route refuses and says what to do.
    error = _expect(_accept_new(api, token), 409, "EMAIL_ALREADY_EXISTS")
    assert "/invitations/accept" in error["message"]
    # Somebody else, logged in, cannot use it (the invitation's address must be theirs).
    intruder = api.register()
    r = api.post("/invitations/accept", user=intruder, json={"token": token})
    _expect(r, 403, "INVITATION_EMAIL_MISMATCH")
    _expect(api.post("/invitations/accept", json={"token": token}), 401, "UNAUTHORIZED")

    r = api.post("/invitations/accept", user=existing, json={"token": token})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["id"], body["name"], body["role"]) == (owner.org_id, "Host Org", "admin")
    orgs = api.get("/organizations/me", user=existing).get_json()
    assert {(o["name"], o["role"]) for o in orgs} == {("Own Org", "owner"), ("Host Org", "admin")}
    # The membership is effective at once in this process (no stale access answer).
    assert api.get(f"/organizations/{owner.org_id}/invitations", user=existing).status_code == 200
    r = api.post("/invitations/accept", user=existing, json={"token": token})
    _expect(r, 410, "INVITATION_USED")
    _expect(
        api.post("/invitations/accept", user=intruder, json={"token": token}),
        410,
        "INVITATION_USED",
    )


def test_the_invited_address_matches_whatever_its_case(api: ApiClient, db, smtp) -> None:
    owner = api.register()
    email = _email()
    existing = api.register(email=email.upper())  # stored lower-cased
    _invite(api, owner, email.capitalize())
    token = token_from(_mail(db, smtp, email))
    r = api.post("/invitations/accept", user=existing, json={"token": token})
    assert r.status_code == 200, r.get_json()


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_tokens_are_not_found(api: ApiClient) -> None:
    user = api.register()
    token = "x" * 43
    _expect(api.get("/invitations/preview", query={"token": token}), 404, "INVITATION_NOT_FOUND")
    _expect(_accept_new(api, token), 404, "INVITATION_NOT_FOUND")
    r = api.post("/invitations/accept", user=user, json={"token": token})
    _expect(r, 404, "INVITATION_NOT_FOUND")


def test_validation_errors_are_400_and_change_nothing(api: ApiClient, db, smtp) -> None:
    owner = api.register()
    path = f"/organizations/{owner.org_id}/invitations"
    for body in (
        {"email": "not-an-email"},
        {"email": _email(), "role": "superuser"},
        {"role": "member"},
        {"email": _email(), "extra": 1},
    ):
        _expect(api.post(path, user=owner, json=body), 400, "VALIDATION_ERROR")
    assert _pending(api, owner) == []

    email = _email()
    _invite(api, owner, email)
    token = token_from(_mail(db, smtp, email))
    _expect(_accept_new(api, token, password="short"), 400, "VALIDATION_ERROR")
    _expect(_accept_new(api, token, name="  "), 400, "VALIDATION_ERROR")
    _expect(api.post("/auth/accept-invitation", json={"token": token}), 400, "VALIDATION_ERROR")
    _expect(api.get("/invitations/preview"), 400, "VALIDATION_ERROR")
    # None of that used the invitation up.
    assert _accept_new(api, token).status_code == 201
