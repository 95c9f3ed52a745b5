"""bag_recorder: record topics of a running ROS graph into an mcap bag (serialized bytes).

The live-replay recorder (`m2a-replay --live`, `launch/replay_eval.launch.py`); works without
the rosbag2 tools. Topics are subscribed as soon as they appear in the graph, with the type the
graph reports and a QoS that matches the publishers (best effort if any publisher is best
effort, else reliable), and written undecoded. The bag is closed properly on SIGINT/SIGTERM, at
--duration, or after --idle-timeout seconds without a message (once one arrived), so it is
always readable.

    python -m m2a_perception.ros.replay.recorder OUT_BAG --topics /front/anomaly/score ... \
        --idle-timeout 5 --ros-args -p use_sim_time:=true

Log times are the node clock (sim time with use_sim_time; the wall clock before the first
/clock message).

Allowed dependencies: rclpy, `m2a_perception.ros.replay.bag`, `m2a_perception.files`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args

from m2a_perception.files import WriteFailedError
from m2a_perception.ros.replay.bag import OutputBag, m2a_typestore, remove_bag

NODE_NAME = 'm2a_bag_recorder'
DEPTH = 100


class BagRecorder:
    """Subscribes to topics as they appear and writes every message into an `OutputBag`.

    Args:
        node: the node that owns the subscriptions.
        bag: the open output bag.
        topics: topic names to record.
    """

    def __init__(self, node: Node, bag: OutputBag, topics: Sequence[str]) -> None:
        self.node = node
        self.bag = bag
        self.wanted = list(dict.fromkeys(topics))
        self.subscribed: dict[str, str] = {}
        self.received = 0
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
        self.last_message_s = time.monotonic()


def _message_class(msgtype: str) -> type:
    from m2a_perception.ros.replay.player import message_class

    return message_class(msgtype)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='bag_recorder',
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument('out', type=Path, help='bag folder to create (mcap)')
    parser.add_argument('--topics', nargs='+', required=True, help='topics to record')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    parser.add_argument(
        '--idle-timeout',
        type=float,
        default=0.0,
        help='stop after N s without messages (0: never)',
    )
    parser.add_argument('--duration', type=float, default=0.0, help='stop after N s (0: never)')
    parser.add_argument('--overwrite', action='store_true', help='replace an existing bag')
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else ['bag_recorder', *argv]
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    if args.overwrite:
        remove_bag(args.out)
    rclpy.init(args=argv)
    stop = {'requested': False}
    # launch and process managers stop children with SIGINT (rclpy's handler) or SIGTERM.
    signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    node = Node(NODE_NAME)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    bag = OutputBag(args.out, storage=args.storage)
    recorder = BagRecorder(node, bag, args.topics)
    start = time.monotonic()
    reason = 'shutdown'
    next_discovery = start
    try:
        while rclpy.ok() and not stop['requested'] and recorder.failure is None:
            executor.spin_once(timeout_sec=0.05)
            now = time.monotonic()
            if now >= next_discovery:
                recorder.discover()
                next_discovery = now + 0.1
            if args.duration > 0 and now - start > args.duration:
                reason = f'duration {args.duration:g} s reached'
                break
            last = recorder.last_message_s
            if args.idle_timeout > 0 and last is not None and now - last > args.idle_timeout:
                reason = f'no message for {args.idle_timeout:g} s'
                break
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        try:
            bag.close()
        except WriteFailedError as error:
            recorder.failure = recorder.failure or error
        if recorder.failure is not None:
            reason = str(recorder.failure)
        missing = [t for t in recorder.wanted if t not in recorder.subscribed]
        print(
            f'recorder: {reason}; wrote {bag.message_count} message(s) on '
            f'{len(recorder.subscribed)} topic(s) to {args.out}'
            + (f'; never published: {", ".join(missing)}' if missing else ''),
            flush=True,
        )
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 1 if recorder.failure is not None else 0


if __name__ == '__main__':
    sys.exit(main())
