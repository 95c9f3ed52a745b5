"""Keyed log throttling: one message per key and period, with a count of what was suppressed.

rclpy's `throttle_duration_sec` throttles per call site, so one error path serving several
cameras and failure reasons would hide all but one of them; this throttles per (camera, reason).

Allowed dependencies: standard library only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable


class KeyedThrottle:
    """Decides whether a message for `key` may be logged now.

    Args:
        period_s: minimum time between two messages of one key.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self._clock = clock
        self._last: dict[Hashable, float] = {}
        self._suppressed: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> tuple[bool, int]:
        """Returns (log now?, messages suppressed for this key since the last logged one)."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False, 0
            self._last[key] = now
            return True, self._suppressed.pop(key, 0)
