"""Fake camera process for the multi-process ROS tests: publishes frames on one or two topics.

Run as a script (it is started by the tests as a subprocess):

    python tests/ros/fake_camera.py --topic /m2a/front/image --rate 5 --stamp synthetic

Scenarios:
    good  valid frames in `--encoding` (or `--format jpeg|png` for CompressedImage);
    bad   a cycle of malformed Image messages (wrong encoding, short step, short data, zero
          size, huge frame, NaN float image) with a valid frame after each, and, with
          `--compressed-topic`, corrupt and valid JPEGs on that topic;
    oversized  CompressedImage "JPEGs" of `--payload-bytes` (above the node's compressed limit).

Synthetic stamps are `sec = 1_000_000 + i, nanosec = 500` so tests can match outputs to inputs
exactly; `now` stamps measure latency.
"""

from __future__ import annotations

import argparse
import array
import sys
from collections.abc import Callable

import numpy as np
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from m2a_perception.ros.conversions import array_to_image_msg, rgb_to_compressed_msg

SYNTHETIC_SEC = 1_000_000
SYNTHETIC_NSEC = 500
BAD_KINDS = (
    'encoding',
    'step',
    'data_size',
    'zero_size',
    'too_large',
    'non_finite',
    'aspect_wide',
    'aspect_tall',
)


def make_rgb(index: int, height: int, width: int) -> np.ndarray:
    """A deterministic test frame: gradients plus a bright square that moves."""
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.stack([rows + 0 * cols, cols + 0 * rows, (rows + cols) / 2], axis=-1)
    rgb = rgb.astype(np.uint8)
    size = max(2, min(height, width) // 4)
    top = (index * 3) % max(1, height - size)
    left = (index * 5) % max(1, width - size)
    rgb[top : top + size, left : left + size] = (250, 20, 230)
    return rgb


def encode(rgb: np.ndarray, encoding: str) -> Image:
    """RGB frame -> Image in one of the test encodings."""
    if encoding == 'rgb8':
        return array_to_image_msg(rgb, 'rgb8')
    if encoding == 'bgr8':
        return array_to_image_msg(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8')
    raise ValueError(f'fake camera cannot produce {encoding}')


def raw_msg(encoding: str, height: int, width: int, step: int, data: bytes) -> Image:
    msg = Image()
    msg.encoding, msg.height, msg.width, msg.step = encoding, height, width, step
    msg.data = array.array('B', data)
    return msg


def bad_image(kind: str, height: int, width: int) -> Image:
    """One malformed Image of the given kind."""
    row = width * 3
    if kind == 'encoding':
        return raw_msg('bayer_rggb8', height, width, width, bytes(width * height))
    if kind == 'step':
        return raw_msg('rgb8', height, width, row - 3, bytes(row * height))
    if kind == 'data_size':
        return raw_msg('rgb8', height, width, row, bytes(row * height - 10))
    if kind == 'zero_size':
        return raw_msg('rgb8', 0, 0, 0, b'')
    if kind == 'too_large':
        return raw_msg('mono8', 2, 5000, 5000, bytes(10000))
    if kind == 'aspect_wide':  # inside the 4096x4096 limits, but resizes to 0 rows
        return raw_msg('mono8', 1, 4096, 4096, bytes(4096))
    if kind == 'aspect_tall':
        return raw_msg('mono8', 4096, 1, 1, bytes(4096))
    if kind == 'non_finite':
        values = np.full((height, width), 0.5, dtype=np.float32)
        values[0, 0] = np.nan
        return array_to_image_msg(values, '32FC1')
    raise ValueError(kind)


def corrupt_jpeg(rgb: np.ndarray, truncated: bool) -> CompressedImage:
    """A JPEG cut in half (no end marker) or with its header overwritten."""
    msg = rgb_to_compressed_msg(rgb, 'jpeg')
    payload = bytes(msg.data)
    payload = payload[: len(payload) // 2] if truncated else b'\x00' * 64 + payload[64:]
    msg.data = array.array('B', payload)
    return msg


def oversized_jpeg(size: int) -> CompressedImage:
    """A CompressedImage of `size` bytes that starts like a JPEG (the node checks sizes first)."""
    msg = CompressedImage(format='jpeg')
    msg.data = array.array('B', b'\xff\xd8' + bytes(size - 2))
    return msg


class FakeCamera(Node):
    """Publishes `args.count` frames (0 = until stopped) at `args.rate` Hz."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__('fake_camera')
        self.args = args
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=(
                ReliabilityPolicy.RELIABLE
                if args.reliability == 'reliable'
                else ReliabilityPolicy.BEST_EFFORT
            ),
        )
        msg_type = CompressedImage if args.format or args.scenario == 'oversized' else Image
        self.pub = self.create_publisher(msg_type, args.topic, qos)
        self.compressed_pub = None
        if args.compressed_topic:
            self.compressed_pub = self.create_publisher(
                CompressedImage, args.compressed_topic, qos
            )
        self.index = 0
        self.timer = self.create_timer(1.0 / args.rate, self.tick)

    def header(self) -> Header:
        header = Header(frame_id=self.args.frame_id)
        if self.args.stamp == 'synthetic':
            header.stamp.sec, header.stamp.nanosec = SYNTHETIC_SEC + self.index, SYNTHETIC_NSEC
        else:
            header.stamp = self.get_clock().now().to_msg()
        return header

    def tick(self) -> None:
        if self.args.count and self.index >= self.args.count:
            raise SystemExit(0)
        args = self.args
        rgb = make_rgb(self.index, args.height, args.width)
        header = self.header()
        if args.scenario == 'oversized':
            msg: Image | CompressedImage = oversized_jpeg(args.payload_bytes)
        elif args.scenario == 'bad' and self.index % 2 == 0:
            kind = BAD_KINDS[(self.index // 2) % len(BAD_KINDS)]
            msg = bad_image(kind, args.height, args.width)
        elif args.format:
            msg = rgb_to_compressed_msg(rgb, args.format)
        else:
            msg = encode(rgb, args.encoding)
        msg.header = header
        self.pub.publish(msg)
        if self.compressed_pub is not None:
            compressed: CompressedImage = (
                corrupt_jpeg(rgb, truncated=self.index % 4 == 0)
                if self.index % 2 == 0
                else rgb_to_compressed_msg(rgb, 'jpeg')
            )
            compressed.header = header
            self.compressed_pub.publish(compressed)
        self.index += 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--topic', required=True)
    parser.add_argument('--compressed-topic', default='')
    parser.add_argument('--encoding', default='rgb8', choices=('rgb8', 'bgr8'))
    parser.add_argument('--format', default='', choices=('', 'jpeg', 'png'))
    parser.add_argument('--width', type=int, default=64)
    parser.add_argument('--height', type=int, default=48)
    parser.add_argument('--rate', type=float, default=5.0)
    parser.add_argument('--count', type=int, default=0)
    parser.add_argument('--frame-id', default='camera')
    parser.add_argument('--stamp', default='synthetic', choices=('synthetic', 'now'))
    parser.add_argument('--reliability', default='reliable', choices=('reliable', 'best_effort'))
    parser.add_argument('--scenario', default='good', choices=('good', 'bad', 'oversized'))
    parser.add_argument('--payload-bytes', type=int, default=70_000_000, help='oversized only')
    return parser.parse_args(argv)


def run(argv: list[str], make_node: Callable[[argparse.Namespace], Node] = FakeCamera) -> int:
    args = parse_args(argv)
    rclpy.init()
    node = make_node(args)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException, SystemExit):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(run(sys.argv[1:]))
