"""bcrypt password hashing: one cost, a cap on concurrent hashes, constant-cost failures.

bcrypt releases the GIL and keeps a core busy for the whole hash (about 250 ms at cost 12),
so a burst of logins would take every core of the process from the other requests. At most
`max_concurrent` hashes run at a time in a process; the others wait their turn.

A login whose email is unknown (or whose password is too long to hash) still pays for one
comparison at the configured cost, so the answer time does not tell who is registered."""

from __future__ import annotations

import threading

import bcrypt

MIN_PASSWORD_BYTES = 8
MAX_PASSWORD_BYTES = 72  # bcrypt's limit; bcrypt 5 refuses longer input
_DUMMY_PASSWORD = b"timing-equalizer"


class PasswordHasher:
    def __init__(self, rounds: int = 12, max_concurrent: int = 1) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.rounds = rounds
        self.max_concurrent = max_concurrent
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._dummy_hash: bytes | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        """The bcrypt hash of a password of at most MAX_PASSWORD_BYTES (checked by the caller)."""
        salt = bcrypt.gensalt(self.rounds)
        with self._slots:
            return bcrypt.hashpw(password.encode("utf-8"), salt).decode("ascii")

    def verify(self, password: str, hashed: str) -> bool:
        raw = password.encode("utf-8")
        if len(raw) > MAX_PASSWORD_BYTES:  # never matches, but costs what a comparison costs
            self.spend_one_comparison()
            return False
        with self._slots:
            return bcrypt.checkpw(raw, hashed.encode("ascii"))

    def spend_one_comparison(self) -> None:
        """Take as long as verifying a password against a real hash of the configured cost."""
        dummy = self._dummy()
        with self._slots:
            bcrypt.checkpw(_DUMMY_PASSWORD, dummy)

    def _dummy(self) -> bytes:
        """A hash at the configured cost, made once (on first use, not at import)."""
        if self._dummy_hash is None:
            with self._dummy_lock:
                if self._dummy_hash is None:
                    with self._slots:
                        self._dummy_hash = bcrypt.hashpw(
                            b"not-a-real-password", bcrypt.gensalt(self.rounds)
                        )
        return self._dummy_hash
