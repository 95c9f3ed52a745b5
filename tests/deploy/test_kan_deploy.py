"""`mask_embed: kan` on the deploy path: torch.export, ONNX, the TensorRT op check, FP16 gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2a_perception.deploy.gate import run_gate, synthetic_gate_images
from m2a_perception.deploy.precision import (
    FP16,
    build_inference_graph,
    export_graph_onnx,
    export_inference_graph,
    inspect_precision,
)
from m2a_perception.deploy.tensorrt_backend import GraphBackend
from m2a_perception.deploy.tensorrt_ops import check_onnx_for_targets, load_support_matrix
from m2a_perception.export import export_onnx, export_program
from m2a_perception.inference import TorchBackend
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.model import build_model
from m2a_perception.model.kan import KAN

SIZE = (64, 64)


@pytest.fixture(scope='module')
def kan_micro_config(micro_config):
    decoder = dataclasses.replace(
        micro_config.transformer_decoder, mask_embed='kan', kan_grid_range=(-3.0, 3.0)
    )
    # The gather sampler, as every deploy graph (GridSample is forbidden from TensorRT 10.14 on).
    pixel_decoder = dataclasses.replace(micro_config.pixel_decoder, deform_sampling='gather')
    return dataclasses.replace(
        micro_config, name='micro_kan', transformer_decoder=decoder, pixel_decoder=pixel_decoder
    )


@pytest.fixture
def kan_model(kan_micro_config):
    torch.manual_seed(0)
    model = build_model(kan_micro_config).eval()
    assert isinstance(model.sem_seg_head.predictor.mask_embed, KAN)
    return model


def _images(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def test_kan_model_exports_strictly_without_data_dependent_ops(kan_model):
    program = export_program(kan_model, SIZE)
    assert not program.range_constraints
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert not targets & {'aten.nonzero.default', 'aten.item.default'}
    exported = program.module()
    for seed in (1, 2):
        with torch.no_grad():
            expected = kan_model(_images(seed))
        for out, ref in zip(exported(_images(seed)), expected, strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def _assert_passes_every_tensorrt_target(path) -> None:
    import onnx

    op_types = {node.op_type for node in onnx.load(str(path)).graph.node}
    # The Cox–de Boor basis: comparisons, a boolean And and a cast, then arithmetic.
    assert {'GreaterOrEqual', 'Less', 'And', 'Cast'} <= op_types
    assert check_onnx_for_targets(path) == {name: [] for name in load_support_matrix()}


def test_kan_onnx_matches_eager_in_onnxruntime_and_fits_tensorrt(kan_model, tmp_path):
    path = export_onnx(kan_model, tmp_path / 'kan.onnx', SIZE)
    backend = OnnxRuntimeBackend(path)
    for seed in (1, 2):
        with torch.no_grad():
            expected = kan_model(_images(seed))
        for out, ref in zip(backend(_images(seed)), expected, strict=True):
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= 1e-4
    _assert_passes_every_tensorrt_target(path)


def test_kan_fp16_deploy_graph_passes_every_tensorrt_target(kan_model, kan_micro_config, tmp_path):
    """The FP16 deploy graph (uint8 in, FP32 islands); the FP32 one adds only the
    normalisation to the graph checked above."""
    preprocess = kan_micro_config.preprocess
    graph = build_inference_graph(kan_model, FP16, preprocess.pixel_mean, preprocess.pixel_std)
    _assert_passes_every_tensorrt_target(
        export_graph_onnx(graph, tmp_path / 'kan-fp16.onnx', (1, 3, *SIZE))
    )


def test_kan_fp16_graph_keeps_the_head_fp32_and_passes_the_gate(kan_model, kan_micro_config):
    preprocess = kan_micro_config.preprocess
    graph = build_inference_graph(kan_model, FP16, preprocess.pixel_mean, preprocess.pixel_std)
    head = graph.network.sem_seg_head.predictor.mask_embed
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert all(b.dtype == torch.float32 for b in head.buffers())
    report = inspect_precision(export_inference_graph(graph, (1, 3, *SIZE)))
    assert report.ok, report.island_violations
    backend = GraphBackend(
        graph, 'cpu', (1, 3, *SIZE), preprocess.pixel_mean, preprocess.pixel_std
    )
    result = run_gate(
        TorchBackend(kan_model),
        backend,
        synthetic_gate_images(SIZE, count=2),
        preprocess.pixel_mean,
        preprocess.pixel_std,
    )
    assert result.passed, result.summary()
    assert 0 < result.class_logits_max_abs < 0.5
