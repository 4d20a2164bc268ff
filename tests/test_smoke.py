from .api import ApiClient


def test_register_then_me(api: ApiClient) -> None:
    user = api.register()
    r = api.get("/auth/me", user=user)
    assert r.status_code == 200
    assert r.get_json()["email"] == user.email
