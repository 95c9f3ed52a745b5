"""colcon build of both ROS packages with the pip-wheel set-up, and the node from that install.

Builds `m2a_perception_msgs` and `m2a_perception` into a temporary build/install base the way
the Makefile's `colcon` target does (AMENT_PREFIX_PATH and CMAKE_PREFIX_PATH = the venv, the
venv's bin first on PATH; shared/reference/environment.md §1-2), then starts the node twice:
as `install/m2a_perception/lib/m2a_perception/perception_node` after `source
install/setup.bash` (what `ros2 run` would start), and as the venv's `m2a-perception-node`
console script. Both must answer a lifecycle get_state and configure with a tiny checkpoint.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from lifecycle_msgs.msg import Transition

from ..entry_points import setup_console_scripts
from .helpers import (
    REPO_ROOT,
    STARTUP_TIMEOUT_S,
    node_arguments,
    ros_env,
    start_process,
)

pytestmark = pytest.mark.ros

VENV = Path(sys.executable).parent.parent
COLCON = VENV / 'bin' / 'colcon'
CONSOLE_SCRIPT = VENV / 'bin' / 'm2a-perception-node'
SOURCES = REPO_ROOT / 'ros2_ws' / 'src'
PACKAGES = ('m2a_perception_msgs', 'm2a_perception')
BUILD_TIMEOUT_S = 600


def build_env() -> dict[str, str]:
    env = ros_env()
    env['AMENT_PREFIX_PATH'] = str(VENV)
    env['CMAKE_PREFIX_PATH'] = str(VENV)
    env['PATH'] = f'{VENV / "bin"}:{env.get("PATH", "")}'
    return env


def colcon_build(
    base: Path,
    base_paths: Path,
    packages: Sequence[str],
    *options: str,
    cmake_args: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """`colcon build` of `packages` found under `base_paths`, with its log, build and install
    bases inside `base`; `options` go after `build`. Asserts that the build succeeded."""
    command = [
        str(COLCON),
        '--log-base',
        str(base / 'log'),
        'build',
        *options,
        '--base-paths',
        str(base_paths),
        '--build-base',
        str(base / 'build'),
        '--install-base',
        str(base / 'install'),
        '--packages-select',
        *packages,
    ]
    if cmake_args:
        command += ['--cmake-args', *cmake_args]
    done = subprocess.run(
        command,
        cwd=base,
        env=build_env(),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f'colcon build failed:\n{done.stdout[-4000:]}\n{done.stderr}'
    return done


@pytest.fixture(scope='module')
def colcon_install(tmp_path_factory) -> Path:
    """Install base of a fresh colcon build of both packages."""
    if not COLCON.exists() or shutil.which('cmake') is None:
        pytest.skip(f'colcon ({COLCON}) or cmake missing: run `make setup`')
    base = tmp_path_factory.mktemp('colcon')
    done = colcon_build(
        base,
        SOURCES,
        PACKAGES,
        cmake_args=('-DBUILD_TESTING=OFF', f'-DPython3_EXECUTABLE={VENV / "bin" / "python"}'),
    )
    assert f'Summary: {len(PACKAGES)} packages finished' in done.stdout, done.stdout
    return base / 'install'


def sourced(install: Path, command: str) -> list[str]:
    """`command` in bash after sourcing the install's setup.bash."""
    return ['bash', '-c', f'source {shlex.quote(str(install / "setup.bash"))} && {command}']


def test_colcon_install_has_both_packages(colcon_install):
    executable = colcon_install / 'm2a_perception' / 'lib' / 'm2a_perception' / 'perception_node'
    assert executable.is_file() and executable.stat().st_mode & 0o111
    messages = colcon_install / 'm2a_perception_msgs' / 'share' / 'm2a_perception_msgs' / 'msg'
    for name in ('OpenSetPanoptic', 'OpenSetSegment', 'InferenceStats'):
        assert (messages / f'{name}.msg').is_file(), name
    # `ros2 run m2a_perception <tool>` runs lib/m2a_perception/<tool>: after a colcon-only
    # install the tools are not on PATH, so every console script must be there.
    tools = colcon_install / 'm2a_perception' / 'lib' / 'm2a_perception'
    missing = sorted(name for name in setup_console_scripts() if not (tools / name).is_file())
    assert missing == [], f'not runnable with ros2 run: {missing}'
    share = colcon_install / 'm2a_perception' / 'share' / 'm2a_perception'
    assert (share / 'config' / 'm2a_perception.yaml').is_file()
    assert (share / 'launch' / 'm2a_perception.launch.py').is_file()
    # After sourcing, Python takes both packages from the install, not from the venv.
    probe = (
        f'{shlex.quote(sys.executable)} -c "import m2a_perception, m2a_perception_msgs.msg; '
        'print(m2a_perception.__file__); print(m2a_perception_msgs.__file__)"'
    )
    done = subprocess.run(
        sourced(colcon_install, probe),
        env=ros_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    paths = done.stdout.split()
    assert len(paths) == 2 and all(p.startswith(str(colcon_install)) for p in paths), paths


def test_node_runs_from_the_install_and_as_console_script(
    colcon_install, tiny_checkpoint, probe, tmp_path
):
    assert CONSOLE_SCRIPT.is_file(), f'{CONSOLE_SCRIPT} missing: run `make setup`'
    executable = colcon_install / 'm2a_perception' / 'lib' / 'm2a_perception' / 'perception_node'
    manual = ('autostart:=false',)
    runs = {
        '/colcon_install': sourced(
            colcon_install,
            'exec '
            + shlex.join(
                [
                    str(executable),
                    *node_arguments(tiny_checkpoint, '/colcon_install', 'autostart:=false'),
                ]
            ),
        ),
        '/console_script': [
            str(CONSOLE_SCRIPT),
            *node_arguments(tiny_checkpoint, '/console_script', *manual),
        ],
    }
    processes = {
        namespace: start_process(namespace.strip('/'), command, tmp_path)
        for namespace, command in runs.items()
    }
    try:
        for namespace, process in processes.items():
            node = f'{namespace}/m2a_perception'
            state = probe.lifecycle_state(node, STARTUP_TIMEOUT_S)
            assert state == 'unconfigured', process.log_text()
            assert probe.transition(node, Transition.TRANSITION_CONFIGURE), process.log_text()
            assert probe.lifecycle_state(node) == 'inactive'
            log = process.log_text()
            assert 'model tiny ready' in log
            assert 'configured: cameras front, backend ready' in log
    finally:
        codes = {namespace: process.stop() for namespace, process in processes.items()}
    for namespace, code in codes.items():
        assert code == 0, (namespace, code, processes[namespace].log_text())


def test_symlink_install_writes_only_into_its_bases(tmp_path):
    """`colcon build --symlink-install --build-base <elsewhere>` mirrors data files inside the
    build base (setup.py names them inside the package), never next to it."""
    if not COLCON.exists():
        pytest.skip(f'colcon ({COLCON}) missing: run `make setup`')
    outer = tmp_path / 'a' / 'b'
    base = outer / 'c'
    base.mkdir(parents=True)
    # The messages come from the venv (make setup).
    colcon_build(base, SOURCES / 'm2a_perception', ('m2a_perception',), '--symlink-install')
    assert sorted(p.name for p in tmp_path.rglob('*') if base not in (p, *p.parents)) == [
        'a',
        'b',
    ]
    share = base / 'install' / 'm2a_perception' / 'share' / 'm2a_perception'
    for name in ('launch/m2a_perception.launch.py', 'config/m2a_perception.yaml'):
        assert (share / name).read_text() == (REPO_ROOT / name).read_text()
