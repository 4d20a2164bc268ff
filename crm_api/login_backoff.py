"""Failed logins per account: progressive delays that an attacker cannot turn into a lockout of
the owner (OWASP Authentication Cheat Sheet, "Account Lockout"; the per-address variant of its
device cookies).

Every login attempt for an e-mail lands in one of that account's buckets:

- an address that logged in to the account before (within RATELIMIT_LOGIN_KNOWN_DAYS, renewed
  by each login; IPv6 by its /64, where a device's addresses rotate) has a bucket of its own;
- every other address shares one bucket.

In a bucket the first RATELIMIT_LOGIN_FREE_FAILURES failed logins cost nothing; from then on
each attempt must come at least 1 s, 2 s, 4 s, ... after the previous one, doubling with each
failure up to RATELIMIT_LOGIN_MAX_DELAY (429 with Retry-After until then). A bucket is forgotten
FORGET_SECONDS after its last attempt. So guessing from any number of fresh addresses is held
to one try per RATELIMIT_LOGIN_MAX_DELAY per account, while the owner, from an address they
logged in from before, is not slowed down by any of it; from a fresh address they wait at most
RATELIMIT_LOGIN_MAX_DELAY, never an hour.

An attempt is counted when it starts (one Lua script checks the wait and counts it, so a burst
of parallel guesses cannot share one free slot) and given back when it turns out not to be a
failed login (200, a 400, ...); a success also empties the bucket of a known address and makes
the address known. Keys hold the HMAC of the e-mail (crm_api.ratelimit), never the e-mail.
When Redis is unreachable the check is skipped (logged), like the other limits."""

from __future__ import annotations

import ipaddress
import logging
import math
from dataclasses import dataclass

import redis
from flask import Flask, Response, g, request

from .errors import error_response
from .ratelimit import LOGIN, client_address, email_digest

log = logging.getLogger(__name__)

FORGET_SECONDS = 24 * 3600

# KEYS: the known-address marker, the known address's bucket, the shared bucket.
# ARGV: free failures, longest delay. Returns {allowed, seconds to wait, the bucket counted in}.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local bucket = KEYS[3]
if redis.call('EXISTS', KEYS[1]) == 1 then bucket = KEYS[2] end
local n = tonumber(redis.call('HGET', bucket, 'n') or '0')
local next_at = tonumber(redis.call('HGET', bucket, 'next') or '0')
if now < next_at then return {0, tostring(next_at - now), bucket} end
n = n + 1
local delay = 0
if n >= tonumber(ARGV[1]) then
    delay = math.min(tonumber(ARGV[2]), 2 ^ (n - tonumber(ARGV[1])))
end
redis.call('HSET', bucket, 'n', n, 'next', tostring(now + delay))
redis.call('EXPIRE', bucket, tonumber(ARGV[3]))
return {1, '0', bucket}
"""
# KEYS: the bucket. The attempt was not a failed login: it does not count.
_GIVE_BACK = """
if redis.call('HINCRBY', KEYS[1], 'n', -1) < 0 then redis.call('DEL', KEYS[1]) end
"""


@dataclass(frozen=True)
class Policy:
    free_failures: int
    max_delay: int
    known_days: int

    @property
    def description(self) -> str:
        return f"{self.free_failures} failed logins, then waits doubling up to {self.max_delay} s"


def address_key(address: str) -> str:
    """An address as the known-address list keeps it: IPv6 by its /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class LoginBackoff:
    def __init__(self, client: redis.Redis, prefix: str, policy: Policy) -> None:
        self.client = client
        self.prefix = f"{prefix}:ratelimit"
        self.policy = policy
        self._claim = client.register_script(_CLAIM)
        self._give_back = client.register_script(_GIVE_BACK)

    def _keys(self, digest: str, address: str) -> tuple[str, str, str]:
        where = address_key(address)
        return (
            f"{self.prefix}:login-known:{digest}:{where}",
            f"{self.prefix}:login-backoff:{digest}:{where}",
            f"{self.prefix}:login-backoff:{digest}",
        )

    def before(self) -> Response | None:
        """Before the login view: 429 while the attempt's bucket must wait, else count it."""
        if request.endpoint != LOGIN:
            return None
        digest = email_digest()
        if digest == "-":
            return None  # no e-mail: a 400 follows, nothing to guess
        keys = self._keys(digest, client_address())
        policy = self.policy
        try:
            allowed, wait, bucket = self._claim(
                keys=list(keys), args=[policy.free_failures, policy.max_delay, FORGET_SECONDS]
            )
        except redis.RedisError:
            log.warning("login backoff skipped: Redis is unreachable", exc_info=True)
            return None
        if not allowed:
            retry_after = max(1, math.ceil(float(wait)))
            return error_response(
                429,
                "RATE_LIMITED",
                f"Too many failed logins for this account; try again in {retry_after} s",
                {"limit": policy.description, "retry_after": retry_after},
                {"Retry-After": str(retry_after)},
            )
        g.login_backoff = (keys, bucket.decode() if isinstance(bucket, bytes) else bucket)
        return None

    def after(self, response: Response) -> Response:
        """After the login view: a failed login (401) stays counted; anything else is given
        back, and a success makes the address known and clears its own bucket."""
        claimed = g.pop("login_backoff", None)
        if claimed is None or response.status_code == 401:
            return response
        (known, own_bucket, _shared), bucket = claimed
        try:
            if response.status_code == 200:
                with self.client.pipeline() as pipe:
                    pipe.set(known, 1, ex=self.policy.known_days * 86400)
                    pipe.delete(own_bucket)
                    pipe.execute()
            if response.status_code != 200 or bucket != own_bucket:
                self._give_back(keys=[bucket])
        except redis.RedisError:
            log.warning("login backoff not updated: Redis is unreachable", exc_info=True)
        return response


def init_login_backoff(app: Flask, *, redis_url: str, key_prefix: str) -> None:
    """Progressive delays on failed logins (off with RATELIMIT_ENABLED=false, or with
    RATELIMIT_LOGIN_MAX_DELAY=0)."""
    config = app.config
    policy = Policy(
        free_failures=int(config["RATELIMIT_LOGIN_FREE_FAILURES"]),
        max_delay=int(config["RATELIMIT_LOGIN_MAX_DELAY"]),
        known_days=int(config["RATELIMIT_LOGIN_KNOWN_DAYS"]),
    )
    if not config.get("RATELIMIT_ENABLED", True) or policy.max_delay <= 0:
        return
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=0.25, socket_timeout=0.25)
    backoff = LoginBackoff(client, key_prefix, policy)
    app.before_request(backoff.before)
    app.after_request(backoff.after)
