"""Launch the m2a_perception lifecycle node (and optionally RViz).

    ros2 launch m2a_perception m2a_perception.launch.py \
        checkpoint:=/data/m2a/cityscapes.safetensors cameras:=front,left namespace:=perception

Every value comes from `params_file` (default: the installed config/m2a_perception.yaml);
launch arguments that are not empty override it, e.g. `transports:=rear:compressed`.

Ending: launch ends with the node. When the node exits with a non-zero status (it could not
start), launch logs it and exits 1 (launch's status for a failed launch; the node's own status
is in the log), so systemd's `Restart=on-failure` fires. `rviz:=true` without rviz2 installed
logs a warning and runs the node alone. RViz is resolved before the node starts, so a failing
RViz include cannot leave the node running. Stop with Ctrl-C (SIGINT; systemd:
`KillSignal=SIGINT`): SIGTERM ends launch at once and leaves the node running.
"""

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    IncludeLaunchDescription,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.conditions import LaunchConfigurationNotEquals
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'm2a_perception'
TRANSPORTS = ('raw', 'compressed')

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


def _node(context: LaunchContext) -> list[object]:
    node = LifecycleNode(
        package=PACKAGE,
        executable='perception_node',
        name='m2a_perception',
        namespace=LaunchConfiguration('namespace'),
        parameters=[LaunchConfiguration('params_file'), _overrides(context)],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
    )
    return [RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_node_exit)), node]


def on_node_exit(event: ProcessExited, context: LaunchContext) -> list[object]:
    """The node ended: launch ends too (RViz with it); a failed node makes launch fail.

    Raises:
        RuntimeError: the node exited with a non-zero status outside a launch shutdown; launch
            logs it, shuts down and exits 1.
    """
    if event.returncode != 0 and not context.is_shutdown:
        raise RuntimeError(
            f'{event.action.name} exited with status {event.returncode}; see its log above'
        )
    return [EmitEvent(event=Shutdown(reason=f'{event.action.name} exited'))]


def _rviz(context: LaunchContext) -> list[object]:
    if LaunchConfiguration('rviz').perform(context).strip().lower() != 'true':
        return []
    if not rviz2_installed():
        return [LogInfo(msg='WARNING: rviz:=true, but rviz2 is not installed: no RViz')]
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
            SetEnvironmentVariable(
                'FASTDDS_DEFAULT_PROFILES_FILE',
                LaunchConfiguration('fastdds_profile'),
                condition=LaunchConfigurationNotEquals('fastdds_profile', ''),
            ),
            # RViz first: whatever fails while launch resolves it, the node is not running yet.
            OpaqueFunction(function=_rviz),
            OpaqueFunction(function=_node),
        ]
    )
