"""Post-processing configuration: one frozen, validated dataclass.

Defaults follow the official Mask2Anomaly code where it exists (scorer, refinement) and
Mask2Former's panoptic defaults (thresholds 0.8); values the paper leaves open (unknown-instance
mining) are our choices and say so.

Allowed dependencies: standard library, cityscapesscripts (through `m2a_perception.classes`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from m2a_perception.classes import thing_train_ids

SCORERS = ('mask2anomaly', 'max_logit', 'rba', 'energy', 'neg_logit_sum', 'entropy', 'eam')
# Scorers whose values can be negative; structure-constrained fusion multiplies scores and is
# only meaningful on non-negative ones.
SIGNED_SCORERS = ('max_logit', 'rba', 'energy', 'neg_logit_sum')
# Scorers whose values lie in about [0, 1], so one threshold range and one colour scale fit all
# (the node's choices, the fixed heatmap range of m2a-infer and m2a-eval).
UNIT_RANGE_SCORERS = tuple(name for name in SCORERS if name not in SIGNED_SCORERS)
REFINEMENT_MODES = ('code', 'paper', 'paper_literal', 'off')
SCF_VALIDITY = ('object', 'max_class')
OUTPUT_RESOLUTIONS = ('source', 'model')
SCORING_RESOLUTIONS = ('mask', 'source')
SCORING_PROTOCOLS = ('official', 'node')
LABEL_UPSAMPLING = ('nearest', 'bilinear')
MINING_MAPS = ('background', 'anomaly')
CC_BACKENDS = ('opencv', 'iterative')
MINING_SPLITS = ('components', 'query_regions', 'centroid_head')
# The split that needs the model's optional class-agnostic instance head (`instance_embedding`).
CENTROID_SPLIT = 'centroid_head'


@dataclass(frozen=True)
class PostprocessConfig:
    """How logits become anomaly, open-set semantic and open-set panoptic outputs.

    Anomaly score (Eq. 5 and alternatives):
        scorer: one of `SCORERS`; 'mask2anomaly' is the official score 1 - max_k S_k.
        refinement: 'code' (official: suppress confident stuff queries, train ids 2..10),
            'paper' (the paper's intent: stuff except road, ids 1..10, binarised masks),
            'paper_literal' (Eq. 13 read literally: keep only confident thing/road masks) or 'off'.
        refinement_class_ids: overrides the mode's train ids; None uses the mode's ids.
        refinement_class_threshold: a query takes part if its probability of one of those
            classes is above this (0.95 in the official code and the paper).
        refinement_mask_threshold: 0.5; 'code' compares p·sigmoid(m) >= it, the paper modes
            sigmoid(m) > it.
        refinement_min_queries: refine only if at least this many queries take part. The official
            script refines only when two or more do (`anomaly_inference.py` line 163,
            `shape[0] > 1`); the default 1 refines with one.
        scf: CSL structure-constrained fusion: score x (mean score over its query region)^exponent.
        scf_validity: query validity for the soft assignment: 'object' = 1 - p(no object),
            'max_class' = max known-class probability.
        scf_exponent: exponent of the region mean (1 reproduces CSL's Eq. 3).
        scf_before_refinement: apply fusion before instead of after the refinement.
        flip: average with the pass on the mirrored source image (official TTA, its geometry:
            padding stays on the right; doubles the model cost). Only the anomaly map is
            averaged; semantic labels and panoptic segments come from the plain pass.
        scoring_resolution: where scores, refinement and thresholds are computed. 'mask' (the
            node's fast path): at mask resolution (1/4 of the padded input), then the anomaly
            map is resized. 'source' (official, `maskformer_model.py` lines 240-268): mask
            logits upsampled bilinearly to the padded input, sigmoid, padding cropped, resized to
            the output resolution, and everything computed there (Q full-size masks in memory).

    Open-set semantic (Eq. 14):
        semantic: compute the semantic label and confidence maps.
        anomaly_threshold: label pixels 'unknown' where the anomaly score >= this; None gives a
            closed-set map. Evaluation calibrates it at 95% TPR.
        label_upsampling: 'nearest' picks the known class at mask resolution (1/4) and
            upsamples the label map; 'bilinear' picks at output resolution, from class scores
            resized bilinearly at mask resolution ('mask' scoring) or computed in the official
            order ('source' scoring: logits upsampled, sigmoid, sum over queries, resized).
            Either way the unknown test runs on the output-resolution anomaly map.
        output_resolution: 'source' (camera image size) or 'model' (resized input, no padding).

    Panoptic (Mask2Former rule for known classes):
        panoptic: compute the panoptic id map and the segment list.
        object_mask_threshold: keep queries whose top (non-no-object) probability is above this.
        overlap_threshold: drop a query if less than this fraction of its binary mask survives
            the per-pixel argmax.
        mask_threshold: mask binarisation threshold on sigmoid(m) (0.5 in Mask2Former).
        thing_class_ids: known train ids that are things (instances); the rest are stuff.

    Unknown-instance mining (Section 6; thresholds not given in the paper are our choices):
        mining: mine unknown-thing instances.
        mining_map: 'background' (Eq. 15) or 'anomaly' (the final anomaly map).
        mining_threshold: pixels with map value >= this are candidates.
        mining_min_area: drop candidates smaller than this many pixels at mask resolution.
        mining_max_instances: keep at most this many (largest first); None keeps all. The paper
            uses 2, 2, 3 for its 5/10/20% splits.
        mining_iou_threshold: "significant overlap" between a candidate and a query mask.
        mining_entropy_rule: accept a candidate only if its best query's stuff-class entropy
            exceeds its thing-class entropy (E_S > E_T).
        mining_connectivity: 4 or 8 neighbours for connected components.
        mining_cc_backend: 'opencv' (exact) or 'iterative' (max-pool label propagation run for
            `mining_cc_iterations` steps, the behaviour the paper's iteration count suggests).
        mining_split: 'components' (paper) or 'query_regions' (CSL: split each component by the
            soft-assignment query region) or 'centroid_head' (split each component by the
            centroids the model's class-agnostic instance head predicts, seed 004 Section 3.3.1;
            needs a model with `instance_head.kind: centroid`).
        mining_split_min_fraction: with 'query_regions' or 'centroid_head', pieces smaller than
            this fraction of their component are merged into the component's largest piece.
        centroid_grid: (rows, columns) of the discrete centroid grid the embeddings are decoded
            on by nearest-neighbour search (seed 004 uses 160×320 for Cityscapes).
        centroid_radius: with 'centroid_head', pixels whose decoded centroid lies within this
            many mask-resolution pixels of a chosen centroid join its instance (the NMS radius;
            our choice, the paper gives Painter's NMS without numbers).
    """

    scorer: str = 'mask2anomaly'
    refinement: str = 'code'
    refinement_class_ids: tuple[int, ...] | None = None
    refinement_class_threshold: float = 0.95
    refinement_mask_threshold: float = 0.5
    refinement_min_queries: int = 1
    scf: bool = False
    scf_validity: str = 'object'
    scf_exponent: float = 1.0
    scf_before_refinement: bool = False
    flip: bool = False
    scoring_resolution: str = 'mask'

    semantic: bool = True
    anomaly_threshold: float | None = 0.5
    label_upsampling: str = 'nearest'
    output_resolution: str = 'source'

    panoptic: bool = True
    object_mask_threshold: float = 0.8
    overlap_threshold: float = 0.8
    mask_threshold: float = 0.5
    thing_class_ids: tuple[int, ...] = field(default_factory=thing_train_ids)

    mining: bool = True
    mining_map: str = 'background'
    mining_threshold: float = 0.5
    mining_min_area: int = 16
    mining_max_instances: int | None = None
    mining_iou_threshold: float = 0.3
    mining_entropy_rule: bool = True
    mining_connectivity: int = 8
    mining_cc_backend: str = 'opencv'
    mining_cc_iterations: int = 500
    mining_split: str = 'components'
    mining_split_min_fraction: float = 0.1
    centroid_grid: tuple[int, int] = (160, 320)
    centroid_radius: float = 4.0

    def __post_init__(self) -> None:
        _check_choice('scorer', self.scorer, SCORERS)
        _check_choice('refinement', self.refinement, REFINEMENT_MODES)
        _check_choice('scf_validity', self.scf_validity, SCF_VALIDITY)
        _check_choice('label_upsampling', self.label_upsampling, LABEL_UPSAMPLING)
        _check_choice('output_resolution', self.output_resolution, OUTPUT_RESOLUTIONS)
        _check_choice('scoring_resolution', self.scoring_resolution, SCORING_RESOLUTIONS)
        _check_choice('mining_map', self.mining_map, MINING_MAPS)
        _check_choice('mining_cc_backend', self.mining_cc_backend, CC_BACKENDS)
        _check_choice('mining_split', self.mining_split, MINING_SPLITS)
        for name in (
            'refinement_class_threshold',
            'refinement_mask_threshold',
            'object_mask_threshold',
            'overlap_threshold',
            'mask_threshold',
            'mining_iou_threshold',
            'mining_split_min_fraction',
        ):
            _check_unit_interval(name, getattr(self, name))
        for name in ('mining_threshold', 'scf_exponent'):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f'{name} must be finite, got {getattr(self, name)}')
        if self.anomaly_threshold is not None and not math.isfinite(self.anomaly_threshold):
            raise ValueError(
                f'anomaly_threshold must be finite or None, got {self.anomaly_threshold}'
            )
        if self.scf_exponent < 0:
            raise ValueError(f'scf_exponent must be >= 0, got {self.scf_exponent}')
        if self.scf and self.scorer in SIGNED_SCORERS:
            raise ValueError(
                f'scf multiplies scores and needs a non-negative scorer; {self.scorer!r} can be '
                f'negative (use one of {sorted(set(SCORERS) - set(SIGNED_SCORERS))})'
            )
        if self.refinement_min_queries < 1:
            raise ValueError(
                f'refinement_min_queries must be >= 1, got {self.refinement_min_queries}'
            )
        if self.mining_min_area < 1:
            raise ValueError(f'mining_min_area must be >= 1, got {self.mining_min_area}')
        if self.mining_max_instances is not None and self.mining_max_instances < 1:
            raise ValueError(
                f'mining_max_instances must be >= 1 or None, got {self.mining_max_instances}'
            )
        if self.mining_connectivity not in (4, 8):
            raise ValueError(f'mining_connectivity must be 4 or 8, got {self.mining_connectivity}')
        grid = tuple(self.centroid_grid)
        if len(grid) != 2 or not all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096 for v in grid
        ):
            raise ValueError(
                f'centroid_grid must be two integers (rows, columns) in [1, 4096], got {grid}'
            )
        object.__setattr__(self, 'centroid_grid', grid)
        if not (math.isfinite(self.centroid_radius) and self.centroid_radius >= 0):
            raise ValueError(
                f'centroid_radius must be finite and >= 0, got {self.centroid_radius}'
            )
        if self.mining_cc_iterations < 1:
            raise ValueError(f'mining_cc_iterations must be >= 1, got {self.mining_cc_iterations}')
        object.__setattr__(
            self, 'thing_class_ids', _id_tuple('thing_class_ids', self.thing_class_ids)
        )
        if self.refinement_class_ids is not None:
            object.__setattr__(
                self,
                'refinement_class_ids',
                _id_tuple('refinement_class_ids', self.refinement_class_ids),
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def for_protocol(cls, name: str, **overrides: Any) -> PostprocessConfig:
        """A named scoring protocol, with any field overridden.

        - 'official': `anomaly_utils/anomaly_inference.py` of the official code: source-resolution
          scoring, refinement only with two or more confident queries, flip averaging with the
          official geometry, labels from bilinearly upsampled class scores.
        - 'node': the node's fast path (the dataclass defaults): mask-resolution scoring,
          refinement with one or more queries, no flip, nearest label upsampling.
        """
        _check_choice('protocol', name, SCORING_PROTOCOLS)
        preset: dict[str, Any] = {}
        if name == 'official':
            preset = {
                'scorer': 'mask2anomaly',
                'refinement': 'code',
                'refinement_min_queries': 2,
                'flip': True,
                'scoring_resolution': 'source',
                'label_upsampling': 'bilinear',
            }
        return cls(**{**preset, **overrides})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostprocessConfig:
        """Build from a flat mapping (YAML, ROS parameters); unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f'unknown post-processing keys {unknown}; known keys: {sorted(known)}'
            )
        return cls(**data)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'{name} must be one of {choices}, got {value!r}')


def _check_unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f'{name} must be in [0, 1], got {value}')


def _id_tuple(name: str, values: Any) -> tuple[int, ...]:
    ids = tuple(int(v) for v in values)
    if any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError(f'{name} must hold distinct non-negative class ids, got {ids}')
    return ids


def check_instance_head(config: PostprocessConfig, has_instance_head: bool) -> None:
    """Raise ValueError if `config` needs the model's instance head and the model has none.

    Args:
        config: post-processing configuration.
        has_instance_head: whether the model outputs `instance_embedding`
            (`ModelConfig.instance_head.enabled`, or an `InstanceNetworkOutput` output).
    """
    needs_head = config.panoptic and config.mining and config.mining_split == CENTROID_SPLIT
    if needs_head and not has_instance_head:
        raise ValueError(
            "mining_split 'centroid_head' needs a model with the class-agnostic instance "
            'head (model config instance_head.kind: centroid); this model has none, so '
            "choose mining_split 'components' or 'query_regions'"
        )
