"""Launch files and the RViz layout, checked without a `launch` install.

The launch files run against small stand-ins for `launch` and `launch_ros` that record what
they are given; `FindPackageShare('m2a_perception')` resolves to the repository root, whose
`launch/` and `config/` are exactly what setup.py installs into the share directory. So every
file a launch file names must exist here, and every executable must be a console script.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from m2a_perception.ros.rviz_config import (
    camera_names_from_params,
    render_rviz_config,
    topic_for,
)

from ..entry_points import setup_console_scripts as console_scripts
from .helpers import PARAMS_FILE, REPO_ROOT

pytestmark = pytest.mark.ros

LAUNCH_DIR = REPO_ROOT / 'launch'
RVIZ_FILE = REPO_ROOT / 'config' / 'm2a_perception.rviz'
REQUIRED_ARGUMENTS = {
    'params_file',
    'cameras',
    'namespace',
    'backend',
    'precision',
    'use_sim_time',
    'autostart',
    'rviz',
}
# Executables of other packages that a ROS install provides.
EXTERNAL_EXECUTABLES = {('rviz2', 'rviz2')}


class Recorded:
    """Base of the stand-ins: keeps positional and keyword arguments."""

    instances: ClassVar[list[Recorded]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args
        self.kwargs = kwargs
        Recorded.instances.append(self)


class FakeContext:
    def __init__(self, configurations: dict[str, str]) -> None:
        self.launch_configurations = configurations
        self.is_shutdown = False


class FakeLogger:
    """launch.logging.get_logger(name): keeps what was logged in `FakeLogger.lines`."""

    lines: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self, name: str) -> None:
        self.name = name

    def warning(self, message: str) -> None:
        FakeLogger.lines.append((self.name, 'warning', message))


def perform(value: Any, context: FakeContext) -> str:
    return value if isinstance(value, str) else value.perform(context)


class LaunchConfiguration(Recorded):
    def perform(self, context: FakeContext) -> str:
        return context.launch_configurations[self.args[0]]


class FindPackageShare(Recorded):
    def perform(self, context: FakeContext) -> str:
        if self.args[0] != 'm2a_perception':
            raise AssertionError(f'unexpected package share {self.args[0]}')
        return str(REPO_ROOT)


class PathJoinSubstitution(Recorded):
    def perform(self, context: FakeContext) -> str:
        return os.path.join(*(perform(part, context) for part in self.args[0]))


class DeclareLaunchArgument(Recorded):
    @property
    def name(self) -> str:
        return self.args[0]


def stub_modules() -> dict[str, types.ModuleType]:
    """Stand-ins for the parts of launch / launch_ros the launch files import."""
    contents = {
        'launch': {},
        'launch.logging': {'get_logger': lambda name: FakeLogger(name)},
        'launch.actions': {
            'DeclareLaunchArgument': DeclareLaunchArgument,
            'IncludeLaunchDescription': type('IncludeLaunchDescription', (Recorded,), {}),
            'OpaqueFunction': type('OpaqueFunction', (Recorded,), {}),
            'EmitEvent': type('EmitEvent', (Recorded,), {}),
            'RegisterEventHandler': type('RegisterEventHandler', (Recorded,), {}),
            'SetEnvironmentVariable': type('SetEnvironmentVariable', (Recorded,), {}),
        },
        'launch.event_handlers': {'OnProcessExit': type('OnProcessExit', (Recorded,), {})},
        'launch.events': {'Shutdown': type('Shutdown', (Recorded,), {})},
        'launch.events.process': {'ProcessExited': type('ProcessExited', (Recorded,), {})},
        'launch.launch_context': {'LaunchContext': FakeContext},
        'launch.launch_description': {
            'LaunchDescription': type('LaunchDescription', (Recorded,), {})
        },
        'launch.launch_description_sources': {
            'PythonLaunchDescriptionSource': type('PythonLaunchDescriptionSource', (Recorded,), {})
        },
        'launch.substitutions': {
            'LaunchConfiguration': LaunchConfiguration,
            'PathJoinSubstitution': PathJoinSubstitution,
        },
        'launch_ros': {},
        'launch_ros.actions': {
            'Node': type('Node', (Recorded,), {}),
            'LifecycleNode': type('LifecycleNode', (Recorded,), {}),
        },
        'launch_ros.substitutions': {'FindPackageShare': FindPackageShare},
    }
    modules = {}
    for name, attributes in contents.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        modules[name] = module
    # `import launch.logging` then reads the attribute `launch.logging`.
    modules['launch'].logging = modules['launch.logging']
    return modules


@pytest.fixture
def load_launch(monkeypatch):
    for name, module in stub_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    Recorded.instances = []
    FakeLogger.lines = []

    def load(file_name: str) -> Any:
        path = LAUNCH_DIR / file_name
        spec = importlib.util.spec_from_file_location(f'launch_under_test_{path.stem}', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def of_type(name: str) -> list[Recorded]:
    return [r for r in Recorded.instances if type(r).__name__ == name]


def launch_context(description: Recorded, **overrides: str) -> FakeContext:
    """Launch configurations from the declared defaults plus overrides."""
    context = FakeContext({})
    for entity in description.args[0]:
        if isinstance(entity, DeclareLaunchArgument):
            default = entity.kwargs.get('default_value', '')
            context.launch_configurations[entity.name] = perform(default, context)
    context.launch_configurations.update(overrides)
    return context


def installed_share_file(path: str) -> Path:
    """Map a path under the package share to the repository file setup.py installs there."""
    relative = Path(path).relative_to(REPO_ROOT)
    assert relative.parts[0] in {'launch', 'config'}, path
    patterns = {'launch': ('*.launch.py',), 'config': ('*.yaml', '*.rviz', '*.xml')}[
        relative.parts[0]
    ]
    assert any(relative.match(p) for p in patterns), f'{relative} is not installed by setup.py'
    return REPO_ROOT / relative


@pytest.mark.parametrize('file_name', ['m2a_perception.launch.py', 'rviz.launch.py'])
def test_launch_files_are_valid_python(file_name):
    source = (LAUNCH_DIR / file_name).read_text()
    tree = ast.parse(source)
    compile(tree, file_name, 'exec')
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in functions


def test_node_launch_arguments_files_and_executable(load_launch, monkeypatch):
    module = load_launch('m2a_perception.launch.py')
    description = module.generate_launch_description()
    declared = {a.name for a in of_type('DeclareLaunchArgument')}
    assert declared >= REQUIRED_ARGUMENTS

    context = launch_context(
        description,
        cameras='front, left',
        checkpoint='/models/m2a.safetensors',
        precision='fp16',
        namespace='perception',
    )
    handler, launched = module._node(context)
    node = launched.kwargs
    assert type(launched).__name__ == 'LifecycleNode'
    # Launch follows the node: its exit ends launch (see test_node_exit_ends_launch).
    assert type(handler).__name__ == 'RegisterEventHandler'
    (on_exit,) = handler.args
    assert on_exit.kwargs == {'target_action': launched, 'on_exit': module.on_node_exit}
    assert (node['package'], node['executable'], node['name']) == (
        'm2a_perception',
        'perception_node',
        'm2a_perception',
    )
    params_file, overrides = node['parameters']
    assert installed_share_file(params_file) == PARAMS_FILE
    # The node ignores signals while its worker stops: no SIGTERM escalation after 5 s.
    assert node['sigterm_timeout'] == '10'
    assert overrides == {
        'use_sim_time': False,
        'autostart': True,
        'cameras.names': ['front', 'left'],
        'model.checkpoint': '/models/m2a.safetensors',
        'model.precision': 'fp16',
    }
    # Empty arguments leave the YAML in force.
    defaults = module._node(launch_context(description))[1].kwargs['parameters'][1]
    assert set(defaults) == {'use_sim_time', 'autostart'}

    monkeypatch.setattr(module, 'rviz2_installed', lambda: True)
    assert module._rviz(launch_context(description)) == []
    (include,) = module._rviz(launch_context(description, rviz='true'))
    for include in of_type('IncludeLaunchDescription'):
        source = include.args[0]
        included = installed_share_file(perform(source.args[0], context))
        assert included.is_file()
        assert set(dict(include.kwargs['launch_arguments'])) <= {
            a.name for a in of_type('DeclareLaunchArgument')
        } | {'params_file'}


class FakeProcessExited:
    def __init__(self, returncode: int) -> None:
        self.returncode = returncode
        self.action = types.SimpleNamespace(name='perception_node-1')


def test_node_exit_ends_launch_and_a_failed_node_fails_it(load_launch):
    module = load_launch('m2a_perception.launch.py')
    context = FakeContext({})
    # A clean exit (lifecycle shutdown): launch shuts down, RViz with it.
    (shutdown,) = module.on_node_exit(FakeProcessExited(0), context)
    assert type(shutdown).__name__ == 'EmitEvent'
    assert type(shutdown.kwargs['event']).__name__ == 'Shutdown'
    # A node that could not start: the exception makes LaunchService.run() return 1
    # (launch/launch_service.py, `except Exception` in run_async), so systemd restarts it.
    with pytest.raises(RuntimeError, match='perception_node-1 exited with status 2'):
        module.on_node_exit(FakeProcessExited(2), context)
    # The node ends during launch's own shutdown (Ctrl-C, also after SIGTERM/SIGKILL
    # escalation): nothing more. A second Shutdown event ran launch_ros' shutdown handler twice
    # under the real launch ("Cannot shutdown a ROS adapter that is not running"), so Ctrl-C
    # exited 1.
    context.is_shutdown = True
    for status in (0, -2, -15, -9):
        assert module.on_node_exit(FakeProcessExited(status), context) == []


def test_a_params_file_that_is_not_a_file_fails_launch_before_the_node(load_launch, tmp_path):
    module = load_launch('m2a_perception.launch.py')
    description = module.generate_launch_description()
    missing = tmp_path / 'vehicle.yaml'
    # launch_ros would only warn "Parameter file path is not a file" and run every default.
    with pytest.raises(RuntimeError, match=f'params_file:={missing} is not a file'):
        module._node(launch_context(description, params_file=str(missing)))
    assert not of_type('LifecycleNode')
    missing.write_text('/**:\n  ros__parameters: {}\n')
    (_, node) = module._node(launch_context(description, params_file=str(missing)))
    assert node.kwargs['parameters'][0] == str(missing)


def test_rviz_is_resolved_before_the_node_and_skipped_without_rviz2(load_launch, monkeypatch):
    module = load_launch('m2a_perception.launch.py')
    description = module.generate_launch_description()
    functions = [
        entity.kwargs['function']
        for entity in description.args[0]
        if type(entity).__name__ == 'OpaqueFunction'
    ]
    # Launch visits entities in order: a failing RViz include aborts it before the node runs.
    assert functions == [module.fastdds_profile, module._rviz, module._node]
    monkeypatch.setattr(module, 'rviz2_installed', lambda: False)
    assert module._rviz(launch_context(description, rviz='true')) == []
    assert FakeLogger.lines == [
        ('launch', 'warning', 'rviz:=true, but rviz2 is not installed: no RViz')
    ]
    assert not of_type('IncludeLaunchDescription')
    assert module.rviz2_installed() is False  # no rviz2 in this environment


def test_transports_argument(load_launch):
    module = load_launch('m2a_perception.launch.py')
    description = module.generate_launch_description()
    context = launch_context(description, cameras='front,rear', transports='rear:compressed')
    overrides = module._node(context)[1].kwargs['parameters'][1]
    assert overrides['cameras.rear.transport'] == 'compressed'
    assert 'cameras.front.transport' not in overrides
    assert module.camera_transports(' front:raw , rear:compressed ') == {
        'front': 'raw',
        'rear': 'compressed',
    }
    for bad in ('rear', 'rear:jpeg', ':raw'):
        with pytest.raises(ValueError, match='<camera>:raw or <camera>:compressed'):
            module.camera_transports(bad)


def fast_dds_major() -> str:
    """'3' or '2': the major version of the Fast DDS library of this venv's ROS wheels."""
    (library,) = {
        path.name.split('.so.')[1][0]
        for path in (Path(sys.prefix) / 'lib').glob('lib*.so.*')
        if path.name.startswith(('libfastdds.so.', 'libfastrtps.so.'))
    }
    return library


