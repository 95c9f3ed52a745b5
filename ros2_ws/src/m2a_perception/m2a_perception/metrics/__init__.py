"""Evaluation metrics matching the official benchmark code (pure numpy / scipy / torch).

- `pixel`: AuPRC, FPR95, AUROC (SegmentMeIfYouCan defaults; Mask2Anomaly-script option),
  streamed exactly or with the benchmark's bins.
- `component`: sIoU, PPV, F1* (SegmentMeIfYouCan component metrics).
- `semantic`: confusion matrix and mIoU (cityscapesScripts conventions).
- `open_set`: open-IoU (DenseHybrid) and the StreetHazards t5/t6 protocol helpers.
- `panoptic`: PQ / SQ / RQ (panopticapi) and the open-set panoptic protocol (EOPSN).

Every accumulator has `update(...)`, `merge(other)` (for multi-process evaluation) and
`compute()` returning a frozen dataclass with `as_dict()`.

Allowed dependencies: numpy, scipy, torch, `m2a_perception.classes`; never rclpy, sklearn or
m2a_training.
"""

from m2a_perception.metrics.component import (
    ANOMALY_TRACK,
    OBSTACLE_TRACK,
    ComponentAccumulator,
    ComponentMetrics,
    ComponentTrack,
    FrameComponents,
    binarize_scores,
    evaluate_frame_components,
    siou_thresholds,
)
from m2a_perception.metrics.open_set import (
    STREETHAZARDS_TOWNS,
    OpenSetConfusion,
    OpenSetMetrics,
    OperatingPoint,
    calibrate_threshold,
    calibration_town,
    closed_set_target,
    downscale_for_calibration,
    weighted_town_mean,
)
from m2a_perception.metrics.panoptic import (
    UNKNOWN_CATEGORY_ID,
    PanopticAccumulator,
    PanopticCategory,
    PanopticMetrics,
    PanopticSegment,
    PQCategoryResult,
    PQGroupResult,
    open_set_categories,
    panoptic_id_to_rgb,
    relabel_unknown_segments,
    rgb_to_panoptic_id,
)
from m2a_perception.metrics.pixel import (
    FISHYSCAPES_PROTOCOL,
    MASK2ANOMALY_PROTOCOL,
    SMIYC_BINNED_PROTOCOL,
    SMIYC_PROTOCOL,
    PixelCurve,
    PixelCurveAccumulator,
    PixelMetrics,
    PixelProtocol,
    area_under_roc,
    average_precision,
    compute_pixel_metrics,
    curve_from_counts,
    fpr_at_tpr,
    get_pixel_protocol,
    roc_points,
)
from m2a_perception.metrics.semantic import (
    ConfusionMatrix,
    SemanticMetrics,
    iou_from_confusion,
)

__all__ = [
    'ANOMALY_TRACK',
    'FISHYSCAPES_PROTOCOL',
    'MASK2ANOMALY_PROTOCOL',
    'OBSTACLE_TRACK',
    'SMIYC_BINNED_PROTOCOL',
    'SMIYC_PROTOCOL',
    'STREETHAZARDS_TOWNS',
    'UNKNOWN_CATEGORY_ID',
    'ComponentAccumulator',
    'ComponentMetrics',
    'ComponentTrack',
    'ConfusionMatrix',
    'FrameComponents',
    'OpenSetConfusion',
    'OpenSetMetrics',
    'OperatingPoint',
    'PQCategoryResult',
    'PQGroupResult',
    'PanopticAccumulator',
    'PanopticCategory',
    'PanopticMetrics',
    'PanopticSegment',
    'PixelCurve',
    'PixelCurveAccumulator',
    'PixelMetrics',
    'PixelProtocol',
    'SemanticMetrics',
    'area_under_roc',
    'average_precision',
    'binarize_scores',
    'calibrate_threshold',
    'calibration_town',
    'closed_set_target',
    'compute_pixel_metrics',
    'curve_from_counts',
    'downscale_for_calibration',
    'evaluate_frame_components',
    'fpr_at_tpr',
    'get_pixel_protocol',
    'iou_from_confusion',
    'open_set_categories',
    'panoptic_id_to_rgb',
    'relabel_unknown_segments',
    'rgb_to_panoptic_id',
    'roc_points',
    'siou_thresholds',
    'weighted_town_mean',
]
