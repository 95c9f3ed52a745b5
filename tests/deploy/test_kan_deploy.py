"""`mask_embed: kan` on the deploy path: torch.export, ONNX, the TensorRT op check, FP16 gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2a_perception.deploy.precision import (
    export_graph_onnx,
    export_inference_graph,
    inspect_precision,
)
from m2a_perception.export import export_program
from m2a_perception.model import build_model
from m2a_perception.model.kan import KAN

from .deploy_checks import (
    assert_graph_passes_the_gate,
    assert_passes_every_tensorrt_target,
    export_onnx_matching_eager,
    fp16_graph,
    onnx_op_types,
    seeded_images,
)

SIZE = (64, 64)
# The Cox–de Boor basis: comparisons, a boolean And and a cast, then arithmetic.
KAN_BASIS_OPS = {'GreaterOrEqual', 'Less', 'And', 'Cast'}


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


@pytest.fixture(scope='module')
def kan_model(kan_micro_config):
    """The seed-0 KAN-head model, shared by the module (exports and graphs leave it alone)."""
    torch.manual_seed(0)
    model = build_model(kan_micro_config).eval()
    assert isinstance(model.sem_seg_head.predictor.mask_embed, KAN)
    return model


@pytest.fixture(scope='module')
def kan_fp16_graph(kan_model, kan_micro_config):
    """The FP16 deploy graph (uint8 in, FP32 islands) of the KAN-head model."""
    return fp16_graph(kan_model, kan_micro_config)


def test_kan_model_exports_strictly_without_data_dependent_ops(kan_model):
    program = export_program(kan_model, SIZE)
    assert not program.range_constraints
    targets = {str(node.target) for node in program.graph.nodes if node.op == 'call_function'}
    assert not targets & {'aten.nonzero.default', 'aten.item.default'}
    exported = program.module()
    for seed in (1, 2):
        with torch.no_grad():
            expected = kan_model(seeded_images(SIZE, seed))
        for out, ref in zip(exported(seeded_images(SIZE, seed)), expected, strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_kan_onnx_matches_eager_in_onnxruntime_and_fits_tensorrt(kan_model, tmp_path):
    path = export_onnx_matching_eager(kan_model, tmp_path / 'kan.onnx', SIZE, seeds=(1, 2))
    assert onnx_op_types(path) >= KAN_BASIS_OPS
    assert_passes_every_tensorrt_target(path)


def test_kan_fp16_deploy_graph_passes_every_tensorrt_target(kan_fp16_graph, tmp_path):
    """The FP16 deploy graph; the FP32 one adds only the normalisation to the graph checked
    above."""
    path = export_graph_onnx(kan_fp16_graph, tmp_path / 'kan-fp16.onnx', (1, 3, *SIZE))
    assert onnx_op_types(path) >= KAN_BASIS_OPS
    assert_passes_every_tensorrt_target(path)


def test_kan_fp16_graph_keeps_the_head_fp32_and_passes_the_gate(
    kan_model, kan_fp16_graph, kan_micro_config
):
    head = kan_fp16_graph.network.sem_seg_head.predictor.mask_embed
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert all(b.dtype == torch.float32 for b in head.buffers())
    report = inspect_precision(export_inference_graph(kan_fp16_graph, (1, 3, *SIZE)))
    assert report.ok, report.island_violations
    result = assert_graph_passes_the_gate(kan_model, kan_fp16_graph, kan_micro_config, SIZE)
    assert 0 < result.class_logits_max_abs < 0.5
