"""Rate limits, on apps of their own with rate limiting on (the suite's app has it off) and
small limits, against the suite's real Redis. Each test speaks from client addresses and
emails of its own, so the shared counters never mix."""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import jwt as pyjwt
import pytest
import redis
from flask import Flask
from werkzeug.test import TestResponse

from crm_api import create_app
from crm_api.ratelimit import email_digest
from crm_domain.settings import Settings

from .api import PASSWORD, ApiClient, error_code

LIMITS = {
    "RATELIMIT_LOGIN": "3/minute",
    "RATELIMIT_LOGIN_FREE_FAILURES": 5,
    "RATELIMIT_LOGIN_MAX_DELAY": 60,
    "RATELIMIT_AUTH_ADDRESS": "8/minute",
    "RATELIMIT_API": "20/minute",
}
BACKOFF = "5 failed logins, then waits doubling up to 60 s"


def _build(settings: Settings | None = None, **config: Any) -> Flask:
    return create_app(
        settings, OUTBOX_DISPATCH="none", TESTING=True, **{"RATELIMIT_ENABLED": True, **config}
    )


@pytest.fixture
def build(app) -> Iterator[Any]:  # `app`: the database is migrated
    built: list[Flask] = []

    def make(settings: Settings | None = None, **config: Any) -> Flask:
        built.append(_build(settings, **{**LIMITS, **config}))
        return built[-1]

    yield make
    for one in built:
        one.extensions["crm_db"].dispose()


@pytest.fixture
def limited(build) -> Flask:
    return build()


def _address() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def _client(app: Flask, address: str | None = None) -> ApiClient:
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address or _address()
    return ApiClient(client)


def _email() -> str:
    return f"rl-{uuid.uuid4().hex[:12]}@example.com"


def _login(api: ApiClient, email: str, password: str = PASSWORD) -> TestResponse:
    return api.post("/auth/login", json={"email": email, "password": password})


def _assert_429(r: TestResponse, limit: str) -> None:
    assert r.status_code == 429, r.get_json()
    assert error_code(r) == "RATE_LIMITED"
    details = r.get_json()["error"]["details"]
    assert details["limit"] == limit
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= 60
    assert details["retry_after"] == retry_after


def test_failed_logins_per_account_and_address(limited: Flask) -> None:
    api = _client(limited)
    user = api.register()
    for _ in range(3):
        assert _login(api, user.email, "wrong-password").status_code == 401
    _assert_429(_login(api, user.email, "wrong-password"), "3 per 1 minute")
    # Locked for this email from this address, whatever the password and the casing...
    _assert_429(_login(api, user.email.upper()), "3 per 1 minute")
    # ...but not for the owner elsewhere, nor for other emails from here.
    assert _login(_client(limited), user.email).status_code == 200
    other = _client(limited).register()
    assert _login(api, other.email).status_code == 200


def test_successful_logins_do_not_count(limited: Flask) -> None:
    api = _client(limited)
    user = api.register()
    for _ in range(5):
        assert _login(api, user.email).status_code == 200


def _backoff_key(app: Flask, email: str, address: str | None = None) -> str:
    """The Redis key of an account's bucket: its known `address`'s, or the shared one."""
    with app.test_request_context(json={"email": email}):
        digest = email_digest()
    prefix = app.extensions["crm_settings"].redis_key_prefix
    key = f"{prefix}:ratelimit:login-backoff:{digest}"
    return f"{key}:{address}" if address else key


def _wait_passes(app: Flask, key: str) -> None:
    """As if the bucket's wait were over (instead of sleeping through it)."""
    redis_client(app).hset(key, "next", "0")


def redis_client(app: Flask) -> redis.Redis:
    return redis.Redis.from_url(app.extensions["crm_settings"].redis_url)


def test_guesses_from_many_addresses_are_slowed_down_more_and_more(limited: Flask) -> None:
    email = _client(limited).register().email
    for _ in range(5):  # free failures, each from an address of its own
        assert _login(_client(limited), email, "wrong-password").status_code == 401
    shared = _backoff_key(limited, email)
    waits = []
    for _ in range(8):
        r = _login(_client(limited), email, "wrong-password")
        _assert_429(r, BACKOFF)
        waits.append(int(r.headers["Retry-After"]))
        _wait_passes(limited, shared)
        assert _login(_client(limited), email, "wrong-password").status_code == 401
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60]  # doubling, then one guess a minute at most
    r = _login(_client(limited), email)  # the right password from a fresh address waits too
    _assert_429(r, BACKOFF)
    assert r.get_json()["error"]["details"]["retry_after"] <= 60  # never an hour
    # Other accounts are not affected.
    other = _client(limited).register()
    assert _login(_client(limited), other.email).status_code == 200


