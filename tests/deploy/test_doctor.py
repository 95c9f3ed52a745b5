"""m2a-doctor on this CPU machine: missing TensorRT is named, the onnxruntime route is checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from m2a_perception.cli.doctor import main
from m2a_perception.deploy.doctor import matching_target, version_checks
from m2a_perception.weights.checkpoint import save_checkpoint

from .conftest import TINY_SIZE

SIZE_ARG = f'{TINY_SIZE[0]}x{TINY_SIZE[1]}'


def _tensorrt_installed() -> bool:
    try:
        import tensorrt  # noqa: F401
    except Exception:
        return False
    return True


pytestmark = pytest.mark.skipif(
    _tensorrt_installed(), reason='checks the report of a machine without TensorRT'
)


@pytest.fixture
def checkpoint(tmp_path, tiny_model, tiny_config):
    """The seed-0 tiny model (the one `fast_onnxruntime_kind` exports) as a checkpoint."""
    return save_checkpoint(tmp_path / 'tiny.safetensors', tiny_model.state_dict(), tiny_config)


def _checks(report):
    return {check['name']: check for check in report['checks']}


def test_default_kind_names_the_missing_tensorrt_and_exits_1(tmp_path, checkpoint):
    out = tmp_path / 'report.json'
    command = [sys.executable, '-m', 'm2a_perception.cli.doctor', '--checkpoint', str(checkpoint)]
    command += ['--size', SIZE_ARG, '--engine-cache', str(tmp_path / 'engines')]
    result = subprocess.run(
        [*command, '--json', str(out)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert 'missing: TensorRT is not installed (import tensorrt failed)' in result.stdout
    assert (
        'missing: torch-tensorrt is not installed (import torch_tensorrt failed)' in result.stdout
    )
    assert 'm2a-doctor FAIL (kind tensorrt, require all)' in result.stdout
    report = json.loads(out.read_text())
    checks = _checks(report)
    assert report['ok'] is False and report['kind'] == 'tensorrt'
    assert not checks['tensorrt']['passed'] and checks['tensorrt']['required']
    assert checks['engine']['passed'] is False
    if not torch.cuda.is_available():
        assert not checks['gpu']['passed'] and checks['gpu']['value'] == 'none'
        assert 'CUDA' in report['engine']['error']  # the loader's sentence: no GPU here
    else:
        assert 'tensorrt' in report['engine']['error'].lower()
    assert report['versions']['torch'] == torch.__version__


def test_onnxruntime_route_builds_gates_and_times_the_engine(
    tmp_path, capsys, checkpoint, fast_onnxruntime_kind
):
    out = tmp_path / 'report.json'
    argv = ['--checkpoint', str(checkpoint), '--backend', 'onnxruntime', '--device', 'cpu']
    argv += ['--size', SIZE_ARG, '--engine-cache', str(tmp_path / 'engines'), '--iters', '2']
    assert main([*argv, '--json', str(out)]) == 1  # require all: TensorRT is still missing
    report = json.loads(out.read_text())
    checks = _checks(report)
    assert checks['engine']['passed'] and checks['onnxruntime']['passed']
    assert report['engine']['gate']['passed'] is True
    assert report['engine']['backend']['built'] is True
    assert report['engine']['timing']['iterations'] == 2
    assert report['engine']['timing']['input'] == [1, 3, *TINY_SIZE]
    assert report['engine']['timing']['p50_ms'] > 0
    assert not checks['tensorrt']['passed'] and checks['tensorrt']['required']
    assert len(fast_onnxruntime_kind) == 1
    output = capsys.readouterr().out
    assert 'missing: TensorRT is not installed' in output

    # --require route: only what onnxruntime needs counts; the engine is reused, not rebuilt.
    assert main([*argv, '--json', str(out), '--require', 'route']) == 0
    report = json.loads(out.read_text())
    checks = _checks(report)
    assert report['ok'] is True and report['engine']['backend']['built'] is False
    assert not checks['tensorrt']['passed'] and not checks['tensorrt']['required']
    assert len(fast_onnxruntime_kind) == 1
    assert 'm2a-doctor PASS (kind onnxruntime, require route)' in capsys.readouterr().out


def _versions(**overrides):
    base = {
        'torch': '2.8.0',
        'torch_tensorrt': '2.8.0',
        'tensorrt': '10.3.0.30',
        'cuda': '12.6',
        'gpu_name': 'Orin',
        'compute_capability': 'sm_87',
        'platform': 'aarch64',
        'driver': 'none',
        'onnxruntime': 'none',
    }
    return {**base, **overrides}


def test_support_matrix_matches_jetpack_6_and_names_a_wrong_torch():
    assert matching_target(_versions())['target'] == 'Jetson Orin, JetPack 6.2'
    checks = {c.name: c for c in version_checks(_versions(), 'tensorrt', 'all')}
    assert checks['support_matrix'].passed and not checks['driver'].required
    bad = {c.name: c for c in version_checks(_versions(torch='2.13.0'), 'tensorrt', 'all')}
    assert not bad['support_matrix'].passed
    assert 'torch 2.13.0 (expected 2.8)' in bad['support_matrix'].message
    jp7 = _versions(tensorrt='10.16.2.10', cuda='13.2', torch='2.12.0', torch_tensorrt='none')
    jp7_checks = {c.name: c for c in version_checks(jp7, 'tensorrt-onnx', 'route')}
    assert jp7_checks['support_matrix'].passed
    assert jp7_checks['support_matrix'].value == 'Jetson Orin, JetPack 7.2'
    assert not jp7_checks['torch_tensorrt'].required
