"""A small per-process memo of answers for a few seconds (the request path's checks)."""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Memo(Generic[K, V]):
    """key -> value for `ttl` seconds (nothing is kept when `ttl` <= 0); bounded in size."""

    def __init__(self, ttl: float, maxsize: int = 10_000) -> None:
        self.ttl = ttl
        self.maxsize = maxsize
        self._answers: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        hit = self._answers.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        with self._lock:
            if len(self._answers) >= self.maxsize:
                self._answers.clear()  # rare; simpler and cheaper than LRU bookkeeping
            self._answers[key] = (time.monotonic() + self.ttl, value)

    def forget(self) -> None:
        with self._lock:
            self._answers.clear()
