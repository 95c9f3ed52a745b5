"""Per-image mask targets shared by the matcher, the criterion and the data pipeline.

Allowed dependencies: torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MaskTargets:
    """Ground-truth masks of one image, one row per target segment.

    Attributes:
        labels: (N,) int64 class ids in [0, K) (Cityscapes train ids for the default model).
        masks: (N, H, W) bool (or float in {0, 1}) binary masks. They must cover the same frame
            as the network input (the padded image); the losses compare them with the predicted
            masks through normalised coordinates, so their resolution may differ from the
            prediction's.
    """

    labels: torch.Tensor
    masks: torch.Tensor

    def __post_init__(self) -> None:
        if self.labels.dim() != 1:
            raise ValueError(f'labels must be (N,), got {tuple(self.labels.shape)}')
        if self.masks.dim() != 3:
            raise ValueError(f'masks must be (N, H, W), got {tuple(self.masks.shape)}')
        if self.labels.shape[0] != self.masks.shape[0]:
            raise ValueError(
                f'{self.labels.shape[0]} labels but {self.masks.shape[0]} masks; they must match'
            )

    @property
    def num_targets(self) -> int:
        """Number of target segments N."""
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> MaskTargets:
        """A copy on `device`."""
        return MaskTargets(self.labels.to(device), self.masks.to(device))
