"""Latest-frame slots and the round-robin scheduler (no ROS needed)."""

from __future__ import annotations

import threading

import pytest

from m2a_perception.runtime.slots import FrameScheduler, LatestFrameSlot

pytestmark = pytest.mark.ros


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_slot_keeps_only_the_newest_frame_and_counts_overwrites():
    slot: LatestFrameSlot[str] = LatestFrameSlot()
    assert slot.put('a', 1.0) is False
    assert slot.put('b', 1.1) is True
    assert slot.put('c', 1.2) is True
    assert slot.take(1.3, max_age_s=1.0) == ('c', 1.2)
    assert slot.take(1.3, max_age_s=1.0) is None
    counters = slot.counters
    assert (counters.received, counters.overwritten, counters.taken, counters.stale) == (
        3,
        2,
        1,
        0,
    )


def test_slot_drops_stale_frames():
    slot: LatestFrameSlot[str] = LatestFrameSlot()
    slot.put('old', 1.0)
    assert slot.take(1.6, max_age_s=0.5) is None
    assert slot.counters.stale == 1 and not slot.full
    slot.put('new', 2.0)
    assert slot.take(100.0, max_age_s=0.0) == ('new', 2.0), 'max age 0 disables the check'


def test_scheduler_round_robin_does_not_starve_slow_cameras():
    clock = FakeClock()
    scheduler: FrameScheduler[int] = FrameScheduler(['a', 'b', 'c'], clock=clock)
    served = []
    for i in range(6):
        scheduler.put('a', i)  # camera a always has a fresh frame
        if i == 0:
            scheduler.put('c', 100)
        if i == 2:
            scheduler.put('b', 200)
        frame = scheduler.next_frame(0.0)
        assert frame is not None
        served.append((frame.camera, frame.item))
    assert served == [('a', 0), ('c', 100), ('a', 2), ('b', 200), ('a', 4), ('a', 5)]


def test_scheduler_counts_overwritten_and_stale_per_camera():
    clock = FakeClock()
    scheduler: FrameScheduler[int] = FrameScheduler(['a', 'b'], max_age_s=0.5, clock=clock)
    for i in range(5):
        scheduler.put('a', i)
    scheduler.put('b', 9)
    clock.now += 1.0  # both frames are now too old
    assert scheduler.next_frame(0.0) is None
    a, b = scheduler.counters('a'), scheduler.counters('b')
    assert (a.received, a.overwritten, a.stale, a.taken) == (5, 4, 1, 0)
    assert (b.received, b.overwritten, b.stale) == (1, 0, 1)
    scheduler.max_age_s = 0.0
    scheduler.put('b', 10)
    clock.now += 5.0
    frame = scheduler.next_frame(0.0)
    assert frame is not None and frame.item == 10 and frame.queue_wait_s == pytest.approx(5.0)


def test_next_frame_wakes_on_put_and_on_close():
    scheduler: FrameScheduler[int] = FrameScheduler(['a'])
    results = []

    def worker() -> None:
        results.append(scheduler.next_frame(30.0))
        results.append(scheduler.next_frame(30.0))

    thread = threading.Thread(target=worker)
    thread.start()
    scheduler.put('a', 1)
    while len(results) < 1:
        thread.join(0.01)
    scheduler.close()
    thread.join(10.0)
    assert not thread.is_alive()
    assert results[0] is not None and results[0].item == 1
    assert results[1] is None
    scheduler.reopen()
    scheduler.put('a', 2)
    assert scheduler.next_frame(1.0).item == 2


def test_clear_discards_waiting_frames():
    scheduler: FrameScheduler[int] = FrameScheduler(['a', 'b'])
    scheduler.put('a', 1)
    scheduler.clear()
    assert scheduler.next_frame(0.0) is None
    assert scheduler.counters('a').cleared == 1


@pytest.mark.parametrize('names', [[], ['a', 'a']])
def test_scheduler_rejects_bad_camera_lists(names):
    with pytest.raises(ValueError, match='distinct and non-empty'):
        FrameScheduler(names)
