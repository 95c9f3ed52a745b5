"""launch/replay_eval.launch.py, checked without a `launch` install.

The launch file runs against small stand-ins for `launch` and `launch_ros` that record what they
are given (as tests/ros/test_launch_files.py does for the node's launch files). The processes it
starts must be the ones `m2a-replay --live` starts: same plan, and arguments the player, the
recorder and the evaluation CLI accept.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest

from m2a_perception.cli.bag_player import build_parser as player_parser
from m2a_perception.cli.bag_recorder import build_parser as recorder_parser
from m2a_perception.cli.replay import build_parser as replay_parser
from m2a_perception.ros.processes import profile_variables
from m2a_perception.ros.replay.live import plan_live_replay

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCH_FILE = REPO_ROOT / 'launch' / 'replay_eval.launch.py'
# Console scripts the launch file needs in ros2_ws/src/m2a_perception/setup.py.
EXECUTABLES = {
    'perception_node': 'm2a_perception.cli.perception_node',
    'bag_player': 'm2a_perception.cli.bag_player',
    'bag_recorder': 'm2a_perception.cli.bag_recorder',
}


class Recorded:
    instances: ClassVar[list[Recorded]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        Recorded.instances.append(self)


class FakeContext:
    def __init__(self, configurations: dict[str, str]) -> None:
        self.launch_configurations = configurations


class LaunchConfiguration(Recorded):
    def perform(self, context: FakeContext) -> str:
        return context.launch_configurations[self.args[0]]


class FindPackageShare(Recorded):
    def perform(self, context: FakeContext) -> str:
        return str(REPO_ROOT)


class PathJoinSubstitution(Recorded):
    def perform(self, context: FakeContext) -> str:
        parts = [p if isinstance(p, str) else p.perform(context) for p in self.args[0]]
        return str(Path(*parts))


class DeclareLaunchArgument(Recorded):
    @property
    def name(self) -> str:
        return self.args[0]


def _kind(name: str) -> type:
    return type(name, (Recorded,), {})


@pytest.fixture
def launch_module(monkeypatch):
    contents = {
        'launch': {},
        'launch.actions': {
            'DeclareLaunchArgument': DeclareLaunchArgument,
            **{
                n: _kind(n)
                for n in (
                    'EmitEvent',
                    'ExecuteProcess',
                    'OpaqueFunction',
                    'RegisterEventHandler',
                    'SetEnvironmentVariable',
                )
            },
        },
        'launch.event_handlers': {'OnProcessExit': _kind('OnProcessExit')},
        'launch.events': {'Shutdown': _kind('Shutdown')},
        'launch.events.process': {'ProcessExited': _kind('ProcessExited')},
        'launch.launch_context': {'LaunchContext': FakeContext},
        'launch.launch_description': {'LaunchDescription': _kind('LaunchDescription')},
        'launch.substitutions': {
            'LaunchConfiguration': LaunchConfiguration,
            'PathJoinSubstitution': PathJoinSubstitution,
        },
        'launch_ros': {},
        'launch_ros.actions': {'Node': _kind('Node'), 'LifecycleNode': _kind('LifecycleNode')},
        'launch_ros.substitutions': {'FindPackageShare': FindPackageShare},
    }
    for name, attributes in contents.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    Recorded.instances = []
    spec = importlib.util.spec_from_file_location('replay_eval_launch_under_test', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_replay_eval_launch(launch_module, anomaly_bag, tmp_path):
    description = launch_module.generate_launch_description()
    entities = description.args[0]
    context = FakeContext({})
    for entity in entities:
        if isinstance(entity, DeclareLaunchArgument):
            default = entity.kwargs['default_value']
            context.launch_configurations[entity.name] = (
                default if isinstance(default, str) else default.perform(context)
            )
    assert {'bag', 'out', 'checkpoint', 'params_file', 'cameras', 'rate'} <= set(
        context.launch_configurations
    )
    assert Path(context.launch_configurations['params_file']).is_file()
    with pytest.raises(RuntimeError, match='bag:='):
        launch_module._replay(context)

    out = tmp_path / 'out'
    context.launch_configurations.update(
        bag=str(anomaly_bag), out=str(out), checkpoint='/models/m2a.safetensors'
    )
    profile, node_exit, node, recorder, player, handler = launch_module._replay(context)
    # The shipped large-frame profile for every process (as m2a_perception.launch.py), which
    # also works with ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST, under the name this install's
    # Fast DDS reads (Kilted's 3.x: FASTDDS_..., Jazzy's 2.14: FASTRTPS_...); empty keeps the
    # environment.
    assert profile.args == (
        profile_variables(os.environ)[0],
        str(REPO_ROOT / 'config' / 'fastdds_large_frames.xml'),
    )
    assert (REPO_ROOT / 'config' / 'fastdds_large_frames.xml').is_file()
    # The node ends by itself when launch is killed (SIGTERM/SIGKILL to ros2 launch).
    assert node.kwargs['additional_env'] == {'M2A_EXIT_WITH_PARENT': '1'}
    # A node that dies at start fails launch at once (the player would wait startup_timeout).
    assert node_exit.args[0].kwargs == {
        'target_action': node,
        'on_exit': launch_module.on_node_exit,
    }
    assert node.kwargs['sigterm_timeout'] == '10'
    plan = plan_live_replay(anomaly_bag, {'model.checkpoint': '/models/m2a.safetensors'})

    assert type(node).__name__ == 'LifecycleNode'
    assert node.kwargs['executable'] == 'perception_node'
    assert node.kwargs['namespace'] == plan.namespace
    params_file, values = node.kwargs['parameters']
    assert Path(params_file).is_file()
    assert values == plan.node_parameters
    assert (
        values['use_sim_time'] is True and values['model.checkpoint'] == '/models/m2a.safetensors'
    )

    assert recorder.kwargs['executable'] == 'bag_recorder'
    assert recorder.kwargs['parameters'] == [{'use_sim_time': True}]
    recorded = recorder_parser().parse_args(recorder.kwargs['arguments'])
    assert recorded.out == out and recorded.topics == list(plan.record_topics)
    assert player.kwargs['executable'] == 'bag_player'
    played = player_parser().parse_args(player.kwargs['arguments'])
    assert played.clock and played.topics == list(plan.play_topics)
    assert played.wait_topic == list(plan.wait_topics) and played.wait_subscribers == 2

    # Recorder exit -> evaluation of the recording -> shutdown.
    on_exit = handler.args[0]
    assert on_exit.kwargs['target_action'] is recorder
    evaluation, then = on_exit.kwargs['on_exit']
    command = evaluation.kwargs['cmd']
    assert command[:3] == [sys.executable, '-m', 'm2a_perception.cli.replay']
    parsed = replay_parser().parse_args(command[3:])
    assert parsed.recorded_outputs and parsed.bag == out
    assert then.args[0].kwargs['on_exit'][0].kwargs['event'] is not None

    context.launch_configurations['fastdds_profile'] = ''
    assert type(launch_module._replay(context)[0]).__name__ == 'RegisterEventHandler'


class FakeProcessExited:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        self.action = types.SimpleNamespace(name='perception_node-1')


def test_replay_eval_fails_when_the_node_dies(launch_module):
    context = FakeContext({})
    context.is_shutdown = False
    with pytest.raises(RuntimeError, match='perception_node-1 exited with status 2'):
        launch_module.on_node_exit(FakeProcessExited(2), context)
    assert launch_module.on_node_exit(FakeProcessExited(0), context) == []
    # Stopped by launch after the evaluation (or Ctrl-C): no error.
    context.is_shutdown = True
    assert launch_module.on_node_exit(FakeProcessExited(-9), context) == []


def test_launch_executables_are_importable_entry_points():
    for module_name in EXECUTABLES.values():
        module = importlib.import_module(module_name)
        assert callable(module.main)
