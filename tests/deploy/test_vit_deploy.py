"""DINOv2 backbone on the deploy path: ONNX in onnxruntime, the TensorRT op check, FP16 gate."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model

from .deploy_checks import (
    assert_graph_passes_the_gate,
    assert_passes_every_tensorrt_target,
    export_onnx_matching_eager,
    fp16_graph,
    onnx_op_types,
)

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
    path = export_onnx_matching_eager(model, tmp_path / 'vit.onnx', SIZE, seeds=(1,))
    op_types = onnx_op_types(path)
    assert 'ConvTranspose' not in op_types and 'Resize' in op_types  # 1/14 -> 1/16 (linear)
    assert_passes_every_tensorrt_target(path)


def test_vit_fp16_graph_keeps_the_backbone_fp32_and_passes_the_gate(vit_micro_model):
    model, config = vit_micro_model
    graph = fp16_graph(model, config)
    assert all(p.dtype == torch.float32 for p in graph.network.backbone.parameters())
    assert graph.network.sem_seg_head.pixel_decoder.input_proj[0][0].weight.dtype == torch.float16
    assert_graph_passes_the_gate(model, graph, config, SIZE)
