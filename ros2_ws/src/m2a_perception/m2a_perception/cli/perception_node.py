"""Entry point of the `perception_node` executable and the `m2a-perception-node` console script.

Usage (any ROS arguments work, e.g. a parameter file and remappings; also
`python -m m2a_perception.cli.perception_node`):
    m2a-perception-node --ros-args --params-file config/m2a_perception.yaml \
        -p model.checkpoint:=/path/to/model.safetensors

Allowed dependencies: rclpy, `m2a_perception.ros.node`, `m2a_perception.ros.allocator`,
`m2a_perception.ros.processes`.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from m2a_perception.ros.allocator import tune_allocator
from m2a_perception.ros.processes import EXIT_WITH_PARENT_VARIABLE

EXIT_BAD_ARGUMENTS = 2
# Longest wait of the executor between checks for Ctrl-C / SIGTERM.
SIGNAL_POLL_S = 0.2


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C, SIGTERM, a lifecycle shutdown or a ROS shutdown.

    A single-threaded executor receives frames; inference runs in the node's own worker thread
    (multi-threaded executors cannot keep up with large images on small CPUs).

    On SIGINT or SIGTERM the worker stops first and the ROS context is shut down after it, so a
    frame in flight is never published on an invalid context (rclpy's own signal handler would
    invalidate the context first, so it is not installed). After the lifecycle `shutdown`
    transition (state finalized) the process ends. Started by a launcher (`M2A_EXIT_WITH_PARENT=1`,
    see `parent_to_watch`), it also ends the same way when that parent dies: SIGTERM or SIGKILL
    to `ros2 launch` would otherwise leave it running, re-parented.

    Returns:
        Process exit status: 0 after a normal shutdown, 1 if the node could not be created, 2 for
        a missing or malformed parameter file or other ROS arguments rcl refuses.
    """
    # First, before the slow imports: a parent that dies during them is still noticed.
    watched_parent = parent_to_watch(os.environ, os.getppid())
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
        # rclpy's signal handler is off (see above), so a signal does not wake the executor's
        # wait: wait in short slices, or Ctrl-C would wait for the next timer, which with sim
        # time and /clock stopped (a replay that has ended) never fires.
        while not node.finalized.done():
            executor.spin_once(timeout_sec=SIGNAL_POLL_S)
            if watched_parent is not None and os.getppid() != watched_parent:
                node.get_logger().warning(
                    f'parent process {watched_parent} ended (e.g. `ros2 launch` got SIGTERM or '
                    'SIGKILL): shutting down'
                )
                break
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


def parent_to_watch(environ: Mapping[str, str], parent_pid: int) -> int | None:
    """The parent process whose death ends the node, or None to watch nothing.

    Only a launcher's child watches: launch files, `m2a-replay --live` and the tests set
    `M2A_EXIT_WITH_PARENT=1`. A node started from a shell keeps running when that shell ends
    (`nohup`, a closed terminal), as a shell user expects. A parent PID of 1 or 0 (systemd or a
    container's init running the node directly, or the node being PID 1) is never re-parented
    from, and systemd stops its own children with the unit's `KillSignal`.

    Args:
        environ: the process environment.
        parent_pid: `os.getppid()` at start.
    """
    if environ.get(EXIT_WITH_PARENT_VARIABLE) != '1' or parent_pid <= 1:
        return None
    return parent_pid


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
