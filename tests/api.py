"""A thin HTTP helper over Flask's test client, plus builders for users and organizations."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass
from typing import Any

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

PREFIX = "/api/v1"
PASSWORD = "StrongPassword123"
# Read the whole body and close the response, as a server does once it sent the last byte:
# the request's observation (metrics, in-flight gauge) ends at that close.
BUFFERED = True


@dataclass
class User:
    id: int
    email: str
    token: str
    refresh_token: str
    org_id: int  # the organization created at registration


class ApiClient:
    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def call(
        self,
        method: str,
        path: str,
        *,
        user: User | None = None,
        token: str | None = None,
        org: int | str | None = None,
        json: Any = None,
        query: dict[str, Any] | list[tuple[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> TestResponse:
        all_headers = dict(headers or {})
        token = token or (user.token if user else None)
        if token:
            all_headers["Authorization"] = f"Bearer {token}"
        if org is not None:
            all_headers["X-Organization-Id"] = str(org)
        url = path if path in ("/health", "/ready") else PREFIX + path
        return self.client.open(
            url,
            method=method,
            json=json,
            query_string=query,
            headers=all_headers,
            buffered=BUFFERED,
        )

    def get(self, path: str, **kw: Any) -> TestResponse:
        return self.call("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> TestResponse:
        return self.call("POST", path, **kw)

    def patch(self, path: str, **kw: Any) -> TestResponse:
        return self.call("PATCH", path, **kw)

    def delete(self, path: str, **kw: Any) -> TestResponse:
        return self.call("DELETE", path, **kw)

    def upload(
        self,
        user: User,
        content: bytes | str,
        *,
        kind: str = "contacts",
        on_duplicate: str | None = None,
        org: int | None = None,
        filename: str = "data.csv",
    ) -> TestResponse:
        """POST /imports with a multipart body (the file and the form fields)."""
        raw = content.encode() if isinstance(content, str) else content
        data: dict[str, Any] = {"kind": kind, "file": (io.BytesIO(raw), filename)}
        if on_duplicate is not None:
            data["on_duplicate"] = on_duplicate
        return self.client.post(
            PREFIX + "/imports",
            data=data,
            content_type="multipart/form-data",
            buffered=BUFFERED,
            headers={
                "Authorization": f"Bearer {user.token}",
                "X-Organization-Id": str(org or user.org_id),
            },
        )

    # --- builders ---------------------------------------------------------------------------

    def register(
        self, *, name: str = "Test User", org_name: str = "Acme", email: str | None = None
    ) -> User:
        email = email or f"user-{uuid.uuid4().hex[:12]}@example.com"
        r = self.post(
            "/auth/register",
            json={
                "email": email,
                "password": PASSWORD,
                "name": name,
                "organization_name": org_name,
            },
        )
        assert r.status_code == 201, r.get_json()
        body = r.get_json()
        return User(
            id=body["user"]["id"],
            email=email,
            token=body["access_token"],
            refresh_token=body["refresh_token"],
            org_id=body["organization"]["id"],
        )

    def add_member(self, owner: User, org_id: int, user: User, role: str) -> None:
        r = self.post(
            f"/organizations/{org_id}/members", user=owner, json={"email": user.email, "role": role}
        )
        assert r.status_code == 201, r.get_json()

    def team(self) -> dict[str, User]:
        """An organization with one user per role; every user's `org_id` is that organization."""
        owner = self.register(name="Owner", org_name=f"Team {uuid.uuid4().hex[:6]}")
        team = {"owner": owner}
        for role in ("admin", "manager", "member", "member2"):
            user = self.register(name=role.capitalize())
            self.add_member(owner, owner.org_id, user, "member" if role == "member2" else role)
            user.org_id = owner.org_id
            team[role] = user
        return team

    def contact(self, user: User, org: int | None = None, **fields: Any) -> dict[str, Any]:
        body = {
            "name": "John Doe",
            "email": "john.doe@example.com",
            "phone": "+123456789",
            **fields,
        }
        r = self.post("/contacts", user=user, org=org or user.org_id, json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def deal(
        self, user: User, org: int | None = None, contact_id: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        org = org or user.org_id
        if contact_id is None:
            contact_id = self.contact(user, org)["id"]
        body = {
            "contact_id": contact_id,
            "title": "Website redesign",
            "amount": "10000.00",
            "currency": "EUR",
            **fields,
        }
        r = self.post("/deals", user=user, org=org, json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()

    def task(
        self, user: User, deal_id: int, org: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        import datetime as dt

        tomorrow = dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)
        body = {
            "deal_id": deal_id,
            "title": "Call client",
            "due_date": tomorrow.isoformat(),
            **fields,
        }
        r = self.post("/tasks", user=user, org=org or user.org_id, json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()


def error_code(response: TestResponse) -> str:
    """The unified error body's code, asserting the body has the unified shape."""
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    return body["error"]["code"]
