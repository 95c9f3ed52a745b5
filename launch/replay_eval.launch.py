"""Replay a bag into the m2a_perception node with sim time, record its outputs, evaluate them.

    ros2 launch m2a_perception replay_eval.launch.py bag:=/data/bags/ra21 out:=/data/eval/ra21 \
        checkpoint:=/data/m2a/cityscapes.safetensors

Three processes, planned by `m2a_perception.ros.replay.live.plan_live_replay` exactly as
`m2a-replay --live` plans them:

    perception_node   the lifecycle node, use_sim_time, cameras taken from the bag's
                      <ns>/<name>/image[...] topics (or `cameras:=NAME=TOPIC,...`)
    bag_recorder      camera inputs, ground truth, every node output and /diagnostics -> out
    bag_player        cameras and ground truth with recorded timing (`rate`) and /clock; starts
                      when the node and the recorder subscribe

The recorder stops by itself `idle_timeout` seconds after the last message; then
`m2a-replay OUT --recorded-outputs` prints latency, throughput and (with ground-truth topics)
metrics, writes OUT/replay_report.json, and the launch shuts down. Every process gets the
package's Fast DDS large-frame profile (`fastdds_profile`, as m2a_perception.launch.py; it also
works with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, where FASTDDS_BUILTIN_TRANSPORTS=LARGE_DATA
loses multi-MB frames). Stop early with Ctrl-C (SIGINT): the recorder closes the bag properly.
"""

import sys
from pathlib import Path

from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    ExecuteProcess,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnProcessExit
from launch.events import Shutdown
from launch.events.process import ProcessExited
from launch.launch_context import LaunchContext
from launch.launch_description import LaunchDescription
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode, Node
from launch_ros.substitutions import FindPackageShare

from m2a_perception.ros.processes import EXIT_WITH_PARENT_VARIABLE, large_frames_environment
from m2a_perception.ros.replay.live import (
    NODE_EXECUTABLE,
    PLAYER_EXECUTABLE,
    RECORDER_EXECUTABLE,
    plan_live_replay,
    player_arguments,
    recorder_arguments,
)

PACKAGE = 'm2a_perception'

ARGUMENTS = (
    ('bag', '', 'Input rosbag2 (folder or .mcap/.db3 file); required.'),
    ('out', '', 'Output bag folder to create (mcap); required.'),
    ('checkpoint', '', 'm2a checkpoint (.safetensors); empty keeps the params_file value.'),
    (
        'params_file',
        PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'm2a_perception.yaml']),
        'Parameter YAML of the node.',
    ),
    ('cameras', '', 'Comma-separated NAME, TOPIC or NAME=TOPIC; empty: every camera topic.'),
    ('namespace', '', "Node namespace; empty: the cameras' namespace."),
    ('rate', '1.0', 'Playback speed factor.'),
    ('idle_timeout', '4.0', 'Seconds without messages after which the recording ends.'),
    ('startup_timeout', '300', 'Seconds the player waits for the node to load and subscribe.'),
    ('evaluate', 'true', 'Run m2a-replay --recorded-outputs on the recording, then shut down.'),
    (
        'protocol',
        'smiyc',
        'Pixel metric protocol: smiyc, smiyc_binned, fishyscapes, mask2anomaly.',
    ),
    ('log_level', 'info', 'Log level of the node.'),
    (
        'fastdds_profile',
        PathJoinSubstitution([FindPackageShare(PACKAGE), 'config', 'fastdds_large_frames.xml']),
        'Fast DDS XML profile for multi-MB frames (FASTDDS_DEFAULT_PROFILES_FILE of every '
        'process); empty keeps the environment.',
    ),
)


def on_node_exit(event: ProcessExited, context: LaunchContext) -> list[object]:
    """The node died outside launch's shutdown: nothing will be evaluated, so launch fails now
    (exit 1) instead of the player waiting `startup_timeout` for its subscription.

    Raises:
        RuntimeError: the node exited with a non-zero status outside a launch shutdown.
    """
    if context.is_shutdown or event.returncode == 0:
        return []
    raise RuntimeError(
        f'{event.action.name} exited with status {event.returncode}; see its log above'
    )


def _replay(context: LaunchContext) -> list[object]:
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    bag, out = arg('bag'), arg('out')
    if not bag or not out:
        raise RuntimeError('replay_eval.launch.py needs bag:=<input bag> and out:=<output bag>')
    overrides = {'model.checkpoint': arg('checkpoint')} if arg('checkpoint') else {}
    cameras = [item.strip() for item in arg('cameras').split(',') if item.strip()] or None
    plan = plan_live_replay(bag, overrides, cameras, arg('namespace') or None)
    node = LifecycleNode(
        package=PACKAGE,
        executable=NODE_EXECUTABLE,
        name='m2a_perception',
        namespace=plan.namespace,
        parameters=[arg('params_file'), plan.node_parameters],
        arguments=['--ros-args', '--log-level', arg('log_level')],
        output='screen',
        # As in m2a_perception.launch.py: the node ignores signals while its worker stops.
        sigterm_timeout='10',
        # As there: the node ends by itself when launch is killed.
        additional_env={EXIT_WITH_PARENT_VARIABLE: '1'},
    )
    recorder = Node(
        package=PACKAGE,
        executable=RECORDER_EXECUTABLE,
        name='m2a_bag_recorder',
        arguments=recorder_arguments(plan, Path(out), float(arg('idle_timeout'))),
        parameters=[{'use_sim_time': True}],
        output='screen',
    )
    player = Node(
        package=PACKAGE,
        executable=PLAYER_EXECUTABLE,
        name='m2a_bag_player',
        arguments=player_arguments(
            plan, Path(bag), float(arg('rate')), float(arg('startup_timeout')), 1.0, 2.0
        ),
        output='screen',
    )
    shutdown = EmitEvent(event=Shutdown(reason='replay evaluation finished'))
    after_recording: list[object] = [shutdown]
    if arg('evaluate').lower() == 'true':
        evaluation = ExecuteProcess(
            cmd=[
                sys.executable,
                '-m',
                'm2a_perception.cli.replay',
                out,
                '--recorded-outputs',
                '--no-progress',
                '--protocol',
                arg('protocol'),
            ],
            output='screen',
        )
        after_recording = [
            evaluation,
            RegisterEventHandler(OnProcessExit(target_action=evaluation, on_exit=[shutdown])),
        ]
    profile = arg('fastdds_profile')
    environment = [
        SetEnvironmentVariable(name, value)
        for name, value in (large_frames_environment(profile) if profile else {}).items()
    ]
    return [
        *environment,
        RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_node_exit)),
        node,
        recorder,
        player,
        RegisterEventHandler(OnProcessExit(target_action=recorder, on_exit=after_recording)),
    ]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription(
        [
            *(
                DeclareLaunchArgument(name, default_value=default, description=text)
                for name, default, text in ARGUMENTS
            ),
            OpaqueFunction(function=_replay),
        ]
    )
