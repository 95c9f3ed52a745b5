"""Subscriber process for transport tests: prints the receive times of the first N frames.

Usage: frame_counter.py TOPIC COUNT TIMEOUT_S [best_effort|reliable]
Prints one JSON line {"received": n, "sizes": [...], "times": [...]} and exits.
"""

from __future__ import annotations

import json
import sys
import time

import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image


def main(argv: list[str]) -> int:
    topic, count, timeout_s = argv[0], int(argv[1]), float(argv[2])
    reliability = argv[3] if len(argv) > 3 else 'best_effort'
    rclpy.init()
    node = rclpy.create_node('m2a_frame_counter')
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=2,
        reliability=(
            ReliabilityPolicy.BEST_EFFORT
            if reliability == 'best_effort'
            else ReliabilityPolicy.RELIABLE
        ),
    )
    times: list[float] = []
    sizes: list[int] = []

    def on_frame(msg: Image) -> None:
        times.append(time.monotonic())
        sizes.append(len(msg.data))

    node.create_subscription(Image, topic, on_frame, qos)
    print('ready', flush=True)
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and len(times) < count:
        rclpy.spin_once(node, timeout_sec=0.1)
    print(json.dumps({'received': len(times), 'sizes': sorted(set(sizes)), 'times': times}))
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
