"""Auth: registration, login, refresh rotation with reuse detection, logout, token checks."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import jwt as pyjwt
import pytest
from flask_jwt_extended import create_access_token, create_refresh_token
from sqlalchemy import update
from werkzeug.test import TestResponse

from crm_domain.models import AuthSession
from crm_domain.services.records import auth as auth_service

from .api import PASSWORD, ApiClient, error_code


def _email(prefix: str = "auth") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def _register_body(**overrides: Any) -> dict[str, Any]:
    body = {
        "email": _email(),
        "password": PASSWORD,
        "name": "Alice Example",
        "organization_name": "Alice Inc",
    }
    body.update(overrides)
    return body


def _assert_401(response: TestResponse, code: str) -> None:
    assert response.status_code == 401, response.get_json()
    assert error_code(response) == code, response.get_json()
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")


def _assert_400(response: TestResponse) -> dict[str, Any]:
    assert response.status_code == 400, response.get_json()
    assert error_code(response) == "VALIDATION_ERROR"
    return response.get_json()["error"]["details"]


def _login(api: ApiClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    r = api.post("/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _refresh(api: ApiClient, refresh_token: str) -> TestResponse:
    return api.post("/auth/refresh", json={"refresh_token": refresh_token})


def _session_id(token: str) -> str:
    return pyjwt.decode(token, options={"verify_signature": False})["sid"]


def _leave_grace_window(app, token: str) -> None:
    """Make the session's last refresh older than REFRESH_REUSE_GRACE_SECONDS, as if the
    token it replaced were presented again that much later."""
    back = dt.timedelta(seconds=app.config["REFRESH_REUSE_GRACE_SECONDS"] + 1)
    with app.extensions["crm_db"].transaction() as session:
        done = session.execute(
            update(AuthSession)
            .where(AuthSession.id == _session_id(token))
            .values(current_issued_at=AuthSession.current_issued_at - back)
        )
        assert done.rowcount == 1


# --- register ----------------------------------------------------------------------------------


def test_register_returns_user_organization_and_tokens(api: ApiClient) -> None:
    body_in = _register_body()
    r = api.post("/auth/register", json=body_in)
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert {"user", "organization", "access_token", "refresh_token", "token_type"} <= set(body)
    assert body["token_type"] == "bearer"
    assert isinstance(body["access_token"], str) and body["access_token"]
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert body["access_token"] != body["refresh_token"]

    user = body["user"]
    assert set(user) == {"id", "email", "name", "email_digest", "created_at"}
    assert user["email_digest"] is True
    assert isinstance(user["id"], int)
    assert user["email"] == body_in["email"]
    assert user["name"] == "Alice Example"
    dt.datetime.fromisoformat(user["created_at"])
    assert "password" not in str(user) and "hashed" not in str(user)

    org = body["organization"]
    assert set(org) == {"id", "name", "created_at"}
    assert isinstance(org["id"], int)
    assert org["name"] == "Alice Inc"
    dt.datetime.fromisoformat(org["created_at"])

    token = body["access_token"]
    me = api.get("/auth/me", token=token)
    assert me.status_code == 200
    assert me.get_json()["id"] == user["id"]

    orgs = api.get("/organizations/me", token=token)
    assert orgs.status_code == 200
    assert orgs.get_json() == [
        {"id": org["id"], "name": "Alice Inc", "created_at": org["created_at"], "role": "owner"}
    ]


def test_register_trims_names(api: ApiClient) -> None:
    r = api.post(
        "/auth/register", json=_register_body(name="  Bob  ", organization_name="  Bob Co ")
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["user"]["name"] == "Bob"
    assert r.get_json()["organization"]["name"] == "Bob Co"


def test_register_duplicate_email_conflicts(api: ApiClient) -> None:
    email = _email()
    assert api.post("/auth/register", json=_register_body(email=email)).status_code == 201
    r = api.post("/auth/register", json=_register_body(email=email))
    assert r.status_code == 409
    assert error_code(r) == "EMAIL_ALREADY_EXISTS"


def test_register_email_is_case_insensitive_unique(api: ApiClient) -> None:
    local = f"Mixed.Case-{uuid.uuid4().hex[:8]}"
    first = api.post("/auth/register", json=_register_body(email=f"{local}@Example.COM"))
    assert first.status_code == 201, first.get_json()
    assert first.get_json()["user"]["email"] == f"{local}@example.com".lower()

    r = api.post("/auth/register", json=_register_body(email=f"{local.lower()}@example.com"))
    assert r.status_code == 409
    assert error_code(r) == "EMAIL_ALREADY_EXISTS"
    r = api.post("/auth/register", json=_register_body(email=f"{local.upper()}@EXAMPLE.COM"))
    assert r.status_code == 409
    assert error_code(r) == "EMAIL_ALREADY_EXISTS"

    # Login accepts any casing of the address.
    tokens = _login(api, f"{local.upper()}@example.com")
    assert api.get("/auth/me", token=tokens["access_token"]).get_json()["email"] == (
        f"{local}@example.com".lower()
    )


def test_failed_duplicate_registration_creates_no_organization(api: ApiClient) -> None:
    user = api.register(org_name="Original Org")
    r = api.post(
        "/auth/register", json=_register_body(email=user.email, organization_name="Sneaky Org")
    )
    assert r.status_code == 409
    orgs = api.get("/organizations/me", user=user).get_json()
    assert [o["name"] for o in orgs] == ["Original Org"]


@pytest.mark.parametrize(
    "email", ["not-an-email", "missing-at.example.com", "a@", "@example.com", "", "a b@example.com"]
)
def test_register_rejects_bad_email(api: ApiClient, email: str) -> None:
    details = _assert_400(api.post("/auth/register", json=_register_body(email=email)))
    assert "email" in str(details)


@pytest.mark.parametrize(
    "password",
    [
        "",
        "1234567",  # 7 bytes
        "é" * 3 + "a",  # 4 characters, 7 bytes
        "a" * 73,  # 73 bytes
        "é" * 37,  # 37 characters, 74 bytes
    ],
)
def test_register_rejects_password_outside_8_to_72_bytes(api: ApiClient, password: str) -> None:
    body = _register_body(password=password)
    _assert_400(api.post("/auth/register", json=body))
    # Nothing was created: the same email can still register with a valid password.
    ok = api.post("/auth/register", json={**body, "password": PASSWORD})
    assert ok.status_code == 201, ok.get_json()


# The limits count UTF-8 bytes, not characters: "é" * 4 is 8 bytes.
@pytest.mark.parametrize("password", ["12345678", "a" * 72, "é" * 36, "é" * 4])
def test_register_accepts_password_of_8_to_72_bytes(api: ApiClient, password: str) -> None:
    body = _register_body(password=password)
    r = api.post("/auth/register", json=body)
    assert r.status_code == 201, r.get_json()
    tokens = _login(api, body["email"], password)
    assert api.get("/auth/me", token=tokens["access_token"]).status_code == 200


@pytest.mark.parametrize("missing", ["email", "password", "name", "organization_name"])
def test_register_rejects_missing_field(api: ApiClient, missing: str) -> None:
    body = _register_body()
    del body[missing]
    details = _assert_400(api.post("/auth/register", json=body))
    assert missing in str(details)


def test_register_rejects_unknown_field(api: ApiClient) -> None:
    details = _assert_400(api.post("/auth/register", json=_register_body(role="admin")))
    assert "role" in str(details)


@pytest.mark.parametrize("field", ["name", "organization_name"])
@pytest.mark.parametrize("value", ["", "   "])
def test_register_rejects_empty_names(api: ApiClient, field: str, value: str) -> None:
    _assert_400(api.post("/auth/register", json=_register_body(**{field: value})))


@pytest.mark.parametrize("value", [None, 123, ["x"]])
def test_register_rejects_non_string_values(api: ApiClient, value: Any) -> None:
    _assert_400(api.post("/auth/register", json=_register_body(name=value)))


def test_register_rejects_non_object_body(api: ApiClient) -> None:
    _assert_400(api.post("/auth/register", json=["email", "password"]))


# --- login -------------------------------------------------------------------------------------


def test_login_returns_token_pair(api: ApiClient) -> None:
    user = api.register()
    body = _login(api, user.email)
    assert body["token_type"] == "bearer"
    assert body["access_token"] and body["refresh_token"]
    assert body["access_token"] != user.token
    me = api.get("/auth/me", token=body["access_token"])
    assert me.status_code == 200
    assert me.get_json()["id"] == user.id


def test_login_wrong_password(api: ApiClient) -> None:
    user = api.register()
    r = api.post("/auth/login", json={"email": user.email, "password": PASSWORD + "x"})
    _assert_401(r, "INVALID_CREDENTIALS")


def test_login_unknown_email(api: ApiClient) -> None:
    r = api.post("/auth/login", json={"email": _email("nobody"), "password": PASSWORD})
    _assert_401(r, "INVALID_CREDENTIALS")


def test_login_overlong_password_is_just_wrong(api: ApiClient) -> None:
    user = api.register()
    r = api.post("/auth/login", json={"email": user.email, "password": PASSWORD + "x" * 100})
    _assert_401(r, "INVALID_CREDENTIALS")


@pytest.mark.parametrize(
    "body",
    [
        {"password": PASSWORD},
        {"email": "someone@example.com"},
        {"email": "someone@example.com", "password": PASSWORD, "extra": 1},
        {},
    ],
)
def test_login_validation(api: ApiClient, body: dict[str, Any]) -> None:
    _assert_400(api.post("/auth/login", json=body))


# --- /auth/me ----------------------------------------------------------------------------------


def test_me_returns_current_user(api: ApiClient) -> None:
    user = api.register(name="Carol")
    r = api.get("/auth/me", user=user)
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {"id", "email", "name", "email_digest", "created_at"}
    assert body == {**body, "id": user.id, "email": user.email, "name": "Carol"}


# --- refresh -----------------------------------------------------------------------------------


def test_refresh_returns_new_working_pair(api: ApiClient) -> None:
    user = api.register()
    r = _refresh(api, user.refresh_token)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["token_type"] == "bearer"
    assert body["access_token"] != user.token
    assert body["refresh_token"] != user.refresh_token
    me = api.get("/auth/me", token=body["access_token"])
    assert me.status_code == 200
    assert me.get_json()["id"] == user.id

    # The rotated refresh token rotates again.
    again = _refresh(api, body["refresh_token"])
    assert again.status_code == 200, again.get_json()
    assert api.get("/auth/me", token=again.get_json()["access_token"]).status_code == 200


def test_refresh_token_reuse_revokes_the_whole_session(api: ApiClient, app) -> None:
    user = api.register()
    first = _refresh(api, user.refresh_token)
    assert first.status_code == 200
    new_pair = first.get_json()
    assert api.get("/auth/me", token=new_pair["access_token"]).status_code == 200

    _leave_grace_window(app, user.refresh_token)
    reuse = _refresh(api, user.refresh_token)
    _assert_401(reuse, "TOKEN_REUSED")

    # Every token of that login session is dead now.
    _assert_401(_refresh(api, new_pair["refresh_token"]), "TOKEN_REVOKED")
    _assert_401(api.get("/auth/me", token=new_pair["access_token"]), "TOKEN_REVOKED")
    _assert_401(api.get("/auth/me", token=user.token), "TOKEN_REVOKED")
    _assert_401(api.get("/organizations/me", token=new_pair["access_token"]), "TOKEN_REVOKED")


def test_refresh_reuse_does_not_touch_other_sessions(api: ApiClient, app) -> None:
    user = api.register()
    other = _login(api, user.email)
    assert _refresh(api, user.refresh_token).status_code == 200
    _leave_grace_window(app, user.refresh_token)
    _assert_401(_refresh(api, user.refresh_token), "TOKEN_REUSED")
    assert api.get("/auth/me", token=other["access_token"]).status_code == 200
    assert _refresh(api, other["refresh_token"]).status_code == 200


def test_access_token_is_not_a_refresh_token(api: ApiClient) -> None:
    user = api.register()
    _assert_401(_refresh(api, user.token), "INVALID_TOKEN")
    # The failed attempt did not disturb the session.
    assert _refresh(api, user.refresh_token).status_code == 200


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.sig"])
def test_garbage_refresh_token(api: ApiClient, token: str) -> None:
    _assert_401(_refresh(api, token), "INVALID_TOKEN")


def test_refresh_token_signed_with_another_key(api: ApiClient) -> None:
    user = api.register()
    claims = pyjwt.decode(user.refresh_token, options={"verify_signature": False})
    forged = pyjwt.encode(claims, "another-secret-key-of-sufficient-length!!", algorithm="HS256")
    _assert_401(_refresh(api, forged), "INVALID_TOKEN")


def test_expired_refresh_token(api: ApiClient, app) -> None:
    user = api.register()
    claims = pyjwt.decode(user.refresh_token, options={"verify_signature": False})
    with app.app_context():
        expired = create_refresh_token(
            identity=str(user.id),
            expires_delta=dt.timedelta(seconds=-1),
            additional_claims={"sid": claims["sid"], "jti": claims["jti"]},
        )
    _assert_401(_refresh(api, expired), "TOKEN_EXPIRED")


@pytest.mark.parametrize("body", [{}, {"refresh_token": ""}, {"refresh_token": 5}])
def test_refresh_validation(api: ApiClient, body: dict[str, Any]) -> None:
    _assert_400(api.post("/auth/refresh", json=body))


# --- refresh: the grace window for the token just replaced ---------------------------------


def test_parallel_refreshes_with_one_token_all_get_the_same_pair(api: ApiClient, app) -> None:
    user = api.register()
    count = 10
    barrier = threading.Barrier(count)
    answers: list[TestResponse | None] = [None] * count

    def refresh(i: int) -> None:
        client = ApiClient(app.test_client())
        barrier.wait()
        answers[i] = _refresh(client, user.refresh_token)

    threads = [threading.Thread(target=refresh, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bodies = []
    for r in answers:
        assert r is not None
        assert r.status_code == 200, r.get_json()
        bodies.append(r.get_json())
    # One rotation happened; everyone got its pair, token for token.
    assert all(body == bodies[0] for body in bodies), bodies
    pair = bodies[0]
    assert pair["refresh_token"] != user.refresh_token
    assert api.get("/auth/me", token=pair["access_token"]).status_code == 200
    assert api.get("/auth/me", user=user).status_code == 200  # the session was not revoked
    assert _refresh(api, pair["refresh_token"]).status_code == 200


def test_the_replaced_token_within_the_window_gets_the_same_pair(api: ApiClient) -> None:
    user = api.register()
    first = _refresh(api, user.refresh_token)
    assert first.status_code == 200
    again = _refresh(api, user.refresh_token)
    assert again.status_code == 200, again.get_json()
    assert again.get_json() == first.get_json()
    pair = first.get_json()
    assert api.get("/auth/me", token=pair["access_token"]).status_code == 200
    # The pair goes on rotating as usual.
    assert _refresh(api, pair["refresh_token"]).status_code == 200


def test_the_replaced_token_after_the_window_revokes_the_session(api: ApiClient, app) -> None:
    user = api.register()
    pair = _refresh(api, user.refresh_token).get_json()
    assert _refresh(api, user.refresh_token).get_json() == pair  # still within the window
    _leave_grace_window(app, user.refresh_token)
    _assert_401(_refresh(api, user.refresh_token), "TOKEN_REUSED")
    _assert_401(api.get("/auth/me", token=pair["access_token"]), "TOKEN_REVOKED")
    _assert_401(_refresh(api, pair["refresh_token"]), "TOKEN_REVOKED")


def test_the_window_counts_from_the_exact_time_of_the_refresh(api: ApiClient, app) -> None:
    """A refresh at x.9 s, its token replayed 9.95 s later: inside the default 10 s window
    (counted from the second the refresh began, it would be 10.85 s: outside)."""
    user = api.register()
    claims = pyjwt.decode(user.refresh_token, options={"verify_signature": False})
    refreshed_at = dt.datetime.now(dt.UTC).replace(microsecond=900_000)

    def present_the_first_token(seconds_later: float) -> auth_service.TokenGrant:
        with app.extensions["crm_db"].transaction() as session:
            return auth_service.rotate_session(
                session,
                session_id=claims["sid"],
                presented_jti=claims["jti"],
                grace=dt.timedelta(seconds=10),
                now=refreshed_at + dt.timedelta(seconds=seconds_later),
            )

    grant = present_the_first_token(0)  # the refresh
    assert present_the_first_token(9.95) == grant  # a replay within the window
    with pytest.raises(auth_service.TokenReused):
        present_the_first_token(10.05)


def test_a_token_two_rotations_old_is_reuse_even_within_the_window(api: ApiClient) -> None:
    user = api.register()
    second = _refresh(api, user.refresh_token).get_json()
    third = _refresh(api, second["refresh_token"]).get_json()
    _assert_401(_refresh(api, user.refresh_token), "TOKEN_REUSED")
    _assert_401(api.get("/auth/me", token=third["access_token"]), "TOKEN_REVOKED")


def test_no_grace_window_when_set_to_zero(api: ApiClient, app, monkeypatch) -> None:
    monkeypatch.setitem(app.config, "REFRESH_REUSE_GRACE_SECONDS", 0)
    user = api.register()
    pair = _refresh(api, user.refresh_token).get_json()
    _assert_401(_refresh(api, user.refresh_token), "TOKEN_REUSED")
    _assert_401(api.get("/auth/me", token=pair["access_token"]), "TOKEN_REVOKED")


# --- logout ------------------------------------------------------------------------------------


def test_logout_revokes_the_session(api: ApiClient) -> None:
    user = api.register()
    r = api.post("/auth/logout", user=user)
    assert r.status_code == 204
    assert r.data == b""
    _assert_401(api.get("/auth/me", user=user), "TOKEN_REVOKED")
    _assert_401(api.post("/auth/logout", user=user), "TOKEN_REVOKED")
    _assert_401(_refresh(api, user.refresh_token), "TOKEN_REVOKED")


def test_logout_keeps_other_sessions(api: ApiClient) -> None:
    user = api.register()
    second = _login(api, user.email)
    assert api.post("/auth/logout", user=user).status_code == 204
    _assert_401(api.get("/auth/me", user=user), "TOKEN_REVOKED")
    assert api.get("/auth/me", token=second["access_token"]).status_code == 200
    rotated = _refresh(api, second["refresh_token"])
    assert rotated.status_code == 200
    assert api.get("/auth/me", token=rotated.get_json()["access_token"]).status_code == 200
    # A fresh login after logout works too.
    third = _login(api, user.email)
    assert api.get("/auth/me", token=third["access_token"]).status_code == 200


def test_logout_after_refresh_revokes_rotated_tokens(api: ApiClient) -> None:
    user = api.register()
    pair = _refresh(api, user.refresh_token).get_json()
    assert api.post("/auth/logout", token=pair["access_token"]).status_code == 204
    _assert_401(api.get("/auth/me", token=pair["access_token"]), "TOKEN_REVOKED")
    _assert_401(_refresh(api, pair["refresh_token"]), "TOKEN_REVOKED")


def test_logout_requires_a_token(api: ApiClient) -> None:
    _assert_401(api.post("/auth/logout"), "UNAUTHORIZED")


# --- bearer token checks -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/auth/me"),
        ("GET", "/organizations/me"),
        ("POST", "/organizations"),
        ("GET", "/contacts"),
        ("GET", "/analytics/deals/summary"),
    ],
)
def test_missing_authorization(api: ApiClient, method: str, path: str) -> None:
    _assert_401(api.call(method, path, org=1, json={"name": "x"}), "UNAUTHORIZED")


@pytest.mark.parametrize(
    ("header", "code"),
    [
        # Not a Bearer credential at all: no token was presented.
        ("Basic dXNlcjpwYXNz", "UNAUTHORIZED"),
        ("Token abc", "UNAUTHORIZED"),
        ("bearer-less", "UNAUTHORIZED"),
        # A Bearer header that does not carry exactly one token.
        ("Bearer", "INVALID_TOKEN"),
        ("Bearer ", "INVALID_TOKEN"),
        ("Bearer a b", "INVALID_TOKEN"),
    ],
)
def test_malformed_authorization_header(api: ApiClient, header: str, code: str) -> None:
    _assert_401(api.get("/auth/me", headers={"Authorization": header}), code)


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30.sig"])
def test_malformed_token(api: ApiClient, token: str) -> None:
    _assert_401(api.get("/auth/me", token=token), "INVALID_TOKEN")


def test_tampered_token(api: ApiClient) -> None:
    user = api.register()
    claims = pyjwt.decode(user.token, options={"verify_signature": False})
    other = api.register()
    forged = pyjwt.encode(
        {**claims, "sub": str(other.id)}, "not-the-server-secret-key-0123456789", algorithm="HS256"
    )
    _assert_401(api.get("/auth/me", token=forged), "INVALID_TOKEN")
    head, _payload, sig = user.token.split(".")
    swapped = ".".join([head, other.token.split(".")[1], sig])
    _assert_401(api.get("/auth/me", token=swapped), "INVALID_TOKEN")


def test_unsigned_token_is_refused(api: ApiClient) -> None:
    user = api.register()
    claims = pyjwt.decode(user.token, options={"verify_signature": False})
    unsigned = pyjwt.encode(claims, key=None, algorithm="none")
    _assert_401(api.get("/auth/me", token=unsigned), "INVALID_TOKEN")


MALFORMED_SUBJECTS = ["abc", "", "1.5", " 1", "1 ", "-1", "+1", "1e3", "\u0661", "0x1", "DROP"]


def _resigned(app: Any, token: str, **changes: Any) -> str:
    """The token with some claims changed, signed with the server's own key (a valid
    signature over claims the server would never issue)."""
    claims = pyjwt.decode(token, options={"verify_signature": False})
    return pyjwt.encode({**claims, **changes}, app.config["JWT_SECRET_KEY"], algorithm="HS256")


@pytest.mark.parametrize("sub", MALFORMED_SUBJECTS)
def test_validly_signed_access_token_with_a_non_integer_subject_is_401(
    api: ApiClient, app: Any, sub: str
) -> None:
    user = api.register()
    token = _resigned(app, user.token, sub=sub)
    _assert_401(api.get("/auth/me", token=token), "INVALID_TOKEN")
    _assert_401(api.get("/contacts", token=token, org=user.org_id), "INVALID_TOKEN")
    _assert_401(api.post("/auth/logout", token=token), "INVALID_TOKEN")
    assert api.get("/auth/me", user=user).status_code == 200  # the session is untouched


@pytest.mark.parametrize(
    "changes",
    [{"sub": sub} for sub in MALFORMED_SUBJECTS] + [{"sid": 5}, {"sid": ["x"]}],
    ids=repr,
)
def test_validly_signed_refresh_token_with_malformed_claims_is_401(
    api: ApiClient, app: Any, changes: dict[str, Any]
) -> None:
    user = api.register()
    _assert_401(_refresh(api, _resigned(app, user.refresh_token, **changes)), "INVALID_TOKEN")
    # nothing was rotated or revoked: the real refresh token still works
    assert _refresh(api, user.refresh_token).status_code == 200


def test_refresh_token_is_not_an_access_token(api: ApiClient) -> None:
    user = api.register()
    r = api.get("/auth/me", token=user.refresh_token)
    _assert_401(r, "INVALID_TOKEN")
    r = api.get("/contacts", token=user.refresh_token, org=user.org_id)
    _assert_401(r, "INVALID_TOKEN")


def test_expired_access_token(api: ApiClient, app) -> None:
    user = api.register()
    with app.app_context():
        expired = create_access_token(
            identity=str(user.id),
            expires_delta=dt.timedelta(seconds=-1),
            additional_claims={"sid": _session_id(user.token)},
        )
        fresh = create_access_token(
            identity=str(user.id),
            expires_delta=dt.timedelta(minutes=5),
            additional_claims={"sid": _session_id(user.token)},
        )
    _assert_401(api.get("/auth/me", token=expired), "TOKEN_EXPIRED")
    _assert_401(api.get("/contacts", token=expired, org=user.org_id), "TOKEN_EXPIRED")
    # The same construction without expiry is accepted (so the 401 above is about expiry).
    assert api.get("/auth/me", token=fresh).status_code == 200


def test_expired_token_forged_with_app_secret(api: ApiClient, app) -> None:
    user = api.register()
    claims = pyjwt.decode(user.token, options={"verify_signature": False})
    now = int(dt.datetime.now(dt.UTC).timestamp())
    claims.update(iat=now - 3600, nbf=now - 3600, exp=now - 60)
    expired = pyjwt.encode(claims, app.config["JWT_SECRET_KEY"], algorithm="HS256")
    _assert_401(api.get("/auth/me", token=expired), "TOKEN_EXPIRED")
