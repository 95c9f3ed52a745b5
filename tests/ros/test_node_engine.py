"""The provisioning chain with real processes: m2a-build-engine -> sidecar -> node -> outputs.

The onnxruntime engine kind runs everywhere, so CI exercises the exact path a TensorRT engine
takes on the vehicle: the engine file is opened only through its sidecar (key fields and gate
checked by `runtime.loader`), `build_if_missing` builds in the background while diagnostics
report `building`, and the engine's outputs equal eager torch within the gate tolerance.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import Image

from m2a_perception.deploy.gate import GateThresholds
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.runtime.loader import BackendError, BackendSpec, build_segmenter

from .helpers import (
    STARTUP_TIMEOUT_S,
    camera_command,
    latest_status,
    node_command,
    start_process,
    status_values,
)

# One worker runs these in order: with two workers overlapping them (each in its own ROS
# domain), the engine node activated but received no camera frame for 60 s (cause open).
pytestmark = [pytest.mark.ros, pytest.mark.xdist_group('node_engine')]

NAMESPACE = '/eng'
NODE = f'{NAMESPACE}/m2a_perception'
DIAG = 'eng/m2a_perception: backend'
SIZE = '256x512'  # the tiny model's default engine size (short side 256, 2:1)


@pytest.fixture(scope='module')
def built_engine(tiny_checkpoint, tmp_path_factory) -> Path:
    """An onnxruntime engine made by the real m2a-build-engine command."""
    cache = tmp_path_factory.mktemp('engines')
    summary = cache / 'summary.json'
    command = [
        sys.executable, '-m', 'm2a_perception.cli.build_engine',
        '--checkpoint', str(tiny_checkpoint), '--backend', 'onnxruntime', '--precision', 'fp32',
        '--size', SIZE, '--device', 'cpu', '--engine-cache', str(cache), '--gate-images', '2',
        '--json', str(summary),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    engine = Path(json.loads(summary.read_text())[0]['engine'])
    assert engine.suffix == '.onnx' and Path(f'{engine}.json').is_file()
    return engine


def _spec(checkpoint: Path, engine: Path, **kwargs) -> BackendSpec:
    return BackendSpec('onnxruntime', str(checkpoint), str(engine), **kwargs)


def _copy(engine: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / engine.name
    shutil.copyfile(engine, target)
    shutil.copyfile(f'{engine}.json', f'{target}.json')
    return target


def _edit_key(engine: Path, edit) -> None:
    sidecar = Path(f'{engine}.json')
    data = json.loads(sidecar.read_text())
    edit(data['key'])
    sidecar.write_text(json.dumps(data))


def test_engine_outputs_equal_torch_within_the_gate(tiny_checkpoint, built_engine):
    post = PostprocessConfig()
    torch_segmenter, _ = build_segmenter(BackendSpec('torch', str(tiny_checkpoint)), post)
    engine_segmenter, _ = build_segmenter(_spec(tiny_checkpoint, built_engine), post)
    rng = np.random.default_rng(0)
    # A 2:1 frame fills the 256x512 engine: no padding, so both see the same network input.
    frame = rng.integers(0, 256, (128, 256, 3), dtype=np.uint8)
    expected, actual = torch_segmenter(frame), engine_segmenter(frame)
    agreement = float((expected.semantic == actual.semantic).float().mean())
    assert agreement >= GateThresholds().min_argmax_agreement
    assert float((expected.anomaly_map - actual.anomaly_map).abs().max()) < 1e-3


@pytest.mark.parametrize(
    ('field', 'edit', 'spec_changes'),
    [
        ('weights_sha256', lambda key: key.update(weights_sha256='0' * 64), {}),
        ('input_shape', None, {'engine_size': (256, 384)}),
        ('precision', lambda key: key.update(precision='fp16-islands-v1'), {}),
        ('toolchain.torch', lambda key: key['toolchain'].update(torch='0.0.1'), {}),
        ('toolchain.gpu_name', lambda key: key['toolchain'].update(gpu_name='Orin'), {}),
    ],
)
def test_sidecar_mismatch_is_refused_naming_the_field(
    tiny_checkpoint, built_engine, tmp_path, field, edit, spec_changes
):
    engine = _copy(built_engine, tmp_path)
    if edit is not None:
        _edit_key(engine, edit)
    with pytest.raises(BackendError, match=rf'{field}: '):
        build_segmenter(_spec(tiny_checkpoint, engine, **spec_changes), PostprocessConfig())


def test_gate_failed_engine_is_refused_unless_overridden(tiny_checkpoint, tmp_path):
    from m2a_perception.deploy.build import provision_from_checkpoint

    # A gate no engine can pass, accepted at build time only by explicit override.
    provisioned = provision_from_checkpoint(
        tiny_checkpoint,
        backend='onnxruntime',
        precision='fp32',
        size=(256, 512),
        device='cpu',
        cache_dir=tmp_path,
        gate_thresholds=GateThresholds(max_anomaly_abs_diff=-1.0),
        allow_gate_failure=True,
    )
    assert not provisioned.gate.passed
    engine = provisioned.paths.engine
    with pytest.raises(BackendError, match=r'did not pass its accuracy gate.*allow_gate_failed'):
        build_segmenter(_spec(tiny_checkpoint, engine), PostprocessConfig())
    segmenter, _ = build_segmenter(
        _spec(tiny_checkpoint, engine, allow_gate_failed=True), PostprocessConfig()
    )
    assert segmenter(np.zeros((48, 64, 3), np.uint8)).anomaly_map.shape == (48, 64)


def test_node_runs_the_built_engine_and_builds_in_the_background(
    tiny_checkpoint, built_engine, tmp_path, probe
):
    stale = _copy(built_engine, tmp_path / 'stale')
    _edit_key(stale, lambda key: key['toolchain'].update(gpu_name='Orin'))
    diagnostics = probe.record(DiagnosticArray, '/diagnostics')
    outputs = probe.record(Image, f'{NAMESPACE}/front/anomaly/score')
    overrides = (
        'autostart:=false',
        'diagnostics.period_s:=0.2',
        'model.backend:=onnxruntime',
        f'model.engine_path:={stale}',
    )
    node = start_process(
        'engine_node', node_command(tiny_checkpoint, NAMESPACE, *overrides), tmp_path
    )
    camera = None
    try:
        assert probe.lifecycle_state(NODE, STARTUP_TIMEOUT_S) == 'unconfigured'
        # An engine built for another GPU: configure fails, naming the field.
        assert not probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
        failed = probe.wait_for(
            lambda: (
                (s := latest_status(diagnostics, DIAG))
                and status_values(s)['state'] == 'failed'
                and s
            ),
            what='engine refused',
        )
        assert 'toolchain.gpu_name: Orin' in failed.message

        # The engine m2a-build-engine made: configure, activate, outputs.
        assert probe.set_parameter(NODE, 'model.engine_path', str(built_engine))[0]
        assert probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
        assert probe.transition(NODE, Transition.TRANSITION_ACTIVATE)
        camera = start_process(
            'camera',
            camera_command('--topic', f'{NAMESPACE}/front/image', '--rate', '5'),
            tmp_path,
        )
        probe.wait_for(lambda: outputs.messages, what='anomaly score from the engine')
        assert status_values(latest_status(diagnostics, DIAG))['backend'] == 'onnxruntime'

        # build_if_missing with no engine yet: configure returns at once, 'building' is
        # reported while the background build runs, then 'ready'.
        assert probe.transition(NODE, Transition.TRANSITION_DEACTIVATE)
        assert probe.transition(NODE, Transition.TRANSITION_CLEANUP)
        fresh = tmp_path / 'fresh' / built_engine.name
        assert probe.set_parameter(NODE, 'model.engine_path', str(fresh))[0]
        assert probe.set_parameter(NODE, 'model.engine_policy', 'build_if_missing')[0]
        diagnostics.clear()
        assert probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
        probe.wait_for(
            lambda: (
                (s := latest_status(diagnostics, DIAG)) and status_values(s)['state'] == 'building'
            ),
            what='building in diagnostics',
        )
        probe.wait_for(
            lambda: (
                (s := latest_status(diagnostics, DIAG)) and status_values(s)['state'] == 'ready'
            ),
            timeout_s=300,
            what='engine built and ready',
        )
        assert fresh.is_file() and Path(f'{fresh}.json').is_file()
    finally:
        if camera is not None:
            camera.stop()
        node.stop()
