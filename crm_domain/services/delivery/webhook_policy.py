"""When a failed webhook delivery is tried again, and when an endpoint is given up on (the
settings WEBHOOK_RETRY_SCHEDULE, WEBHOOK_DISABLE_AFTER_*; applied by webhook_attempts)."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again and when to give up on an endpoint."""

    schedule: tuple[float, ...]  # seconds before retry 1, 2, ...
    disable_after: dt.timedelta = dt.timedelta(days=5)
    disable_after_failed_events: int = 50  # 0: never for this reason
    jitter: float = 0.2  # each delay is scaled by a random factor in [1 - jitter, 1 + jitter]

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.schedule)

    def delay(self, attempts_made: int, retry_after: float | None = None) -> dt.timedelta:
        """The wait before the next attempt after `attempts_made` (>= 1) attempts. A
        receiver's Retry-After is honored up to the schedule's longest step."""
        base = self.schedule[min(attempts_made, len(self.schedule)) - 1]
        seconds = base * random.uniform(1 - self.jitter, 1 + self.jitter)
        if retry_after is not None:
            seconds = max(seconds, min(retry_after, max(self.schedule)))
        return dt.timedelta(seconds=seconds)
