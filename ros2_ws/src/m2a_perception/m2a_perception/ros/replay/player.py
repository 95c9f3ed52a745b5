"""The bag player node: publish a bag's topics with their recorded timing and a /clock.

`BagPlayer` is the ROS adapter; the `bag_player` executable (its options and timing rules) is
`m2a_perception.cli.bag_player`.

Allowed dependencies: rclpy, rosgraph_msgs, message packages (imported by type name),
`m2a_perception.ros.replay.bag`.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from m2a_perception.ros.replay.bag import BagReader, BagReadError

NODE_NAME = 'm2a_bag_player'
CLOCK_TOPIC = '/clock'
# Reliable, so both reliable and best-effort subscribers (the node's sensor-data profile) match.
DATA_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE
)
# As rclcpp::ClockQoS: subscribers (rclpy's TimeSource) use best effort, depth 1.
CLOCK_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT
)
EXIT_DAMAGED = 1
EXIT_USAGE = 2


def message_class(msgtype: str) -> type:
    """The rclpy class of 'pkg/msg/Name'.

    Raises:
        ValueError: the package or type is not importable here.
    """
    package, _, name = msgtype.partition('/msg/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f'message type {msgtype} is not available in this ROS install') from error


def ns_from_time(seconds: float) -> int:
    return round(seconds * 1e9)


class BagPlayer:
    """Publishes a bag's messages in real time (scaled) with a sim clock.

    Args:
        node: the node that owns the publishers.
        reader: the open bag.
        topics: topics to play (all if empty).
        rate: playback speed factor.
        clock_hz: /clock rate while waiting between messages; 0 disables /clock.
    """

    def __init__(
        self,
        node: Node,
        reader: BagReader,
        topics: Sequence[str],
        rate: float = 1.0,
        clock_hz: float = 100.0,
    ) -> None:
        if not rate > 0.0:
            raise ValueError(f'rate must be positive, got {rate}')
        self.node = node
        self.reader = reader
        missing = [t for t in topics if t not in reader.topics]
        if missing:
            raise ValueError(f'topics not in the bag: {", ".join(missing)}')
        self.topics = list(topics) or sorted(reader.topics)
        self.rate = rate
        self.clock_hz = clock_hz
        self.publishers = {
            topic: node.create_publisher(
                message_class(reader.topics[topic].msgtype), topic, DATA_QOS
            )
            for topic in self.topics
        }
        self.clock = node.create_publisher(Clock, CLOCK_TOPIC, CLOCK_QOS) if clock_hz > 0 else None
        self.published = 0

    def wait_for_subscribers(
        self, topics: Sequence[str], count: int, timeout_s: float, settle_s: float
    ) -> None:
        """Block until every topic in `topics` has `count` subscriptions.

        The matched counts come from the middleware's discovery (no spinning needed).

        Raises:
            TimeoutError: naming the topics still waiting and how many subscribers each has.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            matched = {t: self.publishers[t].get_subscription_count() for t in topics}
            waiting = {t: n for t, n in matched.items() if n < count}
            if not waiting:
                break
            if time.monotonic() > deadline:
                # Matched (the publisher's view) against discovered (this node's graph): fewer
                # discovered means the subscriber was never discovered, more means unmatched.
                raise TimeoutError(
                    f'waited {timeout_s:.0f} s for {count} subscriber(s) on each of '
                    f'{", ".join(topics)}; still short: '
                    + ', '.join(
                        f'{t} has {n} (the ROS graph shows {self.node.count_subscribers(t)})'
                        for t, n in waiting.items()
                    )
                )
            time.sleep(0.05)
        time.sleep(settle_s)

    def publish_clock(self, bag_time_ns: int) -> None:
        if self.clock is not None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(max(0, bag_time_ns), 1_000_000_000)
            self.clock.publish(msg)

    def _wait_until(self, due: float, start_wall: float, start_bag_ns: int) -> None:
        """Sleep until `due` (monotonic), ticking /clock."""
        period = 1.0 / self.clock_hz if self.clock is not None else None
        while (now := time.monotonic()) < due:
            if period is not None:
                self.publish_clock(start_bag_ns + ns_from_time((now - start_wall) * self.rate))
                time.sleep(min(period, due - now))
            else:
                time.sleep(due - now)

    def play(self, tail_s: float = 0.0, progress: bool = False) -> None:
        """Play every message; then keep the clock running for `tail_s` seconds.

        Raises:
            BagReadError: the bag is damaged (after everything before the damage was played).
        """
        total = self.reader.count(self.topics)
        start_wall: float | None = None
        start_bag_ns = 0
        last_bag_ns = 0
        try:
            for message in self.reader.messages(self.topics):
                if start_wall is None:
                    start_wall, start_bag_ns = time.monotonic(), message.log_time_ns
                    self.publish_clock(start_bag_ns)
                due = start_wall + (message.log_time_ns - start_bag_ns) / 1e9 / self.rate
                self._wait_until(due, start_wall, start_bag_ns)
                self.publish_clock(message.log_time_ns)
                self.publishers[message.topic].publish(message.data)
                last_bag_ns = message.log_time_ns
                self.published += 1
                if progress:
                    print(
                        f'progress {self.published}/{total if total is not None else "?"}',
                        flush=True,
                    )
        except BagReadError:
            # What was played stays usable: its clock runs on, then the error is reported.
            self._tail(start_wall, tail_s, last_bag_ns)
            raise
        # Not on KeyboardInterrupt: Ctrl-C has shut the context down, nothing may be published.
        self._tail(start_wall, tail_s, last_bag_ns)

    def _tail(self, start_wall: float | None, tail_s: float, last_bag_ns: int) -> None:
        if start_wall is not None and tail_s > 0.0:
            tail_start = time.monotonic()
            self._wait_until(tail_start + tail_s, tail_start, last_bag_ns)
