"""Accuracy gate driven by real backends on CPU: eager torch against onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.deploy.cache import (
    BUILD_IF_MISSING,
    LOAD_ONLY,
    EngineCache,
    make_engine_key,
    probe_toolchain,
    sha256_file,
)
from m2a_perception.deploy.gate import (
    GateFailedError,
    GateResult,
    GateThresholds,
    backend_input,
    enforce_gate,
    load_gate_set,
    run_gate,
    synthetic_gate_images,
)
from m2a_perception.deploy.precision import FP32, build_inference_graph
from m2a_perception.deploy.tensorrt_backend import GraphBackend
from m2a_perception.inference import TorchBackend
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.preprocess import normalize_and_pad
from m2a_perception.types import NetworkOutput

from .conftest import TINY_SIZE


class PerturbedBackend:
    """A backend that gets the classes wrong: noise on the class logits of a real backend."""

    name = 'perturbed-onnxruntime'
    device = torch.device('cpu')

    def __init__(self, inner, class_noise: float = 3.0, mask_noise: float = 0.0) -> None:
        self.inner = inner
        self.class_noise = class_noise
        self.mask_noise = mask_noise

    def __call__(self, images):
        class_logits, mask_logits = self.inner(images)
        generator = torch.Generator().manual_seed(0)
        class_logits = class_logits + self.class_noise * torch.randn(
            class_logits.shape, generator=generator
        )
        mask_logits = mask_logits + self.mask_noise * torch.randn(
            mask_logits.shape, generator=generator
        )
        return NetworkOutput(class_logits, mask_logits)


class NaNBackend(PerturbedBackend):
    name = 'nan'

    def __call__(self, images):
        class_logits, mask_logits = self.inner(images)
        mask_logits = mask_logits.clone()
        mask_logits[..., 0, 0] = float('nan')
        return NetworkOutput(class_logits, mask_logits)


@pytest.fixture
def pair(tiny_model, tiny_onnx):
    return TorchBackend(tiny_model), OnnxRuntimeBackend(tiny_onnx)


@pytest.fixture(scope='module')
def images():
    return synthetic_gate_images(TINY_SIZE, count=3)


@pytest.fixture(scope='module')
def labels():
    labels = torch.zeros(3, *TINY_SIZE, dtype=torch.uint8)
    labels[:, 20:44, 30:70] = 1
    labels[:, :4] = 255
    return labels


def _gate(pair, images, tiny_config, candidate=None, **kwargs):
    reference, ort = pair
    preprocess = tiny_config.preprocess
    return run_gate(
        reference,
        candidate or ort,
        images,
        preprocess.pixel_mean,
        preprocess.pixel_std,
        **kwargs,
    )


def test_synthetic_gate_images_are_fixed_uint8_rgb():
    first = synthetic_gate_images((64, 96), count=2, seed=0)
    assert first.shape == (2, 3, 64, 96) and first.dtype == torch.uint8
    assert torch.equal(first, synthetic_gate_images((64, 96), count=2, seed=0))
    assert not torch.equal(first[0], first[1])
    assert int(first.max()) > 150 and int(first.min()) < 100


def test_backend_input_matches_the_preprocessing(tiny_config, images):
    preprocess = tiny_config.preprocess
    reference = normalize_and_pad(images[:1], preprocess.pixel_mean, preprocess.pixel_std, 32)
    normalized = backend_input(object(), images[:1], preprocess.pixel_mean, preprocess.pixel_std)
    assert torch.equal(normalized, reference)
    valid = (50, 100)
    cropped = normalize_and_pad(
        images[:1, :, :50, :100], preprocess.pixel_mean, preprocess.pixel_std, 32
    )
    padded = backend_input(
        object(), images[:1], preprocess.pixel_mean, preprocess.pixel_std, valid_size=valid
    )
    assert torch.equal(padded, cropped)


def test_onnxruntime_passes_the_gate_against_eager_torch(pair, images, labels, tiny_config):
    result = _gate(pair, images, tiny_config, labels=labels)
    assert result.passed and result.accepted and not result.failures
    assert result.reference == 'torch' and result.candidate == 'onnxruntime'
    assert result.num_images == 3 and result.input_shape == (1, 3, *TINY_SIZE)
    assert result.argmax_agreement == 1.0 and result.worst_image_agreement == 1.0
    assert result.anomaly_max_abs < 1e-4 and result.anomaly_mean_abs <= result.anomaly_max_abs
    assert result.class_logits_max_abs < 1e-4 and result.non_finite == 0
    assert 0.0 < result.auprc_reference <= 1.0
    assert abs(result.auprc_delta_points) < 0.01
    assert result.fpr95_delta_points is not None
    assert 'PASSED' in result.summary()
    restored = GateResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert restored == result
    assert enforce_gate(result) is result


def test_perturbed_backend_fails_the_gate(pair, images, tiny_config):
    result = _gate(pair, images, tiny_config, candidate=PerturbedBackend(pair[1]))
    assert not result.passed and not result.accepted
    assert result.argmax_agreement < 0.995
    assert any('argmax agreement' in failure for failure in result.failures)
    with pytest.raises(GateFailedError, match='refused') as raised:
        enforce_gate(result)
    assert raised.value.result is result


def test_failed_gate_can_only_be_overridden_explicitly(pair, images, tiny_config):
    result = _gate(pair, images, tiny_config, candidate=PerturbedBackend(pair[1]))
    overridden = enforce_gate(result, allow_failure=True)
    assert overridden.overridden and overridden.accepted and not overridden.passed
    assert 'FAILED (overridden)' in overridden.summary()
    assert overridden.as_dict()['accepted'] is True


def test_auprc_criterion(pair, images, labels, tiny_config):
    candidate = PerturbedBackend(pair[1], class_noise=0.0, mask_noise=2.0)
    loose = _gate(
        pair,
        images,
        tiny_config,
        candidate=candidate,
        labels=labels,
        thresholds=GateThresholds(min_argmax_agreement=0.0, max_auprc_delta_points=100.0),
    )
    assert loose.passed and loose.auprc_delta_points != 0.0
    tight = _gate(
        pair,
        images,
        tiny_config,
        candidate=candidate,
        labels=labels,
        thresholds=GateThresholds(
            min_argmax_agreement=0.0, max_auprc_delta_points=abs(loose.auprc_delta_points) / 2
        ),
    )
    assert not tight.passed
    assert any('AuPRC' in failure for failure in tight.failures)


def test_optional_anomaly_bound(pair, images, tiny_config):
    candidate = PerturbedBackend(pair[1], class_noise=0.0, mask_noise=0.5)
    result = _gate(
        pair,
        images,
        tiny_config,
        candidate=candidate,
        thresholds=GateThresholds(min_argmax_agreement=0.0, max_anomaly_abs_diff=1e-6),
    )
    assert not result.passed and 'anomaly map max-abs' in result.failures[0]


def test_non_finite_outputs_fail_the_gate(pair, images, tiny_config):
    result = _gate(pair, images, tiny_config, candidate=NaNBackend(pair[1]))
    assert not result.passed
    assert result.non_finite == 3 * tiny_config.transformer_decoder.num_queries
    assert 'NaN/Inf' in result.failures[0]


def test_uint8_graph_backend_with_padding_matches_the_reference(
    pair, images, tiny_config, tiny_model
):
    preprocess = tiny_config.preprocess
    valid = (50, 100)
    graph = build_inference_graph(
        tiny_model, FP32, preprocess.pixel_mean, preprocess.pixel_std, valid
    )
    backend = GraphBackend(
        graph, 'cpu', (1, 3, *TINY_SIZE), preprocess.pixel_mean, preprocess.pixel_std, 'graph'
    )
    result = _gate(pair, images, tiny_config, candidate=backend, valid_size=valid)
    assert result.passed
    assert result.anomaly_max_abs == 0.0 and result.class_logits_max_abs == 0.0


def test_gate_set_from_folders(tmp_path):
    image_dir, label_dir = tmp_path / 'images', tmp_path / 'labels'
    image_dir.mkdir()
    label_dir.mkdir()
    for index in range(2):
        rgb = np.full((40, 80, 3), 30 * index, dtype=np.uint8)
        Image.fromarray(rgb).save(image_dir / f'frame{index}.png')
        label = np.zeros((40, 80), dtype=np.uint8)
        label[10:20, 10:20] = 1
        Image.fromarray(label).save(label_dir / f'frame{index}.png')
    images, labels = load_gate_set(image_dir, label_dir, (64, 128), (60, 120))
    assert images.shape == (2, 3, 64, 128) and images.dtype == torch.uint8
    assert labels.shape == (2, 60, 120)
    assert int(images[1, :, :60, :120].min()) == 30 and int(images[1, :, 60:].max()) == 0
    assert set(labels.unique().tolist()) == {0, 1}
    (label_dir / 'frame1.png').unlink()
    with pytest.raises(FileNotFoundError, match=r'no label for frame1\.png'):
        load_gate_set(image_dir, label_dir, (64, 128))


def test_cache_with_a_real_onnxruntime_engine(tmp_path, pair, images, tiny_config, copy_tiny_onnx):
    """The full build -> gate -> sidecar -> reload path with onnxruntime as the engine."""
    reference, _ = pair
    preprocess = tiny_config.preprocess
    key = make_engine_key(
        backend='onnxruntime',
        model_name='tiny',
        weights_sha256='0' * 64,
        input_shape=(1, 3, *TINY_SIZE),
        input_dtype='float32',
        valid_size=None,
        pixel_mean=preprocess.pixel_mean,
        pixel_std=preprocess.pixel_std,
        precision='fp32-v1',
        builder={'opset': 18},
        toolchain=probe_toolchain('cpu'),
    )

    def gate(candidate):
        return run_gate(reference, candidate, images, preprocess.pixel_mean, preprocess.pixel_std)

    cache = EngineCache(tmp_path)
    kwargs = {'suffix': '.onnx', 'build': copy_tiny_onnx, 'load': OnnxRuntimeBackend, 'gate': gate}
    built = cache.resolve(key, BUILD_IF_MISSING, **kwargs)
    assert built.built and built.engine.name == 'onnxruntime'
    sidecar = json.loads(built.paths.sidecar.read_text())
    assert sidecar['gate']['passed'] and sidecar['gate']['argmax_agreement'] == 1.0
    loaded = cache.resolve(key, LOAD_ONLY, **kwargs)
    assert not loaded.built
    frame = backend_input(loaded.engine, images[:1], preprocess.pixel_mean, preprocess.pixel_std)
    torch.testing.assert_close(
        loaded.engine(frame).class_logits, reference(frame).class_logits, atol=1e-4, rtol=0
    )
    # An ONNX file that onnxruntime cannot load (sidecar checksum updated to match) is corrupt.
    built.paths.engine.write_bytes(b'not onnx')
    data = json.loads(built.paths.sidecar.read_text())
    data['engine'].update(sha256=sha256_file(built.paths.engine), bytes=8)
    built.paths.sidecar.write_text(json.dumps(data))
    rebuilt = cache.resolve(key, BUILD_IF_MISSING, **kwargs)
    assert rebuilt.built and 'failed to load' in rebuilt.messages[0]
