"""TensorRT engines on a GPU: gate, cache reuse and the ONNX route. Marker `gpu`.

These need CUDA plus TensorRT (and torch-tensorrt for the `tensorrt` backend); they skip loudly
elsewhere. With `M2A_TEST_CHECKPOINT` set they use that checkpoint; otherwise the seed-0 tiny
model, which exercises the whole path but says little about accuracy on real weights.
"""

from __future__ import annotations

import os
import time

import pytest
import torch

from m2a_perception.deploy.build import provision_engine, provision_from_checkpoint
from m2a_perception.deploy.cache import LOAD_ONLY, sha256_state_dict

pytestmark = pytest.mark.gpu

SIZE = (128, 256)


def _require(module: str) -> None:
    try:
        __import__(module)
    except Exception as error:  # a broken TensorRT install raises more than ImportError
        pytest.skip(f'GPU TEST SKIPPED: {module} cannot be imported ({error})')


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('engines')


def _provision(cache_dir, tiny_config, **kwargs):
    checkpoint = os.environ.get('M2A_TEST_CHECKPOINT')
    common = {'size': SIZE, 'device': 'cuda', 'cache_dir': cache_dir, **kwargs}
    if checkpoint:
        return provision_from_checkpoint(checkpoint, **common)
    from m2a_perception.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    return provision_engine(
        model, tiny_config, weights_sha256=sha256_state_dict(model.state_dict()), **common
    )


def test_torch_tensorrt_fp16_engine_passes_the_gate_and_is_reused(cache_dir, tiny_config):
    _require('torch_tensorrt')
    built = _provision(cache_dir, tiny_config, backend='tensorrt', precision='fp16')
    assert built.built
    assert built.gate.passed, built.gate.summary()
    assert built.sidecar['gate']['accepted']
    assert built.sidecar['build_info']['precision_report']['ok']
    build_seconds = built.seconds
    del built
    torch.cuda.empty_cache()

    start = time.perf_counter()
    reused = _provision(
        cache_dir, tiny_config, backend='tensorrt', precision='fp16', policy=LOAD_ONLY
    )
    reuse_seconds = time.perf_counter() - start
    assert not reused.built
    assert reused.seconds < 0.1 * build_seconds, (reused.seconds, build_seconds)
    print(
        f'build {build_seconds:.1f} s, cache reuse {reused.seconds:.2f} s ({reuse_seconds:.2f} s)'
    )
    # Normalised float input (what the pipeline passes) gives the same outputs as uint8.
    images = torch.randint(0, 256, (1, 3, *SIZE), dtype=torch.uint8, device='cuda')
    backend = reused.backend
    mean = torch.tensor(tiny_config.preprocess.pixel_mean, device='cuda').view(1, 3, 1, 1)
    std = torch.tensor(tiny_config.preprocess.pixel_std, device='cuda').view(1, 3, 1, 1)
    for a, b in zip(backend(images), backend((images.float() - mean) / std), strict=True):
        assert torch.equal(a, b)


def test_onnx_route_engine_builds_and_passes_the_gate(cache_dir, tiny_config):
    _require('tensorrt')
    built = _provision(cache_dir, tiny_config, backend='tensorrt-onnx', precision='fp16')
    assert built.built and built.gate.passed, built.gate.summary()
    assert built.backend.input_dtype == torch.uint8


def test_onnx_route_builds_an_m2a_export_file_in_fp32(cache_dir, tiny_config, tmp_path):
    _require('tensorrt')
    from m2a_perception.export import export_onnx
    from m2a_perception.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    onnx_path = export_onnx(model, tmp_path / 'm2a.onnx', SIZE)
    built = provision_engine(
        model,
        tiny_config,
        weights_sha256=sha256_state_dict(model.state_dict()),
        backend='tensorrt-onnx',
        precision='fp32',
        size=SIZE,
        device='cuda',
        cache_dir=cache_dir,
        onnx_path=onnx_path,
    )
    assert built.gate.passed, built.gate.summary()
    assert built.backend.input_dtype == torch.float32
