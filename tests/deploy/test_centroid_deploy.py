"""`instance_head: centroid` on the deploy path: torch.export, ONNX in onnxruntime, the static
TensorRT op check, and the default graph left exactly as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from m2a_perception.config import InstanceHeadConfig
from m2a_perception.deploy.precision import FP16, apply_precision
from m2a_perception.deploy.tensorrt_ops import check_onnx_for_targets, load_support_matrix
from m2a_perception.export import export_onnx, export_program
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend
from m2a_perception.model import build_model
from m2a_perception.types import InstanceNetworkOutput

SIZE = (64, 64)


@pytest.fixture(scope='module')
def centroid_micro_config(micro_config):
    # The gather sampler, as every deploy graph (GridSample is forbidden from TensorRT 10.14 on).
    pixel_decoder = dataclasses.replace(micro_config.pixel_decoder, deform_sampling='gather')
    return dataclasses.replace(
        micro_config,
        name='micro_centroid',
        pixel_decoder=pixel_decoder,
        instance_head=InstanceHeadConfig(kind='centroid'),
    )


@pytest.fixture
def centroid_model(centroid_micro_config):
    torch.manual_seed(0)
    return build_model(centroid_micro_config).eval()


def _images(seed: int) -> torch.Tensor:
    return torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def _onnx_outputs(path) -> list[str]:
    import onnx

    return [output.name for output in onnx.load(str(path)).graph.output]


def test_centroid_model_exports_strictly_with_three_outputs(centroid_model):
    program = export_program(centroid_model, SIZE)
    assert not program.range_constraints
    assert len(program.graph_signature.output_specs) == 3
    exported = program.module()
    for seed in (1, 2):
        with torch.no_grad():
            expected = centroid_model(_images(seed))
        actual = exported(_images(seed))
        assert type(actual) is InstanceNetworkOutput
        for out, ref in zip(actual, expected, strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_centroid_onnx_matches_eager_in_onnxruntime_and_fits_tensorrt(centroid_model, tmp_path):
    path = export_onnx(centroid_model, tmp_path / 'centroid.onnx', SIZE)
    assert _onnx_outputs(path) == ['class_logits', 'mask_logits', 'instance_embedding']
    backend = OnnxRuntimeBackend(path)
    for seed in (1, 2):
        with torch.no_grad():
            expected = centroid_model(_images(seed))
        actual = backend(_images(seed))
        assert type(actual) is InstanceNetworkOutput
        assert tuple(actual.instance_embedding.shape) == (1, 16, SIZE[0] // 4, SIZE[1] // 4)
        for out, ref in zip(actual, expected, strict=True):
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= 1e-4
    assert check_onnx_for_targets(path) == {name: [] for name in load_support_matrix()}


def test_fp16_plan_keeps_the_instance_head_fp32(centroid_model):
    """The FP16 recipe has a rule for the head (an FP32 island, like `mask_features`); the
    FP16 graph's export and op check are left to the GPU runs (about 20 s on this CPU)."""
    converted = apply_precision(centroid_model, FP16)
    head = converted.sem_seg_head.instance_head
    assert all(p.dtype == torch.float32 for p in head.parameters())
    assert converted.sem_seg_head.predictor.class_embed.weight.dtype == torch.float32
