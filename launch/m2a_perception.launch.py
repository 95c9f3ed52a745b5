"""Launch the m2a_perception lifecycle node (and optionally RViz).

    ros2 launch m2a_perception m2a_perception.launch.py \
        checkpoint:=/data/m2a/cityscapes.safetensors cameras:=front,left namespace:=perception

Every value comes from `params_file` (default: the installed config/m2a_perception.yaml);
launch arguments that are not empty override it, e.g. `transports:=rear:compressed`.

Ending: launch ends with the node. When the node exits with a non-zero status (it could not
start), launch logs it and exits 1 (launch's status for a failed launch; the node's own status
is in the log), so systemd's `Restart=on-failure` fires. A `params_file` that is not a file
fails launch (exit 1) before the node starts (launch_ros would only warn and run the defaults).
`rviz:=true` without rviz2 installed logs a warning and runs the node alone. RViz is resolved
before the node starts, so a failing RViz include cannot leave the node running. Stop with
Ctrl-C (SIGINT; systemd: `KillSignal=SIGINT`): SIGTERM ends launch at once and would leave the
node running, but the node notices: it is started with M2A_EXIT_WITH_PARENT=1 and shuts down
by itself within seconds when launch has gone. A Ctrl-C exits 0.
"""

import os

import launch.logging
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    IncludeLaunchDescription,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from m2a_perception.ros.processes import EXIT_WITH_PARENT_VARIABLE, large_frames_environment

PACKAGE = 'm2a_perception'
TRANSPORTS = ('raw', 'compressed')
NODE_STOP_TIMEOUT_S = '10'

ARGUMENTS = (
    (
        'params_file',
        PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'm2a_perception.yaml']),
        'Parameter YAML of the node.',
    ),
    ('checkpoint', '', 'm2a checkpoint (.safetensors); empty keeps the params_file value.'),
    ('cameras', '', 'Comma-separated camera names; empty keeps the params_file value.'),
    ('namespace', '', 'Namespace of the node and its topics.'),
    ('backend', '', 'torch or tensorrt; empty keeps the params_file value.'),
    ('precision', '', 'fp32 or fp16; empty keeps the params_file value.'),
    (
        'transports',
        '',
        'Per-camera transport, e.g. "front:raw,rear:compressed"; cameras not named keep the '
        'params_file value.',
    ),
    ('use_sim_time', 'false', 'Use /clock (rosbag replay with --clock).'),
    ('autostart', 'true', 'Configure and activate without a lifecycle manager.'),
    ('log_level', 'info', 'Log level of the node.'),
    ('rviz', 'false', 'Also start RViz with per-camera image displays.'),
    (
        'fastdds_profile',
        PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'fastdds_large_frames.xml']),
        'Fast DDS XML profile for multi-MB frames (FASTDDS_DEFAULT_PROFILES_FILE of the started '
        'processes); empty keeps the environment. Camera drivers need the same profile.',
    ),
)


def _overrides(context: LaunchContext) -> dict[str, object]:
    """Parameters given as launch arguments; empty ones leave the YAML value in force."""

    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    overrides: dict[str, object] = {
        'use_sim_time': arg('use_sim_time').lower() == 'true',
        'autostart': arg('autostart').lower() == 'true',
    }
    cameras = [name.strip() for name in arg('cameras').split(',') if name.strip()]
    if cameras:
        overrides['cameras.names'] = cameras
    for launch_name, parameter in (
        ('checkpoint', 'model.checkpoint'),
        ('backend', 'model.backend'),
        ('precision', 'model.precision'),
    ):
        if arg(launch_name):
            overrides[parameter] = arg(launch_name)
    for camera, transport in camera_transports(arg('transports')).items():
        overrides[f'cameras.{camera}.transport'] = transport
    return overrides


def camera_transports(text: str) -> dict[str, str]:
    """`front:raw,rear:compressed` -> {'front': 'raw', 'rear': 'compressed'}.

    Raises:
        ValueError: an entry is not `<camera>:raw` or `<camera>:compressed` (launch stops
            before the node starts).
    """
    transports: dict[str, str] = {}
    for entry in (item.strip() for item in text.split(',')):
        if not entry:
            continue
        camera, _, transport = (part.strip() for part in entry.partition(':'))
        if not camera or transport not in TRANSPORTS:
            raise ValueError(f'transports: {entry!r} must be <camera>:raw or <camera>:compressed')
        transports[camera] = transport
    return transports


