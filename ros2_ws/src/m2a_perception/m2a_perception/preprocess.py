"""Test-time pre-processing: resize the short side, normalise, zero-pad to a multiple of 32.

Follows detectron2's DefaultPredictor as used by the official Mask2Anomaly inference script:
ResizeShortestEdge with PIL bilinear on uint8 (sizes rounded with int(x + 0.5)), float RGB 0..255,
normalise with the official mean/std, then zero padding at the bottom and right. A
`PreprocessRecord` keeps what is needed to map outputs back onto the source image.

Allowed dependencies: numpy, torch, Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from m2a_perception.config import PreprocessConfig


class DegenerateResizeError(ValueError):
    """A frame whose aspect ratio is so extreme that a resized side would round to 0 pixels."""


@dataclass(frozen=True)
class PreprocessRecord:
    """Geometry of one pre-processed image; sizes are (height, width) in pixels."""

    source_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]


def compute_resized_size(
    height: int, width: int, short_side: int, max_size: int
) -> tuple[int, int]:
    """Size after ResizeShortestEdge(short_side, max_size); short_side 0 keeps the size.

    Raises:
        DegenerateResizeError: a side would round to 0 pixels (e.g. a 1x4096 frame at short side
            256, max size 512 becomes 0x512); callers reject such frames before any allocation.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f'image size must be positive, got {height}x{width}')
    if short_side == 0:
        return height, width
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    resized = int(new_h + 0.5), int(new_w + 0.5)
    if min(resized) == 0:
        raise DegenerateResizeError(
            f'a {width}x{height} frame would be resized to {resized[1]}x{resized[0]} pixels '
            f'(short side {short_side}, max size {max_size}): aspect ratio '
            f'{max(width, height) / min(width, height):.0f}:1 is too extreme for the model'
        )
    return resized


def padded_size(height: int, width: int, divisibility: int) -> tuple[int, int]:
    """Smallest (H, W) >= the input that are multiples of `divisibility`."""
    return (
        -(-height // divisibility) * divisibility,
        -(-width // divisibility) * divisibility,
    )


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an (H, W, 3) uint8 image with PIL, as detectron2 does; no-op if equal."""
    if image.shape[:2] == tuple(size):
        return image
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.array(resized)


def normalize_and_pad(
    images: torch.Tensor,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    divisibility: int,
) -> torch.Tensor:
    """(B, 3, H, W) RGB 0..255 (any dtype) -> normalised float32, zero padded bottom/right."""
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
    normalized = (images.float() - mean) / std
    height, width = images.shape[-2:]
    target_h, target_w = padded_size(int(height), int(width), divisibility)
    return F.pad(normalized, (0, target_w - int(width), 0, target_h - int(height)), value=0.0)


class Preprocessor:
    """Turns camera frames into network input. Pure: holds only its configuration."""

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config

    def record_for(self, height: int, width: int) -> PreprocessRecord:
        """The geometry a (height, width) source image will get."""
        resized = compute_resized_size(height, width, self.config.short_side, self.config.max_size)
        return PreprocessRecord(
            source_size=(height, width),
            resized_size=resized,
            padded_size=padded_size(*resized, self.config.size_divisibility),
        )

    def __call__(
        self, image: np.ndarray, device: torch.device | str = 'cpu'
    ) -> tuple[torch.Tensor, PreprocessRecord]:
        """Args:
            image: (H, W, 3) uint8 RGB.
            device: where the network input should live.

        Returns:
            (1, 3, H', W') float32 normalised and padded input, and its record.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f'expected an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}'
            )
        record = self.record_for(image.shape[0], image.shape[1])
        resized = np.ascontiguousarray(resize_image(image, record.resized_size))
        if not resized.flags.writeable:
            # e.g. a view of a ROS message buffer; torch wants memory it may write to.
            resized = resized.copy()
        tensor = torch.from_numpy(resized).to(device)
        tensor = tensor.permute(2, 0, 1)[None]
        images = normalize_and_pad(
            tensor, self.config.pixel_mean, self.config.pixel_std, self.config.size_divisibility
        )
        return images, record


def map_to_source(
    maps: torch.Tensor, record: PreprocessRecord, mode: str = 'bilinear'
) -> torch.Tensor:
    """Map network-space maps back onto the source image.

    Args:
        maps: (B, C, h, w) at any resolution proportional to the padded input (e.g. the 1/4
            mask resolution), float for 'bilinear', any dtype for 'nearest'.
        record: the image's `PreprocessRecord`.
        mode: 'bilinear' (align_corners False) or 'nearest'.

    Returns:
        (B, C, H_source, W_source). As in the official code, the maps are brought to the padded
        size, the padding is cropped off, and the result is resized to the source size; steps that
        are identities are skipped.
    """
    if mode not in ('bilinear', 'nearest'):
        raise ValueError(f"mode must be 'bilinear' or 'nearest', got {mode!r}")
    kwargs = {'align_corners': False} if mode == 'bilinear' else {}
    if record.resized_size == record.padded_size:
        if tuple(maps.shape[-2:]) == record.source_size:
            return maps
        return _interpolate(maps, record.source_size, mode, kwargs)
    maps = _interpolate(maps, record.padded_size, mode, kwargs)
    maps = maps[..., : record.resized_size[0], : record.resized_size[1]]
    if record.resized_size != record.source_size:
        maps = _interpolate(maps, record.source_size, mode, kwargs)
    return maps


def _interpolate(
    maps: torch.Tensor, size: tuple[int, int], mode: str, kwargs: dict[str, bool]
) -> torch.Tensor:
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    if mode == 'nearest' and not maps.is_floating_point():
        return F.interpolate(maps.float(), size=size, mode='nearest').to(maps.dtype)
    return F.interpolate(maps, size=size, mode=mode, **kwargs)
