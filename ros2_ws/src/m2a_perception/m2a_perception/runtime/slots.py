"""Per-camera latest-frame slots and the round-robin hand-off to the inference worker.

Each camera has a slot of capacity one. A new frame replaces an unprocessed one (counted as
overwritten); a frame that waited longer than the maximum input age is discarded when the worker
reaches it (counted as stale). Frames therefore never queue up into growing latency, whatever
the camera rate and however slow the model.

Allowed dependencies: standard library only (frames are opaque objects).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar('T')


@dataclass(frozen=True)
class Frame(Generic[T]):
    """A frame taken from a slot.

    Attributes:
        camera: camera name.
        item: the message as received.
        received: monotonic receive time in seconds.
        taken: monotonic time the worker took it in seconds.
    """

    camera: str
    item: T
    received: float
    taken: float

    @property
    def queue_wait_s(self) -> float:
        """Seconds between receipt and the start of processing."""
        return self.taken - self.received


@dataclass
class SlotCounters:
    """Frame counters of one camera since the slots were created or reset.

    Attributes:
        received: frames put into the slot.
        taken: frames handed to the worker.
        overwritten: frames replaced by a newer one before the worker took them.
        stale: frames discarded for exceeding the maximum input age.
        cleared: frames discarded by `clear` (deactivation).
    """

    received: int = 0
    taken: int = 0
    overwritten: int = 0
    stale: int = 0
    cleared: int = 0


class LatestFrameSlot(Generic[T]):
    """Capacity-one slot: holds only the newest frame. Not thread-safe on its own."""

    def __init__(self) -> None:
        self._item: T | None = None
        self._received = 0.0
        self._full = False
        self.counters = SlotCounters()

    @property
    def full(self) -> bool:
        return self._full

    def put(self, item: T, now: float) -> bool:
        """Store `item`; returns True if it replaced a frame that was never processed."""
        replaced = self._full
        if replaced:
            self.counters.overwritten += 1
        self._item, self._received, self._full = item, now, True
        self.counters.received += 1
        return replaced

    def take(self, now: float, max_age_s: float) -> tuple[T, float] | None:
        """Remove and return (item, receive time), or None if empty or stale.

        Args:
            now: monotonic time in seconds.
            max_age_s: frames older than this (since receipt) are dropped; 0 disables the check.
        """
        if not self._full:
            return None
        item, received = self._item, self._received
        self._item, self._full = None, False
        if max_age_s > 0.0 and now - received > max_age_s:
            self.counters.stale += 1
            return None
        self.counters.taken += 1
        return item, received  # type: ignore[return-value]

    def clear(self) -> None:
        if self._full:
            self.counters.cleared += 1
        self._item, self._full = None, False


class FrameScheduler(Generic[T]):
    """Latest-frame slots of N cameras served round-robin to one worker thread.

    Callbacks call `put` from the executor thread; the worker blocks in `next_frame`. The maximum
    input age may be changed at runtime (`max_age_s`).

    Args:
        cameras: camera names, in service order.
        max_age_s: maximum time a frame may wait in its slot; 0 disables the check.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(
        self,
        cameras: Iterable[str],
        max_age_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._names = tuple(cameras)
        if not self._names or len(set(self._names)) != len(self._names):
            raise ValueError(f'cameras must be distinct and non-empty, got {self._names}')
        self._slots: dict[str, LatestFrameSlot[T]] = {n: LatestFrameSlot() for n in self._names}
        self._condition = threading.Condition()
        self._next_index = 0
        self._closed = False
        self._clock = clock
        self.max_age_s = max_age_s

    @property
    def cameras(self) -> tuple[str, ...]:
        return self._names

    def put(self, camera: str, item: T) -> bool:
        """Store the newest frame of `camera`; returns True if an unprocessed frame was dropped."""
        with self._condition:
            replaced = self._slots[camera].put(item, self._clock())
            self._condition.notify()
        return replaced

    def next_frame(self, timeout_s: float) -> Frame[T] | None:
        """Block until a fresh frame is available, the timeout passes, or `close` is called.

        Cameras are visited round-robin starting after the one served last, so a fast camera
        cannot starve a slow one. Stale frames met on the way are dropped and counted.
        """
        deadline = self._clock() + timeout_s
        with self._condition:
            while not self._closed:
                frame = self._take_next()
                if frame is not None:
                    return frame
                remaining = deadline - self._clock()
                if remaining <= 0.0:
                    return None
                self._condition.wait(remaining)
        return None

    def _take_next(self) -> Frame[T] | None:
        count = len(self._names)
        now = self._clock()
        for offset in range(count):
            index = (self._next_index + offset) % count
            name = self._names[index]
            taken = self._slots[name].take(now, self.max_age_s)
            if taken is not None:
                self._next_index = (index + 1) % count
                return Frame(name, taken[0], taken[1], now)
        return None

    def counters(self, camera: str) -> SlotCounters:
        """A snapshot of one camera's counters."""
        with self._condition:
            source = self._slots[camera].counters
            return SlotCounters(**vars(source))

    def clear(self) -> None:
        """Discard all waiting frames (e.g. on deactivation); counters are kept."""
        with self._condition:
            for slot in self._slots.values():
                slot.clear()

    def close(self) -> None:
        """Wake the worker and make `next_frame` return None from now on."""
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def reopen(self) -> None:
        """Undo `close` (re-activation)."""
        with self._condition:
            self._closed = False
