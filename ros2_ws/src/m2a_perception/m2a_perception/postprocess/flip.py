"""Horizontal-flip test-time augmentation with the official geometry.

The official inference script (`anomaly_utils/anomaly_inference.py` lines 135-138 and 173-187)
mirrors the *source image* (`np.fliplr`) before pre-processing, runs the predictor, flips the
source-resolution anomaly map back (`np.flip(outputs_lr, 1)`) and averages the two maps. Mirroring
the source and then resizing equals resizing and then mirroring the resized image (PIL's bilinear
resampling is symmetric; a test checks it bit for bit), and normalisation is per pixel, so the
flipped network input is the padded input with only its valid (resized) region mirrored: the
zero padding stays at the bottom and right, as in the official script. The flipped pass's maps
are therefore flipped back only after the padding is cropped off, at output resolution
(`postprocess`).

Allowed dependencies: torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from m2a_perception.preprocess import PreprocessRecord
from m2a_perception.types import NetworkOutput


def flip_network_input(images: torch.Tensor, record: PreprocessRecord) -> torch.Tensor:
    """The network input of the mirrored source image, from the plain one.

    Args:
        images: (B, 3, H_pad, W_pad) normalised, zero-padded network input.
        record: the geometry of the images (all images of the batch share it).

    Returns:
        (B, 3, H_pad, W_pad): the resized region mirrored left-right, padding unchanged on the
        right and bottom.
    """
    if images.dim() != 4:
        raise ValueError(f'images must be (B, 3, H, W), got {tuple(images.shape)}')
    if tuple(images.shape[-2:]) != record.padded_size:
        raise ValueError(
            f'images are {tuple(images.shape[-2:])} but the record says padded size '
            f'{record.padded_size}'
        )
    height, width = record.resized_size
    flipped = images.clone()
    flipped[..., :height, :width] = images[..., :height, :width].flip(-1)
    return flipped


def predict_with_flip(
    predict: Callable[[torch.Tensor], NetworkOutput],
    images: torch.Tensor,
    record: PreprocessRecord,
) -> tuple[NetworkOutput, NetworkOutput]:
    """Run `predict` on the images and on the images of the mirrored source.

    Args:
        predict: a backend: (B, 3, H, W) images -> (class_logits (B, Q, K+1),
            mask_logits (B, Q, H/4, W/4)).
        images: (B, 3, H, W) normalised, padded network input.
        record: its pre-processing geometry.

    Returns:
        The plain pass and the flipped pass as the network returned
        it (aligned with the mirrored image, padding on the right); `postprocess` flips its maps
        back at output resolution. Two calls, so fixed-batch engines work.
    """
    plain = predict(images)
    return plain, predict(flip_network_input(images, record))
