"""bag_recorder: record topics of a running ROS graph into an mcap bag (serialized bytes).

The live-replay recorder (`m2a-replay --live`, `launch/replay_eval.launch.py`); works without
the rosbag2 tools. Topics are subscribed as soon as they appear in the graph, with the type the
graph reports and a QoS that matches the publishers (best effort if any publisher is best
effort, else reliable), and written undecoded. The bag is closed properly on SIGINT/SIGTERM, at
--duration, or after --idle-timeout seconds without a message (counted from the first message,
or with --idle-after from the first message on one of those topics), so it is always readable.
With --overwrite an existing OUT_BAG is replaced only when the new recording is closed; on a
write failure (disk full) the old one is kept and the new one deleted.

    bag_recorder OUT_BAG --topics /front/image /front/anomaly/score ... \
        --idle-timeout 5 --idle-after /front/image --ros-args -p use_sim_time:=true

Exit status: 0 recorded and closed; 1 writing failed (disk full: the bag holds what was written
before, see the last line); 2 usage errors (e.g. OUT_BAG exists without --overwrite).

Log times are the node clock (sim time with use_sim_time; the wall clock before the first
/clock message).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from m2a_perception.cli import args as cli_args
from m2a_perception.files import WriteFailedError
from m2a_perception.ros.replay.bag import OutputBag
from m2a_perception.ros.replay.recorder import NODE_NAME, BagRecorder


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('bag_recorder', __doc__)
    parser.add_argument('out', type=Path, help='bag folder to create (mcap)')
    parser.add_argument('--topics', nargs='+', required=True, help='topics to record')
    parser.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    parser.add_argument(
        '--idle-timeout',
        type=float,
        default=0.0,
        help='stop after N s without messages (0: never)',
    )
    parser.add_argument(
        '--idle-after',
        nargs='+',
        default=[],
        metavar='TOPIC',
        help='--idle-timeout counts only from the first message on one of these topics '
        '(default: any recorded topic)',
    )
    parser.add_argument('--duration', type=float, default=0.0, help='stop after N s (0: never)')
    cli_args.add_overwrite(parser, help='replace an existing bag')
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else ['bag_recorder', *argv]
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        bag = OutputBag(args.out, storage=args.storage, overwrite=args.overwrite)
    except (FileExistsError, ValueError, WriteFailedError) as error:
        print(f'recorder: {error}', file=sys.stderr, flush=True)
        return 1 if isinstance(error, WriteFailedError) else 2
    try:
        rclpy.init(args=argv)
        stop = {'requested': False}
        # launch and process managers stop children with SIGINT (rclpy's handler) or SIGTERM.
        signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
        node = Node(NODE_NAME)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        recorder = BagRecorder(node, bag, args.topics, args.idle_after)
    except BaseException:
        bag.discard()  # nothing was recorded: an old bag being replaced stays
        raise
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
