"""Closed-set semantic segmentation: confusion matrix and mIoU with cityscapesScripts conventions.

`evaluation/evalPixelLevelSemanticLabeling.py` accumulates a confusion matrix over Cityscapes
label ids and, for each of the 19 evaluated classes c:

- TP = pixels of GT c predicted as c;
- FN = all other pixels of GT c, **including those predicted as an id that is not evaluated**
  (predicting "unlabeled" on a road pixel costs road an FN);
- FP = pixels predicted as c whose GT is an evaluated class (GT-ignored pixels never create FPs);
- IoU = TP / (TP + FP + FN), NaN when the denominator is 0; mIoU = mean over non-NaN classes.

Here the matrix is kept in trainId space (19 rows, 19 + 1 columns): GT 255 is ignored, and a
prediction outside [0, num_classes) (255, or an ignored label id mapped by
`m2a_perception.classes.label_ids_to_train_ids`) goes to the extra column, counting as an FN
only. This gives the script's numbers from trainId maps, which is what the model produces.

Allowed dependencies: numpy, torch (tensor inputs only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics._common import check_2d, check_same_shape, to_numpy


@dataclass(frozen=True)
class SemanticMetrics:
    """Per-class IoU and their mean, as fractions.

    Attributes:
        iou: (K,) IoU per class, NaN for classes absent from both GT and prediction.
        miou: mean over non-NaN classes.
        true_positives, false_positives, false_negatives: (K,) pixel counts per class.
    """

    iou: tuple[float, ...]
    miou: float
    true_positives: tuple[int, ...]
    false_positives: tuple[int, ...]
    false_negatives: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return dataclasses.asdict(self)


def iou_from_confusion(matrix: np.ndarray) -> SemanticMetrics:
    """IoU from a (K, K + E) confusion matrix, rows = GT class, columns = prediction.

    Columns beyond K hold predictions that are no class (each counts as an FN of its row).
    """
    num_classes = matrix.shape[0]
    if matrix.ndim != 2 or matrix.shape[1] < num_classes:
        raise ValueError(f'confusion matrix must be (K, K + E), got shape {matrix.shape}')
    true_positives = np.diag(matrix[:, :num_classes]).astype(np.int64)
    false_negatives = matrix.sum(axis=1) - true_positives
    false_positives = matrix[:, :num_classes].sum(axis=0) - true_positives
    denominator = true_positives + false_positives + false_negatives
    with np.errstate(divide='ignore', invalid='ignore'):
        iou = np.where(denominator > 0, true_positives / denominator, np.nan)
    valid = ~np.isnan(iou)
    return SemanticMetrics(
        iou=tuple(float(value) for value in iou),
        miou=float(iou[valid].mean()) if valid.any() else float('nan'),
        true_positives=tuple(int(value) for value in true_positives),
        false_positives=tuple(int(value) for value in false_positives),
        false_negatives=tuple(int(value) for value in false_negatives),
    )


class ConfusionMatrix:
    """Streaming (K, K + 1) confusion matrix over trainIds with an ignore label.

    Usage:
        matrix = ConfusionMatrix(num_classes=19)
        for prediction, target in frames:
            matrix.update(prediction, target)
        miou = matrix.compute().miou
    """

    def __init__(self, num_classes: int, ignore_index: int = VOID_ID) -> None:
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if 0 <= ignore_index < num_classes:
            raise ValueError(f'ignore_index {ignore_index} collides with a class index')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes + 1), dtype=np.int64)

    def update(
        self, prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor
    ) -> None:
        """Add one frame.

        Args:
            prediction: (H, W) integer class indices; values outside [0, K) are "no class".
            target: (H, W) integer GT in [0, K) or `ignore_index`.

        Raises:
            ValueError: on shape mismatch, non-integer maps or unexpected target values.
        """
        predicted = to_numpy(prediction, 'prediction')
        truth = to_numpy(target, 'target')
        check_2d(predicted, 'prediction')
        check_2d(truth, 'target')
        check_same_shape(predicted, truth, ('prediction', 'target'))
        for array, name in ((predicted, 'prediction'), (truth, 'target')):
            if not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f'{name} must hold integer class indices, got {array.dtype}')
        valid = truth != self.ignore_index
        truth = truth[valid].astype(np.int64)
        if truth.size and (truth.min() < 0 or truth.max() >= self.num_classes):
            bad = np.unique(truth[(truth < 0) | (truth >= self.num_classes)])
            raise ValueError(
                f'target values must be in [0, {self.num_classes}) or {self.ignore_index}; found '
                f'{bad[:10].tolist()}'
            )
        predicted = predicted[valid].astype(np.int64)
        predicted = np.where(
            (predicted >= 0) & (predicted < self.num_classes), predicted, self.num_classes
        )
        width = self.num_classes + 1
        counts = np.bincount(truth * width + predicted, minlength=self.num_classes * width)
        self.matrix += counts.reshape(self.num_classes, width)

    def merge(self, other: ConfusionMatrix) -> None:
        """Fold in another matrix of the same size."""
        if other.matrix.shape != self.matrix.shape or other.ignore_index != self.ignore_index:
            raise ValueError('cannot merge confusion matrices of different configuration')
        self.matrix += other.matrix

    def compute(self) -> SemanticMetrics:
        """IoU per class and mIoU."""
        return iou_from_confusion(self.matrix)