def test_the_owner_logs_in_from_a_known_address_while_the_account_is_attacked(
    limited: Flask,
) -> None:
    home = _address()
    owner = _client(limited, home)
    user = owner.register()
    assert _login(owner, user.email).status_code == 200  # home is now a known address
    for _ in range(5):
        assert _login(_client(limited), user.email, "wrong-password").status_code == 401
    for _ in range(3):  # the attacker, on fresh addresses, waits...
        _assert_429(_login(_client(limited), user.email, "wrong-password"), BACKOFF)
    r = _login(owner, user.email)  # ...the owner at home does not
    assert r.status_code == 200, r.get_json()
    # A typo at home counts in home's own bucket only, and the owner still gets in.
    assert _login(owner, user.email, "wrong-password").status_code == 401
    assert _login(owner, user.email).status_code == 200
    _assert_429(_login(_client(limited), user.email), BACKOFF)  # fresh addresses still wait


def test_a_known_ipv6_address_is_its_64_prefix(limited: Flask) -> None:
    owner = _client(limited, "2001:db8:1:2::10")
    user = owner.register()
    assert _login(owner, user.email).status_code == 200
    for _ in range(5):
        assert _login(_client(limited), user.email, "wrong-password").status_code == 401
    # the device's next privacy address, in the same /64
    assert _login(_client(limited, "2001:db8:1:2:a:b:c:d"), user.email).status_code == 200
    _assert_429(_login(_client(limited, "2001:db8:1:3::10"), user.email), BACKOFF)