def test_node_launch_loads_the_fast_dds_profile_before_the_node(load_launch):
    module = load_launch('m2a_perception.launch.py')
    description = module.generate_launch_description()
    functions = [
        e.kwargs['function'] for e in description.args[0] if type(e).__name__ == 'OpaqueFunction'
    ]
    # First, so RViz and the node both start with it.
    assert functions[0] is module.fastdds_profile
    setters = module.fastdds_profile(launch_context(description))
    assert {type(setter).__name__ for setter in setters} == {'SetEnvironmentVariable'}
    # Fast DDS 3.x (Kilted) reads FASTDDS_..., 2.x (Humble, Jazzy) only FASTRTPS_...: with
    # FASTDDS_... alone, Jazzy ran the default transports and lost 6 MB frames (8 of 12 arrived).
    expected = {'3': ['FASTDDS_DEFAULT_PROFILES_FILE'], '2': ['FASTRTPS_DEFAULT_PROFILES_FILE']}
    assert [setter.args[0] for setter in setters] == expected[fast_dds_major()]
    (value,) = {setter.args[1] for setter in setters}
    profile = installed_share_file(value)
    assert profile == REPO_ROOT / 'config' / 'fastdds_large_frames.xml' and profile.is_file()
    # Empty keeps the environment (no condition classes: LaunchConfigurationNotEquals is
    # deprecated from Jazzy on, its replacement does not exist in Humble).
    assert module.fastdds_profile(launch_context(description, fastdds_profile=' ')) == []


