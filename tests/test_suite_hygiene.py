"""The suite cleans up after itself in the Redis it shares with other runs."""

from __future__ import annotations

import os
import subprocess
import sys

import redis

from .scratch import ROOT

# Tests that leave analytics hashes (the session's prefix and a scratch database's prefix)
# and large-total keys behind until the session ends.
INNER_TESTS = [
    "tests/test_analytics_cache.py::test_days_variant_cached_on_miss_and_dropped_by_refresh",
    "tests/test_restore.py::test_recreated_database_serves_a_new_process_nothing_of_the_previous_tenant",
]


def test_a_run_leaves_no_keys_in_the_shared_redis(test_services) -> None:
    env = {
        **os.environ,
        "TEST_DATABASE_URL": test_services.admin_url,
        "TEST_REDIS_URL": test_services.redis_url,
    }
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"):
        env.pop(name, None)
    inner = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *INNER_TESTS],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, _ = inner.communicate(timeout=300)
    # The inner tests passing means their keys existed (they assert on them) ...
    assert inner.returncode == 0, output
    assert "2 passed" in output, output
    # ... and the run's database is named crm_test_<its pid>_<random>, its keys after it.
    client = redis.Redis.from_url(test_services.redis_url)
    try:
        assert list(client.scan_iter(match=f"crm_test_{inner.pid}_*", count=1000)) == []
    finally:
        client.close()