def test_parallel_guesses_cannot_share_a_slot(limited: Flask) -> None:
    """Guesses are counted as they start: when a slot opens, a burst gets one guess in it."""
    email = _client(limited).register().email
    shared = _backoff_key(limited, email)
    for _ in range(5):
        assert _login(_client(limited), email, "wrong-password").status_code == 401
    redis_client(limited).hset(shared, mapping={"n": 12, "next": "0"})  # waits are at 60 s
    codes: list[int] = []
    barrier = threading.Barrier(12)

    def guess() -> None:
        api = _client(limited)
        barrier.wait()
        codes.append(_login(api, email, "wrong-password").status_code)

    threads = [threading.Thread(target=guess) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [401] + [429] * 11


def test_only_failed_logins_count_towards_the_delays(limited: Flask) -> None:
    email = _client(limited).register().email
    for _ in range(10):  # bad requests are no guesses
        assert _client(limited).post("/auth/login", json={"email": email}).status_code == 400
    for _ in range(5):
        assert _login(_client(limited), email, "wrong-password").status_code == 401
    _assert_429(_login(_client(limited), email, "wrong-password"), BACKOFF)


def test_auth_attempts_per_address_and_route(limited: Flask) -> None:
    address = _address()
    api = _client(limited, address)
    for _ in range(8):
        r = api.post("/auth/refresh", json={"refresh_token": "garbage"})
        assert r.status_code == 401
    _assert_429(api.post("/auth/refresh", json={"refresh_token": "garbage"}), "8 per 1 minute")
    # Each route counts on its own; other addresses are not affected.
    assert _login(api, _email()).status_code == 401
    r = _client(limited).post("/auth/refresh", json={"refresh_token": "garbage"})
    assert r.status_code == 401
    # Register counts every attempt, even invalid ones.
    for _ in range(8):
        assert api.post("/auth/register", json={}).status_code == 400
    _assert_429(api.post("/auth/register", json={}), "8 per 1 minute")


def test_api_limit_per_user(limited: Flask) -> None:
    api = _client(limited)
    user = api.register()
    second_session = _login(_client(limited), user.email).get_json()["access_token"]
    for i in range(20):
        token = user.token if i % 2 else second_session
        assert api.get("/auth/me", token=token).status_code == 200
    # Every token of the user shares the budget, from any address.
    _assert_429(api.get("/auth/me", user=user), "20 per 1 minute")
    _assert_429(_client(limited).get("/organizations/me", token=second_session), "20 per 1 minute")
    # Another user from the same address is not affected.
    other = _client(limited).register()
    assert api.get("/auth/me", user=other).status_code == 200


def test_forged_tokens_count_against_the_address_not_the_user(limited: Flask) -> None:
    victim = _client(limited).register()
    claims = pyjwt.decode(victim.token, options={"verify_signature": False})
    forged = pyjwt.encode(claims, "not-the-server-secret-key-0123456789", algorithm="HS256")
    attacker = _client(limited)
    for _ in range(20):
        assert attacker.get("/auth/me", token=forged).status_code == 401
    _assert_429(attacker.get("/auth/me", token=forged), "20 per 1 minute")
    _assert_429(attacker.get("/auth/me", token="garbage"), "20 per 1 minute")
    assert _client(limited).get("/auth/me", user=victim).status_code == 200


def test_health_ready_and_docs_are_never_limited(limited: Flask) -> None:
    api = _client(limited)
    for _ in range(12):
        assert api.get("/health").status_code == 200
        assert api.get("/ready").status_code == 200
        assert api.client.get("/api/v1/openapi.json").status_code == 200
        assert api.client.get("/api/v1/docs").status_code == 200
        assert api.client.get("/api/v1/docs/").status_code == 308
    # The same address's budget is untouched by all that.
    for _ in range(20):
        assert api.get("/auth/me").status_code == 401
    _assert_429(api.get("/auth/me"), "20 per 1 minute")


def test_emails_are_not_stored_in_redis(limited: Flask, test_services) -> None:
    api = _client(limited)
    local = f"spy-{uuid.uuid4().hex[:12]}"
    assert _login(api, f"{local}@example.com", "wrong-password").status_code == 401
    client = redis.Redis.from_url(test_services.redis_url)
    keys = [k.decode() for k in client.scan_iter(match="*ratelimit*login-*", count=1000)]
    assert any("login-account" in k for k in keys) and any("login-backoff" in k for k in keys)
    assert not [k for k in keys if local in k]


def test_ratelimit_enabled_false_in_the_environment_turns_it_off(build, monkeypatch) -> None:
    monkeypatch.setenv("RATELIMIT_API", "2/minute")
    monkeypatch.setenv("RATELIMIT_ENABLED", "false")
    off = create_app(Settings.from_env(), OUTBOX_DISPATCH="none", TESTING=True)
    try:
        api = _client(off)
        assert [api.get("/auth/me").status_code for _ in range(4)] == [401] * 4
    finally:
        off.extensions["crm_db"].dispose()
    # The same settings with it on (the default) do limit.
    monkeypatch.delenv("RATELIMIT_ENABLED")
    settings = Settings.from_env()
    assert settings.ratelimit_enabled
    on = build(settings, RATELIMIT_API="2/minute")
    api = _client(on)
    assert [api.get("/auth/me").status_code for _ in range(3)] == [401, 401, 429]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_redis_outage_lets_requests_through(build) -> None:
    """Limits are skipped while Redis is down, and skipping them costs no waiting: the same
    requests take about as long as with Redis up (a ratio of the two, measured alternately,
    so the machine's load weighs on both alike)."""
    settings = dataclasses.replace(
        Settings.from_env(), redis_url=f"redis://127.0.0.1:{_closed_port()}/0"
    )
    down = build(settings, RATELIMIT_API="1/minute", RATELIMIT_LOGIN="1/minute")
    high = {k: 10_000 if isinstance(v, int) else "10000/minute" for k, v in LIMITS.items()}
    up = build(**high)  # the same requests, counted in Redis, never refused
    user = _client(down).register()

    def requests(app: Flask) -> float:
        api = _client(app)
        start = time.perf_counter()
        for _ in range(3):
            assert _login(api, user.email, "wrong-password").status_code == 401
            assert _login(api, user.email).status_code == 200
            assert api.get("/auth/me", user=user).status_code == 200
        return time.perf_counter() - start

    with_redis, without_redis = [], []
    for _ in range(3):
        with_redis.append(requests(up))
        without_redis.append(requests(down))
    assert min(without_redis) < 5 * min(with_redis), (without_redis, with_redis)


@pytest.mark.parametrize("trusted", [0, 1])
def test_client_address_behind_proxies(build, trusted: int) -> None:
    settings = dataclasses.replace(Settings.from_env(), trusted_proxies=trusted)
    proxied = build(settings)
    proxy = _client(proxied)  # every request arrives from the same proxy address

    def refresh() -> int:
        r = proxy.post(
            "/auth/refresh",
            json={"refresh_token": "garbage"},
            headers={"X-Forwarded-For": _address()},
        )
        return r.status_code

    codes = [refresh() for _ in range(9)]
    if trusted:  # each forwarded client has a budget of its own
        assert codes == [401] * 9
    else:  # X-Forwarded-For from an untrusted peer is ignored: no way around the limit
        assert codes == [401] * 8 + [429]


def test_retry_after_tracks_the_window(build) -> None:
    quick = build(RATELIMIT_AUTH_ADDRESS="2/10 seconds")
    api = _client(quick)
    for _ in range(2):
        assert api.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 401
    r = api.post("/auth/refresh", json={"refresh_token": "x"})
    assert r.status_code == 429
    assert 1 <= int(r.headers["Retry-After"]) <= 10
    assert r.get_json()["error"]["details"]["limit"] == "2 per 10 second"


def test_an_empty_limit_turns_that_limit_off(build, monkeypatch) -> None:
    monkeypatch.setenv("RATELIMIT_API", "")
    settings = Settings.from_env()
    assert settings.ratelimit_api == ""
    no_api_limit = build(settings, RATELIMIT_API=settings.ratelimit_api)
    api = _client(no_api_limit)
    assert {api.get("/auth/me").status_code for _ in range(30)} == {401}
    for _ in range(8):  # the others still hold
        assert api.post("/auth/refresh", json={"refresh_token": "x"}).status_code == 401
    _assert_429(api.post("/auth/refresh", json={"refresh_token": "x"}), "8 per 1 minute")


# The API limit is counted in process and synced in batches (crm_api.ratelimit_storage): a
# process pushes its hits and reads the shared count back every RATELIMIT_SYNC_MS, or once it
# holds 1 % of the limit unpushed. Two apps are two processes: each has its own counts.
BATCHED_API = "300/minute"  # pushes every 3 hits
NO_TIMED_SYNC = 3_600_000  # ms: only the 1 % pushes sync, so the tests decide every step


def test_the_api_limit_is_exact_within_a_process(build) -> None:
    one = build(RATELIMIT_API=BATCHED_API, RATELIMIT_SYNC_MS=NO_TIMED_SYNC)
    user = _client(one).register()
    codes: list[int] = []

    def requests() -> None:  # threads of one process, as in a gunicorn worker
        api = _client(one)
        for _ in range(100):
            codes.append(api.get("/auth/me", user=user).status_code)

    threads = [threading.Thread(target=requests) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert (codes.count(200), codes.count(429)) == (300, 100)
    _assert_429(_client(one).get("/auth/me", user=user), "300 per 1 minute")


def test_the_api_limit_holds_across_processes_within_the_documented_lag(build) -> None:
    first, second = (
        build(RATELIMIT_API=BATCHED_API, RATELIMIT_SYNC_MS=NO_TIMED_SYNC) for _ in range(2)
    )
    user = _client(first).register()
    api_first, api_second = _client(first), _client(second)
    assert api_second.get("/auth/me", user=user).status_code == 200  # 1 hit, not pushed yet
    admitted_first = 0
    while api_first.get("/auth/me", user=user).status_code == 200:
        admitted_first += 1
        assert admitted_first <= 300
    # `first` saw its own hits exactly and `second`'s as far as pushed (none of them).
    assert admitted_first == 300
    # `second` learns of them at its next push, after 1 % of the limit (3 hits) at most.
    codes = [api_second.get("/auth/me", user=user).status_code for _ in range(5)]
    assert codes == [200, 200, 429, 429, 429]
    total = 1 + admitted_first + codes.count(200)
    assert total == 300 + 3  # together: the limit and the other's 1 %


def test_a_process_reads_the_shared_count_again_after_the_sync_interval(build) -> None:
    first = build(RATELIMIT_API=BATCHED_API, RATELIMIT_SYNC_MS=NO_TIMED_SYNC)
    second = build(RATELIMIT_API=BATCHED_API, RATELIMIT_SYNC_MS=50)
    user = _client(first).register()
    api_second = _client(second)
    assert api_second.get("/auth/me", user=user).status_code == 200  # read at t0
    synced = time.monotonic()
    api_first = _client(first)
    while api_first.get("/auth/me", user=user).status_code == 200:
        pass
    while time.monotonic() - synced < 0.1:  # `second`'s counts are older than 50 ms now
        time.sleep(0.01)
    # Its next hit reads the shared count first (without it: 2 more, as in the test above).
    _assert_429(api_second.get("/auth/me", user=user), "300 per 1 minute")


def test_the_auth_limits_stay_exact_across_processes(build) -> None:
    first, second = (build(RATELIMIT_SYNC_MS=NO_TIMED_SYNC) for _ in range(2))
    address = _address()
    apis = [_client(first, address), _client(second, address)]
    codes = [
        apis[i % 2].post("/auth/refresh", json={"refresh_token": "x"}).status_code
        for i in range(12)
    ]
    assert codes == [401] * 8 + [429] * 4