def test_rviz_launch_renders_a_layout_per_camera(load_launch, tmp_path, monkeypatch):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    module = load_launch('rviz.launch.py')
    description = module.generate_launch_description()
    context = launch_context(description)
    (node,) = module._rviz(context)
    assert (node.kwargs['package'], node.kwargs['executable']) == ('rviz2', 'rviz2')
    assert Path(node.kwargs['arguments'][1]) == RVIZ_FILE, 'default cameras use the shipped file'

    context = launch_context(description, cameras='front,rear', namespace='/perception')
    (node,) = module._rviz(context)
    rendered = yaml.safe_load(Path(node.kwargs['arguments'][1]).read_text())
    topics = [d['Topic']['Value'] for d in rendered['Visualization Manager']['Displays']]
    assert '/perception/rear/anomaly/heatmap' in topics
    assert '/perception/front/overlay' in topics
    # Launching again reuses the file: one per distinct layout, not one per launch.
    (again,) = module._rviz(context)
    assert again.kwargs['arguments'][1] == node.kwargs['arguments'][1]
    assert [p.name for p in tmp_path.iterdir()] == [Path(node.kwargs['arguments'][1]).name]


def test_every_named_executable_exists():
    scripts = console_scripts()
    missing = [n for n in ('perception_node', 'm2a-perception-node') if n not in scripts]
    if missing:
        pytest.fail(
            f'setup.py console_scripts lacks {missing}; add '
            "'perception_node = m2a_perception.cli.perception_node:main' and "
            "'m2a-perception-node = m2a_perception.cli.perception_node:main'"
        )
    for name in ('perception_node', 'm2a-perception-node'):
        module_name, function = scripts[name].split(':')
        assert callable(getattr(importlib.import_module(module_name), function))
    # Other executables the launch files start come from a ROS install.
    for path in LAUNCH_DIR.glob('*.launch.py'):
        for call in ast.walk(ast.parse(path.read_text())):
            if not isinstance(call, ast.Call):
                continue
            keywords = {k.arg: k.value for k in call.keywords if isinstance(k.value, ast.Constant)}
            if 'executable' in keywords and 'package' in keywords:
                package, executable = keywords['package'].value, keywords['executable'].value
                assert (package, executable) in EXTERNAL_EXECUTABLES, (path.name, executable)


