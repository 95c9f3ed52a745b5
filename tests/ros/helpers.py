"""Helpers for the multi-process ROS tests: subprocesses that always die, and a probe node.

Subprocesses (`m2a_perception.ros.processes.ManagedProcess`) inherit the test environment
(ROS_DOMAIN_ID from tests/ros/conftest.py, the shipped Fast DDS large-frame profile, and
LD_LIBRARY_PATH together with the wheel bootstrapper's marker) and run in their own process
group, so teardown can SIGINT and then SIGKILL the whole group.

The probe node is spun from the test thread only (`RosProbe.wait_for`), never from a background
thread, so entity creation and spinning never race.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.srv import GetParameters, ListParameters, SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy

from m2a_perception.ros.processes import (
    ManagedProcess,
    perception_node_arguments,
    perception_node_command,
    ros_environment,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO_ROOT / 'config' / 'm2a_perception.yaml'
FAKE_CAMERA = Path(__file__).with_name('fake_camera.py')
# Generous: a loaded 2-core machine imports torch and loads the model in several seconds.
STARTUP_TIMEOUT_S = 120.0
WAIT_TIMEOUT_S = 60.0
CLIENT_RETRY_S = 20.0

T = TypeVar('T')


def ros_env() -> dict[str, str]:
    """Environment for ROS subprocesses: `ros_environment` (the large-frame profile)."""
    env = ros_environment()
    env.setdefault('ROS_DOMAIN_ID', '40')
    return env


def start_process(
    name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None
) -> ManagedProcess:
    """`command` in its own process group from the repository root, logging to
    `<log_dir>/<name>.log`, with `env` (default `ros_env()`)."""
    return ManagedProcess(
        name, command, log_dir / f'{name}.log', ros_env() if env is None else env, cwd=REPO_ROOT
    )


def node_arguments(checkpoint: Path, namespace: str, *overrides: str) -> list[str]:
    """ROS arguments of the node with the shipped YAML, the checkpoint and `-p` overrides."""
    return perception_node_arguments(
        namespace=namespace,
        params_file=PARAMS_FILE,
        overrides=[f'model.checkpoint:={checkpoint}', *overrides],
    )


def node_command(checkpoint: Path, namespace: str, *overrides: str) -> list[str]:
    """Command line of the node with the shipped YAML plus `-p` overrides."""
    return perception_node_command(
        namespace=namespace,
        params_file=PARAMS_FILE,
        overrides=[f'model.checkpoint:={checkpoint}', *overrides],
    )


def camera_command(*args: str) -> list[str]:
    """Command line of the fake camera publisher (see tests/ros/fake_camera.py for `args`)."""
    return [sys.executable, str(FAKE_CAMERA), *args]


class Recorder:
    """Messages received on one topic, in arrival order, with their receive time."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.times: list[float] = []

    def __call__(self, msg: Any) -> None:
        self.messages.append(msg)
        self.times.append(time.time())

    def clear(self) -> None:
        self.messages.clear()
        self.times.clear()


class RosProbe:
    """A node in its own context, for subscribing to node outputs and calling its services."""

    def __init__(self, name: str = 'm2a_test_probe', domain_id: int | None = None) -> None:
        self.context = rclpy.Context()
        if domain_id is None:
            domain_id = int(os.environ.get('ROS_DOMAIN_ID', '40'))
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def record(
        self, msg_type: type, topic: str, reliable: bool = True, depth: int = 50
    ) -> Recorder:
        recorder = Recorder()
        qos = QoSProfile(
            depth=depth,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        )
        self.node.create_subscription(msg_type, topic, recorder, qos)
        return recorder

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.05)

    def wait_for(
        self, predicate: Callable[[], T], timeout_s: float = WAIT_TIMEOUT_S, what: str = ''
    ) -> T:
        """Spin until `predicate()` is truthy and return its value; fail after the timeout."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            value = predicate()
            if value:
                return value
            self.executor.spin_once(timeout_sec=0.05)
        value = predicate()
        if value:
            return value
        raise TimeoutError(f'timed out after {timeout_s:.0f} s waiting for {what or predicate}')

    def call(self, srv_type: type, name: str, request: Any, timeout_s: float = 30.0) -> Any:
        """Call a service, waiting up to `timeout_s` for it to appear and again for the answer.

        A client that has not matched the server after `CLIENT_RETRY_S` is replaced by a new
        one: on a loaded machine Fast DDS occasionally leaves a fresh client unmatched, and new
        endpoints are matched again from scratch.
        """
        end = time.monotonic() + timeout_s
        while True:
            client = self.node.create_client(srv_type, name)
            try:
                wait_s = min(CLIENT_RETRY_S, max(0.0, end - time.monotonic()))
                try:
                    self.wait_for(client.service_is_ready, wait_s, f'service {name}')
                except TimeoutError:
                    if time.monotonic() >= end:
                        raise TimeoutError(
                            f'timed out after {timeout_s:.0f} s waiting for service {name}'
                        ) from None
                    continue
                future = client.call_async(request)
                self.wait_for(future.done, timeout_s, f'response of {name}')
                return future.result()
            finally:
                self.node.destroy_client(client)

    # Lifecycle and parameter services of the node under test.

    def lifecycle_state(self, node: str, timeout_s: float = 30.0) -> str:
        request = GetState.Request()
        return self.call(GetState, f'{node}/get_state', request, timeout_s).current_state.label

    def transition(self, node: str, transition_id: int, timeout_s: float = 90.0) -> bool:
        request = ChangeState.Request()
        request.transition = Transition(id=transition_id)
        return bool(self.call(ChangeState, f'{node}/change_state', request, timeout_s).success)

    def set_parameter(self, node: str, name: str, value: Any) -> tuple[bool, str]:
        request = SetParameters.Request()
        request.parameters = [Parameter(name, value=value).to_parameter_msg()]
        result = self.call(SetParameters, f'{node}/set_parameters', request).results[0]
        return bool(result.successful), str(result.reason)

    def parameter_names(self, node: str) -> list[str]:
        request = ListParameters.Request()
        return list(self.call(ListParameters, f'{node}/list_parameters', request).result.names)

    def parameter_values(self, node: str, names: list[str]) -> dict[str, Any]:
        request = GetParameters.Request()
        request.names = names
        values = self.call(GetParameters, f'{node}/get_parameters', request).values
        return {
            name: Parameter.from_parameter_msg(_named(name, value)).value
            for name, value in zip(names, values, strict=True)
        }


def _named(name: str, value: Any) -> Any:
    from rcl_interfaces.msg import Parameter as ParameterMsg

    return ParameterMsg(name=name, value=value)


def latest_status(recorder: Recorder, name: str) -> DiagnosticStatus | None:
    """The newest status called `name` in a /diagnostics recording."""
    for array in reversed(recorder.messages):
        assert isinstance(array, DiagnosticArray)
        for status in array.status:
            if status.name == name:
                return status
    return None


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def stamp_key(header: Any) -> tuple[int, int]:
    return int(header.stamp.sec), int(header.stamp.nanosec)
