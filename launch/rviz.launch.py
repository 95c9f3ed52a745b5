"""RViz 2 with the heatmap, overlay and semantic image of every camera of m2a_perception.

    ros2 launch m2a_perception rviz.launch.py cameras:=front,left namespace:=perception

With `cameras` empty the camera list is read from `params_file`. The shipped layout shows camera
"front"; for other cameras or a namespace a rendered copy is written to the temporary folder as
`m2a_perception_<hash of its text>.rviz`: one file per distinct layout, reused by every launch.
"""

import hashlib
import os
import tempfile
from pathlib import Path

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from m2a_perception.ros.rviz_config import camera_names_from_params, render_rviz_config

PACKAGE = 'm2a_perception'


def _rviz(context: LaunchContext) -> list[Node]:
    template = Path(LaunchConfiguration('rviz_config').perform(context))
    namespace = LaunchConfiguration('namespace').perform(context)
    text = LaunchConfiguration('cameras').perform(context)
    cameras = [name.strip() for name in text.split(',') if name.strip()]
    if not cameras:
        cameras = camera_names_from_params(LaunchConfiguration('params_file').perform(context))
    config = template
    if cameras != ['front'] or namespace.strip('/'):
        config = _write_rendered(render_rviz_config(template.read_text(), cameras, namespace))
    return [
        Node(
            package='rviz2',
            executable='rviz2',
            name='m2a_perception_rviz',
            arguments=['-d', str(config)],
            parameters=[{'use_sim_time': LaunchConfiguration('use_sim_time')}],
            output='screen',
        )
    ]


def _write_rendered(text: str) -> Path:
    """The rendered layout in the temporary folder, named by its content (written once)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / f'm2a_perception_{digest}.rviz'
    if not path.is_file() or path.read_text() != text:
        # Atomic: a second launch reading the file meanwhile never sees half of it.
        with tempfile.NamedTemporaryFile(
            'w', dir=path.parent, prefix='.m2a_perception_', suffix='.rviz', delete=False
        ) as handle:
            handle.write(text)
        os.replace(handle.name, path)
    return path


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                'rviz_config',
                default_value=PathJoinSubstitution([share, 'config', 'm2a_perception.rviz']),
                description='RViz layout whose "front" displays are the per-camera template.',
            ),
            DeclareLaunchArgument(
                'params_file',
                default_value=PathJoinSubstitution([share, 'config', 'm2a_perception.yaml']),
                description='Node parameters; camera names are read from it if cameras is empty.',
            ),
            DeclareLaunchArgument('cameras', default_value='', description='Comma-separated.'),
            DeclareLaunchArgument('namespace', default_value='', description='Node namespace.'),
            DeclareLaunchArgument('use_sim_time', default_value='false'),
            OpaqueFunction(function=_rviz),
        ]
    )