def test_rviz_config_has_the_three_displays_per_camera():
    data = yaml.safe_load(RVIZ_FILE.read_text())
    topics = {d['Topic']['Value'] for d in data['Visualization Manager']['Displays']}
    assert topics == {'/front/anomaly/heatmap', '/front/overlay', '/front/panoptic/semantic'}


def test_render_rviz_config():
    text = render_rviz_config(RVIZ_FILE.read_text(), ['left', 'right'], 'car')
    displays = yaml.safe_load(text)['Visualization Manager']['Displays']
    assert [d['Name'] for d in displays] == [
        'left anomaly heatmap',
        'left overlay',
        'left semantic ids',
        'right anomaly heatmap',
        'right overlay',
        'right semantic ids',
    ]
    assert displays[4]['Topic']['Value'] == '/car/right/overlay'
    assert topic_for('', 'front', 'overlay') == '/front/overlay'
    with pytest.raises(ValueError, match='at least one camera'):
        render_rviz_config(RVIZ_FILE.read_text(), [])


def test_camera_names_from_params(tmp_path):
    assert camera_names_from_params(PARAMS_FILE) == ['front']
    path = tmp_path / 'p.yaml'
    path.write_text('/**/m2a_perception:\n  ros__parameters:\n    cameras:\n      names: [a, b]\n')
    assert camera_names_from_params(path) == ['a', 'b']


