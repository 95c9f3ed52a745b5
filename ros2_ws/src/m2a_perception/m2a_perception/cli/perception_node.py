"""Entry point of the `perception_node` executable and the `m2a-perception-node` console script.

Usage (any ROS arguments work, e.g. a parameter file and remappings; also
`python -m m2a_perception.cli.perception_node`):
    m2a-perception-node --ros-args --params-file config/m2a_perception.yaml \
        -p model.checkpoint:=/path/to/model.safetensors

Allowed dependencies: rclpy, `m2a_perception.ros.node`, `m2a_perception.ros.allocator`.
"""

from __future__ import annotations

import itertools
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from m2a_perception.ros.allocator import tune_allocator

EXIT_BAD_ARGUMENTS = 2


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C, SIGTERM, a lifecycle shutdown or a ROS shutdown.

    A single-threaded executor receives frames; inference runs in the node's own worker thread
    (multi-threaded executors cannot keep up with large images on small CPUs).

    On SIGINT or SIGTERM the worker stops first and the ROS context is shut down after it, so a
    frame in flight is never published on an invalid context (rclpy's own signal handler would
    invalidate the context first, so it is not installed). After the lifecycle `shutdown`
    transition (state finalized) the process ends.

    Returns:
        Process exit status: 0 after a normal shutdown, 1 if the node could not be created, 2 for
        a missing or malformed parameter file or other ROS arguments rcl refuses.
    """
    # While this is the only thread: importing torch, OpenCV or rclpy starts threads, and glibc
    # would hand later threads their malloc arenas (see m2a_perception.ros.allocator).
    allocator_state = tune_allocator()
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from m2a_perception.ros.node import NODE_NAME, PerceptionNode

    argv = list(sys.argv if args is None else args)
    problem = params_file_problem(argv)
    if problem is None:
        try:
            rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        except Exception as error:  # rcl's own argument errors (a multi-line RCLError)
            problem = f'invalid ROS arguments: {str(error).splitlines()[0]}'
    if problem is not None:
        print(f'{NODE_NAME}: cannot start: {problem}', file=sys.stderr)
        return EXIT_BAD_ARGUMENTS
    # SIGINT raises KeyboardInterrupt (Python's default); SIGTERM (systemd, docker) does too.
    signal.signal(signal.SIGTERM, _interrupt)
    rclpy.logging.get_logger(NODE_NAME).info(f'malloc settings: {allocator_state}')
    try:
        node = PerceptionNode()
    except Exception as error:  # e.g. a parameter file value outside its declared range
        rclpy.logging.get_logger(NODE_NAME).fatal(f'cannot start: {type(error).__name__}: {error}')
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        node.run_autostart()
        executor.spin_until_future_complete(node.finalized)
        if node.finalized.done():
            node.get_logger().info('finalized: exiting')
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ignore a second Ctrl-C while the worker stops; the order below is what matters.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.stop()
        executor.remove_node(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def params_file_problem(argv: Sequence[str]) -> str | None:
    """One sentence about the first `--params-file` that is missing or not plain YAML, or None.

    rcl would only say so with a traceback from inside `rclpy.init`.
    """
    from m2a_perception.config import parse_yaml

    for flag, value in itertools.pairwise(argv):
        if flag != '--params-file':
            continue
        path = Path(value)
        if not path.is_file():
            return f'parameter file {path} does not exist'
        try:
            data = parse_yaml(path.read_text(), str(path))
        except (OSError, UnicodeDecodeError) as error:
            return f'parameter file {path} cannot be read: {error}'
        except ValueError as error:
            return f'parameter file {error}'
        if not isinstance(data, dict):
            return f'parameter file {path} is not a ROS 2 parameter file (no mapping at the top)'
    return None


if __name__ == '__main__':
    sys.exit(main())
