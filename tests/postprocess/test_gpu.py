"""CPU and CUDA post-processing agree on the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.postprocess import PostprocessConfig, postprocess
from m2a_perception.preprocess import PreprocessRecord
from tests.postprocess.postprocess_builders import (
    CAR,
    ROAD,
    box_mask,
    confident,
    mask_logit,
    stack_queries,
)

SIZE = (32, 64)


def _logits() -> tuple[torch.Tensor, torch.Tensor]:
    """A structured scene (road, car, an unknown blob) plus noise and random extra queries."""
    generator = torch.Generator().manual_seed(0)
    blob = box_mask(SIZE, 20, 40, 28, 52)
    car = box_mask(SIZE, 18, 8, 28, 20)
    road = ~(blob | car)
    thing_like = torch.zeros(20)
    thing_like[CAR], thing_like[19] = 4.0, 6.0
    structured = stack_queries(
        [
            (confident(ROAD), mask_logit(road)),
            (confident(CAR), mask_logit(car)),
            (thing_like, mask_logit(blob)),
        ],
        SIZE,
    )
    noise = torch.randn(20, *SIZE, generator=generator) * 3.0 - 6.0
    extra_classes = torch.randn(20, 20, generator=generator) * 2.0
    class_logits = torch.cat([structured[0], extra_classes])
    mask_logits = torch.cat([structured[1] + torch.randn(3, *SIZE, generator=generator), noise])
    return class_logits, mask_logits


@pytest.mark.gpu
@pytest.mark.parametrize(
    'overrides',
    [
        {},
        {'scf': True, 'mining_split': 'query_regions', 'label_upsampling': 'bilinear'},
        {'scorer': 'rba', 'refinement': 'paper', 'mining_cc_backend': 'iterative'},
    ],
)
def test_cpu_and_cuda_give_the_same_outputs(overrides):
    class_logits, mask_logits = _logits()
    record = PreprocessRecord(
        source_size=(100, 230), resized_size=(120, 250), padded_size=(128, 256)
    )
    config = PostprocessConfig(**overrides)
    on_cpu = postprocess(class_logits, mask_logits, record, config)
    on_cuda = postprocess(class_logits.cuda(), mask_logits.cuda(), record, config)
    assert on_cuda.anomaly_map.is_cuda
    on_cuda = on_cuda.cpu()
    torch.testing.assert_close(on_cuda.anomaly_map, on_cpu.anomaly_map, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(on_cuda.confidence, on_cpu.confidence, atol=1e-5, rtol=1e-5)
    # Labels may only differ where two classes tie within float rounding; require near-equality.
    assert (on_cuda.semantic != on_cpu.semantic).float().mean() < 1e-3
    np.testing.assert_array_equal(on_cuda.panoptic.numpy(), on_cpu.panoptic.numpy())
    assert [s.id for s in on_cuda.segments] == [s.id for s in on_cpu.segments]
    for gpu_segment, cpu_segment in zip(on_cuda.segments, on_cpu.segments, strict=True):
        assert (gpu_segment.kind, gpu_segment.class_id, gpu_segment.area, gpu_segment.bbox) == (
            cpu_segment.kind,
            cpu_segment.class_id,
            cpu_segment.area,
            cpu_segment.bbox,
        )
        assert gpu_segment.class_score == pytest.approx(cpu_segment.class_score, abs=1e-5)
        assert gpu_segment.anomaly_score_mean == pytest.approx(
            cpu_segment.anomaly_score_mean, abs=1e-5
        )
