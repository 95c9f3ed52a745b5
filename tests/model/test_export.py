"""Export readiness: strict torch.export without graph breaks, and ONNX through onnxruntime."""

from __future__ import annotations

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.export import example_input, export_onnx, export_program
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.model import build_model
from m2a_perception.types import NetworkOutput

# Inputs other than the export example; random weights put many mask logits near 0, where a
# rounding difference can flip one attention-mask pixel and jump the logits discontinuously.
PARITY_SEEDS = (1, 2, 3)


def _inputs(size: tuple[int, int]) -> list[torch.Tensor]:
    return [
        torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(s)) for s in PARITY_SEEDS
    ]


def _assert_export_matches_eager(model: torch.nn.Module, size: tuple[int, int]) -> None:
    program = export_program(model, size)
    exported = program.module()
    for images in _inputs(size):
        with torch.no_grad():
            expected = model(images)
        actual = exported(images)
        # The NamedTuple survives export: the program's module returns the same typed output.
        assert type(actual) is NetworkOutput
        for name in NetworkOutput._fields:
            torch.testing.assert_close(
                getattr(actual, name), getattr(expected, name), rtol=0, atol=1e-6
            )


def _assert_onnx_matches_eager(model: torch.nn.Module, size: tuple[int, int], tmp_path) -> None:
    path = export_onnx(model, tmp_path / 'model.onnx', size)
    backend = OnnxRuntimeBackend(path)
    # The graph's outputs are named after the fields (what the TensorRT engine binds).
    assert backend.input_name == 'images'
    assert backend.output_names == ['class_logits', 'mask_logits']
    for images in _inputs(size):
        with torch.no_grad():
            expected = model(images)
        actual = backend(images)
        assert type(actual) is NetworkOutput
        for name in NetworkOutput._fields:
            out, ref = getattr(actual, name), getattr(expected, name)
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= 1e-4


def test_strict_torch_export_matches_eager_tiny(tiny_model):
    _assert_export_matches_eager(tiny_model, (128, 256))


def test_exported_graph_has_no_data_dependent_shapes(tiny_model):
    program = export_program(tiny_model, (128, 256))
    # Data-dependent sizes would appear as unbacked symbols (u0, u1, ...) in the graph.
    assert not program.range_constraints
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    data_dependent = {
        'aten.nonzero.default',
        'aten.item.default',
        'aten._local_scalar_dense.default',
    }
    assert not targets & data_dependent


def test_onnx_runs_in_onnxruntime_and_matches_eager_tiny(tiny_model, tmp_path):
    _assert_onnx_matches_eager(tiny_model, (128, 256), tmp_path)


def test_onnx_backend_rejects_a_different_input_shape(tiny_model, tmp_path):
    backend = OnnxRuntimeBackend(export_onnx(tiny_model, tmp_path / 'm.onnx', (64, 64)))
    with pytest.raises(ValueError, match='exported for input'):
        backend(torch.zeros(1, 3, 64, 96))


def test_export_size_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match='multiple of 32'):
        example_input((500, 1000))


@pytest.fixture(scope='module')
def full_model():
    torch.manual_seed(0)
    return build_model(load_model_config('cityscapes_r50_gma')).eval()


@pytest.mark.slow
def test_strict_torch_export_matches_eager_full_512x1024(full_model):
    _assert_export_matches_eager(full_model, (512, 1024))


@pytest.mark.slow
def test_onnx_matches_eager_full_512x1024(full_model, tmp_path):
    """Full model: the attention masks threshold sigmoid(mask logits) at exactly 0.5, and with
    100 random-weight queries over ~10^4 pixels per level some logits sit within float32 rounding
    of 0. Where onnxruntime and eager round differently the mask flips and the following layers
    change by up to ~1e-3 (measured: 1.1e-4, 9.6e-4, 1.2e-4 max-abs on seeds 1-3). A strict
    1e-4 max-abs cannot hold for every input, so this test checks what the discontinuity leaves
    intact: the outputs the vehicle uses (TensorRT-gate style) and a 2e-3 bound on the logits.
    """
    from m2a_perception.postprocess import compute_anomaly_score, compute_class_scores

    path = export_onnx(full_model, tmp_path / 'model.onnx', (512, 1024))
    backend = OnnxRuntimeBackend(path)
    for images in _inputs((512, 1024)):
        with torch.no_grad():
            expected = full_model(images)
        actual = backend(images)
        diffs = [
            (getattr(actual, name) - getattr(expected, name)).abs().max().item()
            for name in NetworkOutput._fields
        ]
        assert max(diffs) <= 2e-3
        maps = []
        for outputs in (expected, actual):
            class_probs = outputs.class_logits[0].softmax(-1)
            mask_probs = outputs.mask_logits[0].sigmoid()
            scores = compute_class_scores(class_probs, mask_probs)
            anomaly = compute_anomaly_score('mask2anomaly', scores, class_probs, mask_probs)
            maps.append((scores.argmax(0), anomaly))
        agreement = (maps[0][0] == maps[1][0]).float().mean().item()
        assert agreement >= 0.999
        assert (maps[0][1] - maps[1][1]).abs().mean().item() <= 1e-4
