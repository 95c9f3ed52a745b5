"""bag_player: publish a bag's topics with their recorded timing and a /clock (sim time).

The live-replay player (`m2a-replay --live`, `launch/replay_eval.launch.py`). Works without the
rosbag2 tools: messages are read with `rosbags` (mcap or sqlite3, damaged bags included) and
published as serialized bytes, so no message is decoded on the way.

    bag_player BAG --topics /front/image \
        --clock --wait-topic /front/image --wait-subscribers 2

Timing: message i is published at start + (log_time_i - log_time_0) / speed. With --clock,
rosgraph_msgs/Clock carries the playback position in bag time at --clock-hz and before each
message, so nodes with use_sim_time see the recorded clock; it keeps running for --tail seconds
after the last message so those nodes finish their work in sim time.

Start: with --wait-topic, playback waits until each such topic has --wait-subscribers matched
subscriptions (e.g. the node and the recorder), then --settle seconds more for discovery to
complete in the other direction.

Prints `progress <published>/<total>` lines on stdout and, at the end, one
`skipped-chunk {JSON}` line per corrupt chunk that was skipped (file, offset, reason, messages
per topic; `m2a-replay --live` counts them in its report). Exit status: 0 all played (corrupt
chunks skipped included); 1 the bag is damaged (everything before the damage was played); 2
usage errors or start-up timeout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.utilities import remove_ros_args

from m2a_perception.cli import args as cli_args
from m2a_perception.ros.replay.bag import SKIPPED_CHUNK_PREFIX, BagReader, BagReadError
from m2a_perception.ros.replay.player import EXIT_DAMAGED, EXIT_USAGE, NODE_NAME, BagPlayer


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('bag_player', __doc__)
    parser.add_argument('bag', type=Path, help='rosbag2 folder or .mcap/.db3 file')
    parser.add_argument('--topics', nargs='*', default=[], help='topics to play (default all)')
    cli_args.add_speed(
        parser, help='playback speed factor (default %(default)s)', deprecated=('--rate',)
    )
    parser.add_argument('--clock', action='store_true', help='publish /clock (sim time)')
    parser.add_argument('--clock-hz', type=float, default=100.0)
    parser.add_argument('--wait-topic', action='append', default=[], help='wait for subscribers')
    parser.add_argument('--wait-subscribers', type=int, default=1)
    parser.add_argument('--wait-timeout', type=float, default=300.0, help='seconds')
    parser.add_argument('--settle', type=float, default=1.0, help='seconds after the wait')
    parser.add_argument('--tail', type=float, default=2.0, help='clock seconds after the end')
    parser.add_argument('--progress', action='store_true', help='print progress lines')
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv if argv is None else ['bag_player', *argv]
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv)
    node = Node(NODE_NAME)
    log = node.get_logger()
    try:
        with BagReader(args.bag) as reader:
            player = BagPlayer(
                node, reader, args.topics, args.speed, args.clock_hz if args.clock else 0.0
            )
            if args.wait_topic:
                log.info(f'waiting for {args.wait_subscribers} subscriber(s) on {args.wait_topic}')
                player.wait_for_subscribers(
                    args.wait_topic, args.wait_subscribers, args.wait_timeout, args.settle
                )
            log.info(f'playing {len(player.topics)} topic(s) of {args.bag} at x{args.speed:g}')
            try:
                player.play(args.tail, args.progress)
            finally:
                for chunk in reader.skipped:
                    print(f'{SKIPPED_CHUNK_PREFIX}{json.dumps(chunk.as_dict())}', flush=True)
            log.info(f'done: {player.published} message(s)')
        return 0
    except BagReadError as error:
        log.error(str(error))
        return EXIT_DAMAGED
    except (TimeoutError, ValueError) as error:
        log.error(str(error))
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