def test_systemd_unit_stops_launch_with_sigint_and_restarts_on_failure():
    unit = (REPO_ROOT / 'config' / 'm2a_perception.service').read_text()
    settings = dict(
        line.split('=', 1) for line in unit.splitlines() if '=' in line and line[0] != '#'
    )
    # SIGTERM would end launch at once and orphan the node.
    assert settings['KillSignal'] == 'SIGINT'
    assert settings['KillMode'] == 'mixed' and int(settings['TimeoutStopSec']) >= 10
    assert settings['Restart'] == 'on-failure'
    assert 'exec ros2 launch m2a_perception m2a_perception.launch.py' in settings['ExecStart']
    assert (LAUNCH_DIR / 'm2a_perception.launch.py').is_file()
    for argument in ('checkpoint', 'params_file'):
        assert f' {argument}:=' in settings['ExecStart'] and argument in REQUIRED_ARGUMENTS | {
            'checkpoint'
        }
    docs = (REPO_ROOT / 'docs' / 'vehicle_deployment.md').read_text()
    assert 'config/m2a_perception.service' in docs and 'KillSignal=SIGINT' in docs


def test_list_parameters_as_launch_ros_writes_them_reach_the_node(tmp_path):
    """launch_ros dumps a launch file's parameters with yaml.dump after turning lists into
    tuples, so `cameras:=front,left` reaches the node as `!!python/tuple` in a temporary
    parameter file; the node read that file as refused Python data and exited 2 (seen with
    the real launch: replay_eval.launch.py never started the node)."""
    from m2a_perception.cli.perception_node import params_file_problem
    from m2a_perception.config import parse_yaml

    path = tmp_path / 'launch_params_x'
    path.write_text(
        yaml.dump({'/m2a_perception': {'ros__parameters': {'cameras.names': ('front', 'left')}}})
    )
    assert '!!python/tuple' in path.read_text()
    assert params_file_problem(['--params-file', str(path)]) is None
    assert parse_yaml(path.read_text(), 'p') == {
        '/m2a_perception': {'ros__parameters': {'cameras.names': ['front', 'left']}}
    }
    # Only the tuple itself: Python objects inside it, and every other Python tag, are refused.
    for text in (
        'a: !!python/tuple [!!python/name:os.system ]\n',
        'a: !!python/object:os.Foo {}\n',
    ):
        path.write_text(text)
        assert 'is refused (only plain data is allowed)' in params_file_problem(
            ['--params-file', str(path)]
        )
