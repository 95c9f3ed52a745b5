"""Horizontal-flip test-time augmentation (the official inference script averages two passes).

The official script flips the source image before pre-processing, so its padding stays on the
right. Here the padded network input is flipped, so that flipping the masks back is exact at mask
resolution; the flipped pass then sees its padding on the left. The two agree whenever the resized
image needs no padding (e.g. 1024x2048 Cityscapes frames).

Allowed dependencies: torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Logits = tuple[torch.Tensor, torch.Tensor]


def predict_with_flip(
    predict: Callable[[torch.Tensor], Logits], images: torch.Tensor
) -> tuple[Logits, Logits]:
    """Run `predict` on the images and on their mirror images.

    Args:
        predict: a backend: (B, 3, H, W) images -> (class_logits (B, Q, K+1),
            mask_logits (B, Q, H/4, W/4)).
        images: (B, 3, H, W) normalised, padded network input.

    Returns:
        The plain pass `(class_logits, mask_logits)` and the flipped pass with its mask logits
        flipped back, so both are aligned with `images`. Two calls, so fixed-batch engines work.
    """
    if images.dim() != 4:
        raise ValueError(f'images must be (B, 3, H, W), got {tuple(images.shape)}')
    plain = predict(images)
    class_logits, mask_logits = predict(images.flip(-1))
    return plain, (class_logits, mask_logits.flip(-1))
