"""Open-set post-processing: pure torch functions from logits to anomaly, semantic and panoptic.

Every function runs on the device of its inputs (CPU or CUDA) and never imports rclpy. The usual
entry point is `postprocess(class_logits, mask_logits, record, config)`; the building blocks are
exported for evaluation and benchmarks.

Allowed dependencies: standard library, numpy, torch, OpenCV, cityscapesscripts.
"""

from m2a_perception.postprocess.anomaly import (
    apply_refinement,
    apply_structure_constrained_fusion,
    compute_anomaly_score,
    compute_query_validity,
    compute_refinement_mask,
    compute_soft_regions,
    default_refinement_class_ids,
    scorer_floor,
)
from m2a_perception.postprocess.compose import (
    compute_anomaly_map,
    output_size_for,
    postprocess,
    resize_to_output,
    score_at_output,
    upsample_mask_probabilities,
)
from m2a_perception.postprocess.config import SCORERS, SCORING_PROTOCOLS, PostprocessConfig
from m2a_perception.postprocess.flip import flip_network_input, predict_with_flip
from m2a_perception.postprocess.panoptic import (
    compute_background_map,
    compute_known_panoptic,
    find_connected_components,
    mine_unknown_instances,
)
from m2a_perception.postprocess.semantic import (
    apply_open_set_threshold,
    compute_class_scores,
    compute_known_labels,
    compute_open_set_semantic,
    compute_query_probabilities,
)

__all__ = [
    'SCORERS',
    'SCORING_PROTOCOLS',
    'PostprocessConfig',
    'apply_open_set_threshold',
    'apply_refinement',
    'apply_structure_constrained_fusion',
    'compute_anomaly_map',
    'compute_anomaly_score',
    'compute_background_map',
    'compute_class_scores',
    'compute_known_labels',
    'compute_known_panoptic',
    'compute_open_set_semantic',
    'compute_query_probabilities',
    'compute_query_validity',
    'compute_refinement_mask',
    'compute_soft_regions',
    'default_refinement_class_ids',
    'find_connected_components',
    'flip_network_input',
    'mine_unknown_instances',
    'output_size_for',
    'postprocess',
    'predict_with_flip',
    'resize_to_output',
    'score_at_output',
    'scorer_floor',
    'upsample_mask_probabilities',
]
