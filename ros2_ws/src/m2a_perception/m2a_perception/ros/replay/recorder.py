"""The bag recorder node: record topics of a running ROS graph into a bag (serialized bytes).

`BagRecorder` is the ROS adapter; the `bag_recorder` executable (its options and stop rules) is
`m2a_perception.cli.bag_recorder`.

Allowed dependencies: rclpy, `m2a_perception.ros.replay.bag`, `m2a_perception.files`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from m2a_perception.files import WriteFailedError
from m2a_perception.ros.replay.bag import OutputBag, m2a_typestore

NODE_NAME = 'm2a_bag_recorder'
DEPTH = 100


class BagRecorder:
    """Subscribes to topics as they appear and writes every message into an `OutputBag`.

    Args:
        node: the node that owns the subscriptions.
        bag: the open output bag.
        topics: topic names to record.
        idle_after: `last_message_s` (the idle clock) starts with the first message on one of
            these topics; empty: with the first message on any topic. A live replay names the
            played cameras: the node's start-up /diagnostics must not start the idle clock while
            the player still waits for its subscribers.
    """

    def __init__(
        self, node: Node, bag: OutputBag, topics: Sequence[str], idle_after: Sequence[str] = ()
    ) -> None:
        self.node = node
        self.bag = bag
        self.wanted = list(dict.fromkeys(topics))
        self.subscribed: dict[str, str] = {}
        self.received = 0
        self.idle_after = frozenset(idle_after)
        # Monotonic time of the last message since the idle clock started (None before).
        self.last_message_s: float | None = None
        # Set when the bag cannot be written (disk full): the bag is closed, recording stops.
        self.failure: WriteFailedError | None = None
        self._warned: set[str] = set()
        self.discover()

    def discover(self) -> None:
        """Subscribe to wanted topics that now have publishers (called from the main loop: a
        timer would follow the sim clock, which stands still until the player starts)."""
        missing = [t for t in self.wanted if t not in self.subscribed]
        if not missing:
            return
        types = dict(self.node.get_topic_names_and_types())
        store = m2a_typestore()
        for topic in missing:
            names = types.get(topic)
            if not names:
                continue
            msgtype = names[0]
            if msgtype not in store.types:
                if topic not in self._warned:
                    self.node.get_logger().warning(
                        f'not recording {topic}: unknown type {msgtype}'
                    )
                    self._warned.add(topic)
                continue
            publishers = self.node.get_publishers_info_by_topic(topic)
            best_effort = any(
                p.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for p in publishers
            )
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=DEPTH,
                reliability=(
                    ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE
                ),
            )
            message_class = _message_class(msgtype)
            try:
                self.bag.add_topic(topic, msgtype)
            except WriteFailedError as error:
                self.failure = error
                self.node.get_logger().error(str(error))
                return
            self.node.create_subscription(
                message_class,
                topic,
                lambda data, t=topic: self._on_message(t, data),
                qos,
                raw=True,
            )
            self.subscribed[topic] = msgtype
            self.node.get_logger().info(f'recording {topic} ({msgtype})')

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.failure is not None:
            return
        now_ns = self.node.get_clock().now().nanoseconds or time.time_ns()
        try:
            self.bag.write(topic, now_ns, data)
        except WriteFailedError as error:
            self.failure = error
            self.node.get_logger().error(str(error))
            return
        self.received += 1
        if self.last_message_s is not None or not self.idle_after or topic in self.idle_after:
            self.last_message_s = time.monotonic()


def _message_class(msgtype: str) -> type:
    from m2a_perception.ros.replay.player import message_class

    return message_class(msgtype)
