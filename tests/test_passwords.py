"""Password hashing: login timing that does not tell who is registered, and a per-process cap
on concurrent bcrypt work."""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import bcrypt
import pytest

from crm_api import create_app
from crm_domain import passwords
from crm_domain.passwords import PasswordHasher

from .api import PASSWORD, ApiClient

# The suite hashes at cost 4 (~1 ms): too cheap to tell a hash from request overhead. The
# timing test raises it to 10 (~60 ms), where a cheaper path is plain to see.
TIMING_ROUNDS = 10


@pytest.fixture(scope="module")
def costly_app(app) -> Iterator[Any]:  # `app` has migrated the database
    costly = create_app(
        OUTBOX_DISPATCH="none", TESTING=True, BCRYPT_ROUNDS=TIMING_ROUNDS, RATELIMIT_ENABLED=False
    )
    yield costly
    costly.extensions["crm_db"].dispose()


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_login_takes_as_long_for_an_unknown_email_as_for_a_wrong_password(costly_app) -> None:
    api = ApiClient(costly_app.test_client())
    user = api.register()
    assert user.email  # registered at cost 10

    def login(email: str, password: str) -> Callable[[], Any]:
        def call() -> None:
            r = api.post("/auth/login", json={"email": email, "password": password})
            assert r.status_code == 401, r.get_json()

        return call

    paths = {
        "unknown email": login(f"nobody-{uuid.uuid4().hex[:8]}@example.com", PASSWORD),
        "wrong password": login(user.email, PASSWORD + "x"),
        "overlong password": login(user.email, "x" * 100),
    }
    real_hash = bcrypt.hashpw(b"y", bcrypt.gensalt(TIMING_ROUNDS))
    paths["bare comparison"] = lambda: bcrypt.checkpw(b"x", real_hash)  # the cost to pay
    for call in paths.values():  # warm up (the first unknown email also makes the dummy hash)
        call()
    rounds: list[dict[str, float]] = []
    for _ in range(15):  # interleaved: load on the machine falls on every path of a round
        rounds.append({name: _timed(call) for name, call in paths.items()})

    def ratio(a: str, b: str) -> float:
        """Median over the rounds of a's time / b's time: robust to load that comes and goes."""
        return statistics.median(r[a] / r[b] for r in rounds)

    medians = {name: statistics.median(r[name] for r in rounds) for name in paths}
    unknown = ratio("unknown email", "wrong password")
    overlong = ratio("overlong password", "wrong password")
    assert 1 / 1.2 <= unknown <= 1.2, (unknown, medians)
    assert 1 / 1.2 <= overlong <= 1.2, (overlong, medians)
    # And each login did pay for a comparison at cost 10, not a cheaper one (~1/16 of it).
    assert ratio("unknown email", "bare comparison") >= 0.7, medians
    assert ratio("wrong password", "bare comparison") >= 0.7, medians


def test_the_dummy_hash_has_the_configured_cost_and_is_made_once(monkeypatch) -> None:
    made: list[int] = []
    compared: list[bytes] = []
    real_hashpw, real_checkpw = bcrypt.hashpw, bcrypt.checkpw

    def hashpw(password: bytes, salt: bytes) -> bytes:
        made.append(1)
        return real_hashpw(password, salt)

    def checkpw(password: bytes, hashed: bytes) -> bool:
        compared.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(passwords.bcrypt, "hashpw", hashpw)
    monkeypatch.setattr(passwords.bcrypt, "checkpw", checkpw)
    hasher = PasswordHasher(rounds=5)
    assert made == []  # lazily: nothing at construction
    hasher.spend_one_comparison()
    hasher.spend_one_comparison()
    assert not hasher.verify("x" * 73, "unused: too long to compare")
    assert len(made) == 1
    assert len(compared) == 3
    assert all(h == compared[0] and h.startswith(b"$2b$05$") for h in compared)


def _count_concurrency(monkeypatch, delay: float = 0.05) -> dict[str, int]:
    """Wrap bcrypt's hash and compare so they record the most that ran at once."""
    state = {"now": 0, "max": 0, "calls": 0}
    lock = threading.Lock()

    def counted(real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any) -> Any:
            with lock:
                state["now"] += 1
                state["calls"] += 1
                state["max"] = max(state["max"], state["now"])
            try:
                time.sleep(delay)  # long enough for the other threads to pile up
                return real(*args)
            finally:
                with lock:
                    state["now"] -= 1

        return wrapper

    monkeypatch.setattr(passwords.bcrypt, "hashpw", counted(bcrypt.hashpw))
    monkeypatch.setattr(passwords.bcrypt, "checkpw", counted(bcrypt.checkpw))
    return state


def _run_in_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = work(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


@pytest.mark.parametrize("cap", [1, 2])
def test_concurrent_hashes_are_capped_per_hasher(monkeypatch, cap: int) -> None:
    hasher = PasswordHasher(rounds=4, max_concurrent=cap)
    stored = hasher.hash(PASSWORD)
    state = _count_concurrency(monkeypatch)

    def work(i: int) -> bool:
        if i % 3 == 0:
            return hasher.verify(PASSWORD, stored)
        if i % 3 == 1:
            hasher.spend_one_comparison()
            return True
        return hasher.verify(PASSWORD, hasher.hash(PASSWORD))

    results = _run_in_threads(8, work)
    assert results == [True] * 8
    assert state["max"] == cap, state


def test_concurrent_logins_queue_for_the_apps_hashing_slot(app, monkeypatch) -> None:
    api = ApiClient(app.test_client())
    user = api.register()
    hasher: PasswordHasher = app.extensions["crm_passwords"]
    assert hasher.max_concurrent == 1  # the default PASSWORD_HASH_CONCURRENCY
    state = _count_concurrency(monkeypatch)

    def login(i: int) -> int:
        client = ApiClient(app.test_client())
        password = PASSWORD if i % 2 == 0 else PASSWORD + "x"
        r = client.post("/auth/login", json={"email": user.email, "password": password})
        return r.status_code

    codes = _run_in_threads(6, login)
    assert sorted(codes) == [200, 200, 200, 401, 401, 401]
    assert state["calls"] == 6
    assert state["max"] == 1, state
