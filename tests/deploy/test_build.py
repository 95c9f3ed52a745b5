"""m2a-build-engine and provisioning on CPU (TensorRT parts only up to their guards)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from m2a_perception.cli.build_engine import ProgressPrinter, main
from m2a_perception.deploy import build as build_module
from m2a_perception.deploy import tensorrt_backend
from m2a_perception.deploy.build import open_prebuilt_engine, provision_from_checkpoint
from m2a_perception.deploy.cache import EngineCorruptError, EngineStaleError, write_json_atomic
from m2a_perception.deploy.precision import FP16
from m2a_perception.deploy.tensorrt_backend import (
    BackendUnavailableError,
    OnnxTensorRTBackend,
    TensorRTBackend,
    onnx_has_low_precision,
    torch_tensorrt_compile_kwargs,
)
from m2a_perception.weights.checkpoint import save_checkpoint

from .conftest import TINY_SIZE

SIZE_ARG = f'{TINY_SIZE[0]}x{TINY_SIZE[1]}'
ORT_ARGS = (
    f'--model-config tiny --random-weights --backend onnxruntime --precision fp32 '
    f'--size {SIZE_ARG} --device cpu'
).split()
TENSORRT_IMPORTABLE = False
try:  # only to pick the expected message; never required
    import tensorrt  # noqa: F401

    TENSORRT_IMPORTABLE = True
except Exception:
    pass


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only error path')
@pytest.mark.parametrize(
    ('device', 'message'),
    [('cpu', 'run on CUDA devices'), ('cuda', 'CUDA, which is not available')],
)
def test_build_engine_without_tensorrt_exits_with_a_clear_error(capsys, device, message):
    code = main(
        ['--model-config', 'tiny', '--random-weights', '--size', SIZE_ARG, '--device', device]
    )
    assert code == 2
    error = capsys.readouterr().err
    assert 'backend tensorrt is unavailable on this machine' in error and message in error


@pytest.mark.skipif(TENSORRT_IMPORTABLE, reason='checks the missing-TensorRT error path')
@pytest.mark.parametrize('backend', ['tensorrt', 'tensorrt-onnx'])
def test_missing_tensorrt_on_a_cuda_machine_is_named(monkeypatch, capsys, backend):
    monkeypatch.setattr(tensorrt_backend.torch.cuda, 'is_available', lambda: True)
    args = ['--model-config', 'tiny', '--random-weights', '--size', SIZE_ARG, '--device', 'cuda:0']
    code = main([*args, '--backend', backend])
    assert code == 2
    error = capsys.readouterr().err
    assert 'cannot be imported here' in error and 'torch-tensorrt' in error


def test_build_engine_cli_end_to_end_on_cpu(tmp_path, capsys, fast_onnxruntime_kind):
    args = [*ORT_ARGS, '--engine-cache', str(tmp_path / 'cache'), '--gate-images', '2']
    assert main([*args, '--json', str(tmp_path / 'first.json')]) == 0
    output = capsys.readouterr().out
    for state in ('checking', 'building', 'gating', 'saving', 'ready'):
        assert f'onnxruntime fp32 {SIZE_ARG} {state}:' in output
    assert 'accuracy gate PASSED' in output and 'engine:  ' in output and 'sidecar: ' in output
    summary = json.loads((tmp_path / 'first.json').read_text())[0]
    assert summary['built'] and summary['gate']['passed']
    assert Path(summary['engine']).is_file() and Path(summary['sidecar']).is_file()
    assert len(fast_onnxruntime_kind) == 1

    assert main([*args, '--policy', 'load_only', '--json', str(tmp_path / 'second.json')]) == 0
    assert 'reused in' in capsys.readouterr().out
    second = json.loads((tmp_path / 'second.json').read_text())[0]
    assert not second['built'] and second['engine'] == summary['engine']
    assert len(fast_onnxruntime_kind) == 1


def test_load_only_without_an_engine_exits_4(tmp_path, capsys, fast_onnxruntime_kind):
    code = main([*ORT_ARGS, '--engine-cache', str(tmp_path), '--policy', 'load_only'])
    assert code == 4
    assert 'm2a-build-engine --backend onnxruntime' in capsys.readouterr().err
    assert not fast_onnxruntime_kind


def test_argument_errors_exit_2(capsys):
    assert main(['--backend', 'onnxruntime', '--precision', 'fp32', '--device', 'cpu']) == 2
    assert '--checkpoint' in capsys.readouterr().err
    assert (
        main(
            [
                '--model-config',
                'tiny',
                '--random-weights',
                '--backend',
                'onnxruntime',
                '--device',
                'cpu',
            ]
        )
        == 2
    )
    assert 'supports precisions' in capsys.readouterr().err


def test_prebuilt_engine_is_never_used_for_other_weights(
    tmp_path, tiny_model, fast_onnxruntime_kind
):
    checkpoint = save_checkpoint(tmp_path / 'a.safetensors', tiny_model.state_dict(), _config())
    provisioned = provision_from_checkpoint(
        checkpoint,
        backend='onnxruntime',
        precision='fp32',
        size=TINY_SIZE,
        device='cpu',
        cache_dir=tmp_path / 'cache',
        gate_images=_images(),
    )
    assert provisioned.built and provisioned.gate.passed
    engine = provisioned.paths.engine
    states = []
    reopened = open_prebuilt_engine(
        engine, checkpoint, device='cpu', on_state=lambda s, d: states.append(s)
    )
    assert not reopened.built and states == ['checking', 'loading', 'ready']

    other = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    other['sem_seg_head.predictor.class_embed.bias'] += 1.0
    other_checkpoint = save_checkpoint(tmp_path / 'b.safetensors', other, _config())
    with pytest.raises(EngineStaleError, match='weights_sha256'):
        open_prebuilt_engine(engine, other_checkpoint, device='cpu')
    # Sidecar gone: the engine's provenance is unknown, so it is refused.
    Path(str(engine) + '.json').unlink()
    with pytest.raises(Exception, match='cannot be checked'):
        open_prebuilt_engine(engine, checkpoint, device='cpu')


def test_the_loader_finds_the_build_engine_cache_entry_by_its_key(
    tmp_path, tiny_model, capsys, fast_onnxruntime_kind
):
    """`BackendSpec.engine_cache` (what m2a-bench uses): the engine m2a-build-engine keyed into
    the folder is the one loaded, through the same sidecar check; other weights have no entry."""
    from m2a_perception.deploy.cache import sha256_file
    from m2a_perception.runtime.loader import BackendError, BackendSpec, load_backend

    checkpoint = save_checkpoint(tmp_path / 'a.safetensors', tiny_model.state_dict(), _config())
    cache = tmp_path / 'cache'
    args = ['--checkpoint', str(checkpoint), '--backend', 'onnxruntime', '--precision', 'fp32']
    args += ['--size', SIZE_ARG, '--device', 'cpu', '--engine-cache', str(cache)]
    assert main([*args, '--json', str(tmp_path / 'built.json')]) == 0
    built = json.loads((tmp_path / 'built.json').read_text())[0]
    spec = BackendSpec(
        kind='onnxruntime',
        checkpoint=str(checkpoint),
        engine_cache=str(cache),
        engine_size=TINY_SIZE,
    )
    loaded = load_backend(spec)
    assert loaded.engine_file == built['engine'] and not loaded.built
    assert loaded.describe()['engine'] == built['engine']
    assert loaded.sidecar['key']['weights_sha256'] == sha256_file(checkpoint)
    assert len(fast_onnxruntime_kind) == 1

    other = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    other['sem_seg_head.predictor.class_embed.bias'] += 1.0
    other_checkpoint = save_checkpoint(tmp_path / 'b.safetensors', other, _config())
    other_spec = BackendSpec(
        kind='onnxruntime',
        checkpoint=str(other_checkpoint),
        engine_cache=str(cache),
        engine_size=TINY_SIZE,
    )
    with pytest.raises(BackendError, match='weights_sha256') as refused:
        load_backend(other_spec)
    assert f'in {cache} refused' in str(refused.value)
    assert len(fast_onnxruntime_kind) == 1


def _config():
    from m2a_perception.config import load_model_config

    return load_model_config('tiny')


def _images():
    from m2a_perception.deploy.gate import synthetic_gate_images

    return synthetic_gate_images(TINY_SIZE, count=1)


def test_progress_printer_reports_each_state():
    lines = []
    printer = ProgressPrinter('tensorrt fp16 512x1024', lines.append)
    printer('building', 'tensorrt fp16-islands-v1')
    printer('ready', '/cache/x.ep')
    assert 'building: tensorrt fp16-islands-v1 (this takes minutes' in lines[0]
    assert lines[1].endswith('tensorrt fp16 512x1024 ready: /cache/x.ep')


def test_fp32_onnx_file_cannot_make_an_fp16_engine(tmp_path, tiny_onnx):
    assert not onnx_has_low_precision(tiny_onnx)
    with pytest.raises(ValueError, match='computes entirely in FP32'):
        build_module._check_onnx_precision(tiny_onnx, FP16)
    cast = helper.make_node('Cast', ['x'], ['y'], to=TensorProto.FLOAT16)
    graph = helper.make_graph(
        [cast],
        'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT16, [1])],
    )
    path = tmp_path / 'cast.onnx'
    onnx.save(helper.make_model(graph), str(path))
    assert onnx_has_low_precision(path)


def test_compile_kwargs_follow_the_installed_torch_tensorrt():
    settings = {'use_explicit_typing': True, 'disable_tf32': True, 'attn_bias_is_causal': False}

    def compile_28(program, *, arg_inputs=None, use_explicit_typing=False, disable_tf32=False):
        """torch-tensorrt 2.8: no attn_bias_is_causal."""

    def compile_213(program, *, arg_inputs=None, disable_tf32=False, attn_bias_is_causal=True):
        """torch-tensorrt 2.13: strong typing only, use_explicit_typing removed."""

    kwargs, dropped = torch_tensorrt_compile_kwargs(compile_28, settings, '2.8.0')
    assert kwargs == {'use_explicit_typing': True, 'disable_tf32': True}
    assert dropped == ['attn_bias_is_causal']
    kwargs, dropped = torch_tensorrt_compile_kwargs(compile_213, settings, '2.13.0+cu130')
    assert kwargs == {'disable_tf32': True, 'attn_bias_is_causal': False}
    assert dropped == ['use_explicit_typing']
    with pytest.raises(BackendUnavailableError, match='strongly typed'):
        torch_tensorrt_compile_kwargs(compile_213, settings, '2.5.1')


@pytest.mark.parametrize('backend_class', [TensorRTBackend, OnnxTensorRTBackend])
def test_engine_backends_refuse_engines_without_a_sidecar(tmp_path, backend_class):
    engine = tmp_path / 'model.engine'
    engine.write_bytes(b'engine')
    with pytest.raises(EngineCorruptError, match='has no sidecar'):
        backend_class(engine, 'cuda')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the CPU-only error path')
def test_engine_backends_need_cuda(tmp_path):
    from .test_cache import make_key

    engine = tmp_path / 'model.ep'
    engine.write_bytes(b'engine')
    write_json_atomic(
        Path(str(engine) + '.json'), {'sidecar_schema': 1, 'key': make_key().as_dict()}
    )
    with pytest.raises(BackendUnavailableError, match='CUDA'):
        TensorRTBackend(engine, 'cuda')


def test_deploy_package_imports_without_tensorrt():
    for name in list(sys.modules):
        if name.startswith(('tensorrt', 'torch_tensorrt')):
            pytest.skip('TensorRT is imported in this process already')
    import m2a_perception.cli.bench
    import m2a_perception.deploy.build  # noqa: F401

    assert not any(name.startswith(('tensorrt', 'torch_tensorrt')) for name in sys.modules)
