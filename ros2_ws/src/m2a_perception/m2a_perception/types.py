"""Result types: the network's raw outputs, and the open-set segmentation the node publishes.

Allowed dependencies: standard library, torch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch


class NetworkOutput(NamedTuple):
    """What the network and every inference backend return for a batch (eval mode).

    A NamedTuple, so it flattens in `torch.export` and ONNX: the exported graph's outputs are
    the fields in this order, and their ONNX names are the field names
    (`m2a_perception.export.OUTPUT_NAMES`). A model with the optional instance head returns an
    `InstanceNetworkOutput` instead, with a third output.

    Attributes:
        class_logits: (B, Q, K+1), K known classes plus "no object" last.
        mask_logits: (B, Q, H/4, W/4), per-query mask logits at a quarter of the input size.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor


class InstanceNetworkOutput(NamedTuple):
    """`NetworkOutput` of a model with the optional class-agnostic instance head
    (`ModelConfig.instance_head`, model/instance_head.py): one more graph output, named
    `instance_embedding`. A model without the head returns `NetworkOutput` exactly as before.

    Attributes:
        class_logits: (B, Q, K+1), as in `NetworkOutput`.
        mask_logits: (B, Q, H/4, W/4), as in `NetworkOutput`.
        instance_embedding: (B, 4L, H/4, W/4) per-pixel centroid embeddings
            concat(γ(u), γ(v)) (seed 004 Section 3.3.1).
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    instance_embedding: torch.Tensor


def network_output(*tensors: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
    """The typed eval-mode output from a graph's outputs in order (2, or 3 with the head)."""
    if len(tensors) == 2:
        return NetworkOutput(*tensors)
    if len(tensors) == 3:
        return InstanceNetworkOutput(*tensors)
    raise ValueError(f'a network has 2 or 3 outputs, got {len(tensors)}')


def instance_embedding_of(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor | None:
    """The `instance_embedding` of a model output, or None for a model without the head."""
    return getattr(outputs, 'instance_embedding', None)


class TrainingOutput(NamedTuple):
    """What the network returns in training mode: the final prediction and deep supervision.

    Attributes:
        class_logits: (B, Q, K+1), as in `NetworkOutput`.
        mask_logits: (B, Q, H/4, W/4), as in `NetworkOutput`.
        aux_class_logits: (L, B, Q, K+1), the predictions of the learned queries alone and after
            decoder layers 1..L-1 (L decoder layers).
        aux_mask_logits: (L, B, Q, H/4, W/4), the matching mask logits.
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    aux_class_logits: torch.Tensor
    aux_mask_logits: torch.Tensor


class InstanceTrainingOutput(NamedTuple):
    """`TrainingOutput` of a model with the instance head; `instance_embedding` (B, 4L, H/4, W/4)
    as in `InstanceNetworkOutput` (the final prediction only: the head has no deep supervision).
    """

    class_logits: torch.Tensor
    mask_logits: torch.Tensor
    aux_class_logits: torch.Tensor
    aux_mask_logits: torch.Tensor
    instance_embedding: torch.Tensor


class SegmentKind(str, enum.Enum):
    """What a panoptic segment is; values match the ROS `OpenSetSegment.kind` names."""

    STUFF = 'stuff'
    THING = 'thing'
    UNKNOWN_THING = 'unknown_thing'


@dataclass(frozen=True)
class Segment:
    """One panoptic segment: a known stuff region, a known thing instance, or an unknown object.

    Attributes:
        id: value of this segment in `SegmentationOutput.panoptic` (1..65535; 0 = no segment).
        kind: stuff, thing or unknown thing.
        class_id: known train id (0..K-1), or the unknown id K for unknown things
            (`m2a_perception.classes.UNKNOWN_ID` for Cityscapes).
        class_score: for known segments the mask-classification probability of `class_id` (the
            highest over the queries merged into a stuff segment); for unknown things the mean
            of the mining map (Eq. 15 background score, or the anomaly score) over the instance's
            pixels at mask resolution. In [0, 1].
        anomaly_score_mean: mean of `SegmentationOutput.anomaly_map` over the segment's pixels.
        anomaly_score_max: max of `SegmentationOutput.anomaly_map` over the segment's pixels.
        area: number of pixels with this id in `SegmentationOutput.panoptic` (output resolution).
        bbox: tight box (x_min, y_min, x_max, y_max) in source-image pixels, max exclusive
            (width = x_max - x_min). Equal to the id map's box when the output resolution is the
            source resolution; otherwise the id map's box scaled outwards to source pixels.
    """

    id: int
    kind: SegmentKind
    class_id: int
    class_score: float
    anomaly_score_mean: float
    anomaly_score_max: float
    area: int
    bbox: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready mapping (kind as its string value)."""
        return {
            'id': self.id,
            'kind': self.kind.value,
            'class_id': self.class_id,
            'class_score': self.class_score,
            'anomaly_score_mean': self.anomaly_score_mean,
            'anomaly_score_max': self.anomaly_score_max,
            'area': self.area,
            'bbox': list(self.bbox),
        }


@dataclass(frozen=True)
class SegmentationOutput:
    """Open-set segmentation of one image.

    All maps share the output resolution (H, W) = `output_size`: the source image size, or the
    resized network input size without padding (`PostprocessConfig.output_resolution`). Maps live
    on the device the logits were on; call `cpu()` (or `.cpu().numpy()` on one map) to copy only
    what is needed to the host.

    Attributes:
        anomaly_map: (H, W) float32 anomaly score, higher = more anomalous, after refinement,
            structure-constrained fusion and flip averaging as configured. Range depends on the
            scorer: about [0, 1] for 'mask2anomaly' (values slightly below 0 are possible where
            overlapping queries sum above 1), see `m2a_perception.postprocess.anomaly`.
        semantic: (H, W) uint8 label map: train ids 0..K-1, `unknown_id` where the anomaly score
            is at or above `anomaly_threshold` (Eq. 14). None if the semantic output is off.
        confidence: (H, W) float32 in [0, 1]: for known labels the Eq. 3 score of that class
            (clamped to 1), for unknown pixels one minus the best known score. None if off.
        panoptic: (H, W) int32 segment-id map, 0 = no segment, otherwise a `Segment.id`. None if
            the panoptic output is off.
        segments: the segments present in `panoptic`, in increasing id order (empty if off).
        source_size: (height, width) of the source image.
        output_size: (height, width) of the maps.
        unknown_id: the label used for unknown pixels / segments (number of known classes).
        anomaly_threshold: the Eq. 14 threshold in force, or None (closed-set semantic map).
    """

    anomaly_map: torch.Tensor
    semantic: torch.Tensor | None
    confidence: torch.Tensor | None
    panoptic: torch.Tensor | None
    segments: tuple[Segment, ...]
    source_size: tuple[int, int]
    output_size: tuple[int, int]
    unknown_id: int
    anomaly_threshold: float | None

    def cpu(self) -> SegmentationOutput:
        """A copy whose maps are on the CPU (a no-op copy for maps already there)."""
        return replace(
            self,
            anomaly_map=self.anomaly_map.cpu(),
            semantic=None if self.semantic is None else self.semantic.cpu(),
            confidence=None if self.confidence is None else self.confidence.cpu(),
            panoptic=None if self.panoptic is None else self.panoptic.cpu(),
        )
