"""Launch the m2a_perception lifecycle node (and optionally RViz).

    ros2 launch m2a_perception m2a_perception.launch.py \
        checkpoint:=/data/m2a/cityscapes.safetensors cameras:=front,left namespace:=perception

Every value comes from `params_file` (default: the installed config/m2a_perception.yaml);
launch arguments that are not empty override it. Stop with Ctrl-C (SIGINT): SIGTERM ends launch
at once and leaves the node running.
"""

from launch.actions import (
    DeclareLaunchArgument,
    IncludeLaunchDescription,
    OpaqueFunction,
    SetEnvironmentVariable,
)
from launch.conditions import IfCondition, LaunchConfigurationNotEquals
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'm2a_perception'

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
    return overrides


def _node(context: LaunchContext) -> list[LifecycleNode]:
    return [
        LifecycleNode(
            package=PACKAGE,
            executable='perception_node',
            name='m2a_perception',
            namespace=LaunchConfiguration('namespace'),
            parameters=[LaunchConfiguration('params_file'), _overrides(context)],
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            output='screen',
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    rviz = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(
            PathJoinSubstitution([FindPackageShare(PACKAGE), 'launch', 'rviz.launch.py'])
        ),
        launch_arguments={
            'namespace': LaunchConfiguration('namespace'),
            'cameras': LaunchConfiguration('cameras'),
            'params_file': LaunchConfiguration('params_file'),
            'use_sim_time': LaunchConfiguration('use_sim_time'),
        }.items(),
        condition=IfCondition(LaunchConfiguration('rviz')),
    )
    return LaunchDescription(
        [
            *(
                DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS
            ),
            # Before the node: shared memory sized for multi-MB frames, any discovery range.
            SetEnvironmentVariable(
                'FASTDDS_DEFAULT_PROFILES_FILE',
                LaunchConfiguration('fastdds_profile'),
                condition=LaunchConfigurationNotEquals('fastdds_profile', ''),
            ),
            OpaqueFunction(function=_node),
            rviz,
        ]
    )