def rviz2_installed() -> bool:
    """Whether the rviz2 package is in the ament index (i.e. `Node(package='rviz2')` works)."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix

    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        return False
    return True


def params_file_path(context: LaunchContext) -> str:
    """The `params_file` argument, which must name a file.

    Raises:
        RuntimeError: it does not (launch_ros would only warn and start the node without it,
            i.e. with every default); launch exits 1 before anything starts.
    """
    path = LaunchConfiguration('params_file').perform(context).strip()
    if not os.path.isfile(path):
        raise RuntimeError(f'params_file:={path} is not a file')
    return path


def _node(context: LaunchContext) -> list[object]:
    node = LifecycleNode(
        package=PACKAGE,
        executable='perception_node',
        name='m2a_perception',
        namespace=LaunchConfiguration('namespace'),
        parameters=[params_file_path(context), _overrides(context)],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
        # The node ignores signals after the first while its worker stops (ros/main.py), so
        # launch's SIGTERM escalation after the default 5 s would only log an error on a loaded
        # machine; SIGKILL still follows 5 s later (15 s in all, inside systemd's 20 s).
        sigterm_timeout=NODE_STOP_TIMEOUT_S,
        # Launch killed with SIGTERM/SIGKILL ends without stopping the node: the node watches
        # its parent and shuts down by itself (cli/perception_node.py).
        additional_env={EXIT_WITH_PARENT_VARIABLE: '1'},
    )
    return [RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_node_exit)), node]


def on_node_exit(event: ProcessExited, context: LaunchContext) -> list[object]:
    """The node ended: launch ends too (RViz with it); a failed node makes launch fail.

    During launch's own shutdown (Ctrl-C) nothing more is emitted: a second Shutdown event would
    run launch_ros' shutdown handler twice ("Cannot shutdown a ROS adapter that is not running")
    and make a clean Ctrl-C exit 1.

    Raises:
        RuntimeError: the node exited with a non-zero status outside a launch shutdown; launch
            logs it, shuts down and exits 1.
    """
    if context.is_shutdown:
        return []
    if event.returncode != 0:
        raise RuntimeError(
            f'{event.action.name} exited with status {event.returncode}; see its log above'
        )
    return [EmitEvent(event=Shutdown(reason=f'{event.action.name} exited'))]


def fastdds_profile(context: LaunchContext) -> list[object]:
    """The profile's variable for the processes launch starts (`large_frames_environment`: the
    name that this install's Fast DDS reads, 2.x and 3.x differ); none if the argument is
    empty. (An OpaqueFunction, not a condition: LaunchConfigurationNotEquals is deprecated from
    Jazzy on and its replacement, NotEqualsSubstitution, does not exist in Humble.)"""
    profile = LaunchConfiguration('fastdds_profile').perform(context).strip()
    if not profile:
        return []
    return [
        SetEnvironmentVariable(name, value)
        for name, value in large_frames_environment(profile).items()
    ]


def _rviz(context: LaunchContext) -> list[object]:
    if LaunchConfiguration('rviz').perform(context).strip().lower() != 'true':
        return []
    if not rviz2_installed():
        launch.logging.get_logger('launch').warning(
            'rviz:=true, but rviz2 is not installed: no RViz'
        )
        return []
    return [
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(
                PathJoinSubstitution([FindPackageShare(PACKAGE), 'launch', 'rviz.launch.py'])
            ),
            launch_arguments={
                'namespace': LaunchConfiguration('namespace'),
                'cameras': LaunchConfiguration('cameras'),
                'params_file': LaunchConfiguration('params_file'),
                'use_sim_time': LaunchConfiguration('use_sim_time'),
            }.items(),
        )
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            *(
                DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS
            ),
            # Before the node and RViz: shared memory sized for multi-MB frames, any discovery
            # range.
            OpaqueFunction(function=fastdds_profile),
            # RViz first: whatever fails while launch resolves it, the node is not running yet.
            OpaqueFunction(function=_rviz),
            OpaqueFunction(function=_node),
        ]
    )
