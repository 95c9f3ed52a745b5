"""Entry point of the `perception_node` executable and the `m2a-perception-node` console script.

Usage (any ROS arguments work, e.g. a parameter file and remappings):
    m2a-perception-node --ros-args --params-file config/m2a_perception.yaml \
        -p model.checkpoint:=/path/to/model.safetensors

Allowed dependencies: rclpy, `m2a_perception.ros.node`, `m2a_perception.ros.allocator`.
"""

from __future__ import annotations

import signal
import sys

from m2a_perception.ros.allocator import tune_allocator


def main(args: list[str] | None = None) -> int:
    """Run the node until Ctrl-C, SIGTERM, a lifecycle shutdown or a ROS shutdown.

    A single-threaded executor receives frames; inference runs in the node's own worker thread
    (multi-threaded executors cannot keep up with large images on small CPUs).

    On SIGINT or SIGTERM the worker stops first and the ROS context is shut down after it, so a
    frame in flight is never published on an invalid context (rclpy's own signal handler would
    invalidate the context first, so it is not installed). After the lifecycle `shutdown`
    transition (state finalized) the process ends.

    Returns:
        Process exit status: 0 after a normal shutdown, 1 if the node could not be created.
    """
    # While this is the only thread: importing torch, OpenCV or rclpy starts threads, and glibc
    # would hand later threads their malloc arenas (see m2a_perception.ros.allocator).
    allocator_state = tune_allocator()
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from m2a_perception.ros.node import NODE_NAME, PerceptionNode

    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
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


if __name__ == '__main__':
    sys.exit(main())
