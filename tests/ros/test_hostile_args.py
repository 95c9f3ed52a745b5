"""Hostile command lines and YAML through the real node process and the real replay CLI.

Each case must end in one sentence naming the file (and line), a usage exit code, and no
traceback; YAML tags that would build Python objects are refused without running anything.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .helpers import ros_env

pytestmark = pytest.mark.ros

EVIL_YAML = (
    '/**:\n  ros__parameters:\n    anomaly:\n'
    "      threshold: !!python/object/apply:os.system ['touch {marker}']\n"
)


def run_node(*ros_args: str, timeout_s: float = 120.0) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, '-m', 'm2a_perception.cli.perception_node', '--ros-args', *ros_args]
    return subprocess.run(
        command, capture_output=True, text=True, env=ros_env(), timeout=timeout_s, check=False
    )


def run_replay(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, '-m', 'm2a_perception.cli.replay', *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=ros_env(), timeout=120, check=False
    )


def assert_one_sentence(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert 'Traceback' not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def test_missing_params_file_is_one_sentence(tmp_path):
    missing = tmp_path / 'nope.yaml'
    done = run_node('--params-file', str(missing))
    assert_one_sentence(done, f'parameter file {missing} does not exist')


def test_corrupt_params_file_names_the_line(tmp_path):
    corrupt = tmp_path / 'corrupt.yaml'
    corrupt.write_text('/**:\n  ros__parameters:\n    anomaly: {threshold: [0.5\n')
    done = run_node('--params-file', str(corrupt))
    assert_one_sentence(done, f'{corrupt} line 4: invalid YAML')


def test_python_tag_in_node_params_file_is_refused(tmp_path):
    marker = tmp_path / 'ran'
    evil = tmp_path / 'evil.yaml'
    evil.write_text(EVIL_YAML.format(marker=marker))
    done = run_node('--params-file', str(evil))
    assert_one_sentence(
        done, f'{evil} line 4', 'YAML tag !!python/object/apply:os.system is refused'
    )
    assert not marker.exists()


def test_python_tag_in_replay_params_file_and_override_is_refused(tmp_path):
    marker = tmp_path / 'ran'
    evil = tmp_path / 'evil.yaml'
    evil.write_text(EVIL_YAML.format(marker=marker))
    bag = tmp_path / 'in'
    done = run_replay(str(bag), '--out', str(tmp_path / 'out'), '--params-file', str(evil))
    assert_one_sentence(done, f'{evil} line 4', 'YAML tag !!python/object/apply:os.system')
    done = run_replay(
        str(bag),
        '--out',
        str(tmp_path / 'out'),
        '-p',
        f"anomaly.threshold:=!!python/object/apply:os.system ['touch {marker}']",
    )
    assert_one_sentence(done, '-p anomaly.threshold line 1', 'YAML tag !!python/object/apply')
    assert not marker.exists()


def test_python_tag_in_model_config_is_refused(tmp_path):
    from m2a_perception.config import load_model_config

    marker = tmp_path / 'ran'
    config = tmp_path / 'evil_model.yaml'
    config.write_text(f"name: evil\nnum_classes: !!python/object/apply:os.system ['{marker}']\n")
    refused = rf'^{config} line 2: the YAML tag !!python/object/apply:os.system is refused'
    with pytest.raises(ValueError, match=refused):
        load_model_config(config)
    assert not marker.exists()
