"""DINOv2 backbone on the deploy path: ONNX in onnxruntime, the TensorRT op check, FP16 gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.deploy.gate import run_gate, synthetic_gate_images
from m2a_perception.deploy.precision import FP16, build_inference_graph
from m2a_perception.deploy.tensorrt_backend import GraphBackend
from m2a_perception.deploy.tensorrt_ops import check_onnx_for_targets, load_support_matrix
from m2a_perception.export import export_onnx
from m2a_perception.inference import TorchBackend
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.model import build_model

SIZE = (224, 224)


@pytest.fixture(scope='module')
def vit_micro_model():
    config = load_model_config('tiny_dinov2')
    config = dataclasses.replace(
        config,
        name='micro_dinov2',
        # The gather sampler, as every deploy graph (GridSample is forbidden from TensorRT 10.14).
        pixel_decoder=dataclasses.replace(
            config.pixel_decoder, encoder_layers=1, deform_sampling='gather'
        ),
        transformer_decoder=dataclasses.replace(config.transformer_decoder, num_layers=1),
    )
    torch.manual_seed(0)
    return build_model(config).eval(), config


def test_vit_onnx_matches_eager_and_fits_tensorrt(vit_micro_model, tmp_path):
    model, _ = vit_micro_model
    path = export_onnx(model, tmp_path / 'vit.onnx', SIZE)
    import onnx

    op_types = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert 'ConvTranspose' not in op_types and 'Resize' in op_types  # 1/14 -> 1/16 (linear)
    backend = OnnxRuntimeBackend(path)
    images = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(images)
    for out, ref in zip(backend(images), expected, strict=True):
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-4
    assert check_onnx_for_targets(path) == {name: [] for name in load_support_matrix()}


def test_vit_fp16_graph_keeps_the_backbone_fp32_and_passes_the_gate(vit_micro_model):
    model, config = vit_micro_model
    preprocess = config.preprocess
    graph = build_inference_graph(model, FP16, preprocess.pixel_mean, preprocess.pixel_std)
    assert all(p.dtype == torch.float32 for p in graph.network.backbone.parameters())
    assert graph.network.sem_seg_head.pixel_decoder.input_proj[0][0].weight.dtype == torch.float16
    backend = GraphBackend(
        graph, 'cpu', (1, 3, *SIZE), preprocess.pixel_mean, preprocess.pixel_std
    )
    result = run_gate(
        TorchBackend(model),
        backend,
        synthetic_gate_images(SIZE, count=2),
        preprocess.pixel_mean,
        preprocess.pixel_std,
    )
    assert result.passed, result.summary()
