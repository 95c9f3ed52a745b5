"""Hand-built logits with known answers for the post-processing tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.preprocess import PreprocessRecord
from m2a_perception.types import SegmentationOutput

NUM_CLASSES = 19
NO_OBJECT = NUM_CLASSES
# sigmoid(12) = 0.999994 and softmax with a 20-logit margin is 1 - 4e-8: "certain" in practice.
STRONG = 12.0
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 8, 10, 11, 13


def confident(class_id: int, margin: float = 20.0) -> torch.Tensor:
    """(K+1,) class logits with probability ~1 for `class_id` (no object is K)."""
    logits = torch.zeros(NUM_CLASSES + 1)
    logits[class_id] = margin
    return logits


def with_probability(class_id: int, probability: float) -> torch.Tensor:
    """(K+1,) logits giving `class_id` exactly `probability`, the rest shared evenly."""
    logits = torch.zeros(NUM_CLASSES + 1)
    logits[class_id] = math.log(probability * NUM_CLASSES / (1.0 - probability))
    return logits


def spread() -> torch.Tensor:
    """(K+1,) logits with equal probability 1/(K+1) for every class and no object."""
    return torch.zeros(NUM_CLASSES + 1)


def mask_logit(mask: np.ndarray, inside: float = STRONG, outside: float = -STRONG) -> torch.Tensor:
    """(h, w) mask logits: `inside` where `mask` is True, `outside` elsewhere."""
    return torch.where(torch.from_numpy(mask), inside, outside).to(torch.float32)


def box_mask(size: tuple[int, int], top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """(h, w) bool, True in rows top..bottom-1 and columns left..right-1."""
    mask = np.zeros(size, dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def stack_queries(
    queries: Sequence[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(class logits, mask logits) pairs -> (Q, K+1) and (Q, h, w); empty queries if none."""
    if not queries:
        return torch.zeros(0, NUM_CLASSES + 1), torch.zeros(0, *size)
    class_logits = torch.stack([c for c, _ in queries])
    mask_logits = torch.stack([m for _, m in queries])
    return class_logits, mask_logits


def identity_record(size: tuple[int, int]) -> PreprocessRecord:
    """A record under which mask-resolution maps are already the output (no resize, no pad)."""
    return PreprocessRecord(source_size=size, resized_size=size, padded_size=size)


def quiet_config(**overrides: object) -> PostprocessConfig:
    """Defaults with mining off, so known-class tests see only known segments."""
    values: dict[str, object] = {'mining': False}
    values.update(overrides)
    return PostprocessConfig(**values)  # type: ignore[arg-type]


def check_segments_match_map(output: SegmentationOutput) -> None:
    """Assert that the id map and the segment list agree in ids, areas and source boxes."""
    assert output.panoptic is not None
    ids = output.panoptic.cpu().numpy()
    height, width = output.output_size
    source_h, source_w = output.source_size
    present = sorted(int(v) for v in np.unique(ids) if v != 0)
    assert present == [s.id for s in output.segments]
    assert [s.id for s in output.segments] == list(range(1, len(output.segments) + 1))
    for segment in output.segments:
        pixels = ids == segment.id
        assert segment.area == int(pixels.sum())
        rows, cols = np.nonzero(pixels)
        box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        if (height, width) == (source_h, source_w):
            assert segment.bbox == tuple(int(v) for v in box)
        else:
            sx, sy = source_w / width, source_h / height
            expected = (
                math.floor(box[0] * sx),
                math.floor(box[1] * sy),
                min(source_w, math.ceil(box[2] * sx)),
                min(source_h, math.ceil(box[3] * sy)),
            )
            assert segment.bbox == expected
        anomaly = output.anomaly_map.cpu().numpy()[pixels]
        assert abs(segment.anomaly_score_mean - float(anomaly.astype(np.float64).mean())) < 1e-5
        assert abs(segment.anomaly_score_max - float(anomaly.max())) < 1e-6
