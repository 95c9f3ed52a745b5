"""Training augmentation that keeps the image, its labels and the outlier mask aligned.

Two geometric recipes (`AugmentConfig.mode`):
- 'official': what the official Mask2Anomaly config does (detectron2 semantics re-implemented
  here): ResizeShortestEdge with the short side drawn from {int(x·0.1·base) : x = 5..20}
  (base 1024 for Cityscapes, i.e. 512..2048, long side ≤ 4·base), then a random absolute crop
  (380×760 by default; the crop shrinks to the image when the image is smaller).
- 'lsj': large-scale jitter as the paper states it: scale the image so that it fits the crop
  size times a random factor in [0.1, 2.0], random crop, pad bottom/right to the crop size
  (image 128, labels void, outlier mask False).
Both are followed by ColorAugSSD photometric jitter (brightness ±32, then contrast [0.5, 1.5] and
saturation [0.5, 1.5] + hue ±18 in random order, each with probability 0.5, computed in BGR as
detectron2 does) and a horizontal flip with probability 0.5.

The image is resized with Pillow's bilinear (the core's `resize_image`); every label map
(semantic, instance ids, outlier mask) with one nearest-neighbour index map, so all of them, and
the image, stay in register through every step. The index map is detectron2's: the official
mapper reads the labels as float64
(`mask_former_semantic_dataset_mapper.py` line 204, `.astype("double")`; the pasted outliers are
label 254 in that map), so detectron2's `ResizeTransform.apply_image` resizes them with torch's
`F.interpolate(mode='nearest')`, source index floor(i · in/out) in float32, not PIL's
pixel-centre nearest. Randomness comes only from the `np.random.Generator`
passed in.

Allowed dependencies: numpy, Pillow, OpenCV (colour-space conversion only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

import cv2
import numpy as np

from m2a_perception.classes import VOID_ID
from m2a_perception.preprocess import resize_image

# Semantic label of pasted outlier pixels (AnomalyMix); void pixels keep `VOID_ID`.
OUTLIER_LABEL = 254

AugmentMode = Literal['official', 'lsj']
LabelResize = Literal['detectron2', 'pixel_centre']


@dataclass(frozen=True)
class AnnotatedImage:
    """One training image with everything that must stay aligned with it.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        semantic: (H, W) uint8 train ids; 255 void, 254 pasted outlier pixels.
        ood_mask: (H, W) bool outlier mask M_OOD (True on pasted outlier pixels).
        instance: (H, W) int32 Cityscapes instance ids (label_id·1000 + k for things, the label
            id for stuff and crowd regions, 0 unlabelled), or None when not needed.
        name: identifier for logs and error messages.
    """

    image: np.ndarray
    semantic: np.ndarray
    ood_mask: np.ndarray
    instance: np.ndarray | None = None
    name: str = ''

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(
                f'{self.name}: image must be (H, W, 3) uint8, got {self.image.shape} '
                f'{self.image.dtype}'
            )
        size = self.image.shape[:2]
        maps = {'semantic': self.semantic, 'ood_mask': self.ood_mask, 'instance': self.instance}
        for key, value in maps.items():
            if value is not None and value.shape != size:
                raise ValueError(f'{self.name}: {key} is {value.shape}, image is {size}')
        if self.ood_mask.dtype != np.bool_:
            raise ValueError(f'{self.name}: ood_mask must be bool, got {self.ood_mask.dtype}')

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return int(self.image.shape[0]), int(self.image.shape[1])


Transform = Callable[[AnnotatedImage, np.random.Generator], AnnotatedImage]


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation settings.

    Attributes:
        mode: 'official' (ResizeShortestEdge + crop) or 'lsj' (large-scale jitter).
        crop_size: (H, W) of the random crop (official 380×760).
        short_side_base: 'official' draws the short side from int(x·0.1·base), x = 5..20; 1024
            reproduces the official list for Cityscapes, smaller values scale it for small
            images.
        max_size_factor: 'official' caps the long side at factor·base (4096 for base 1024).
        min_scale, max_scale: 'lsj' random scale range (paper: 0.1–2.0).
        color_jitter: apply ColorAugSSD.
        flip_probability: horizontal flip probability.
        image_pad_value: 'lsj' fill of padded image pixels (detectron2's FixedSizeCrop uses 128).
        label_resize: nearest index rule for label maps and the outlier mask. 'detectron2'
            (official, default): floor(i · in/out) as torch's nearest interpolation, which
            shifts labels up to half a source pixel towards the top-left of the bilinear image;
            'pixel_centre': floor((i + 0.5) · in/out), in register with the image.
    """

    mode: AugmentMode = 'official'
    crop_size: tuple[int, int] = (380, 760)
    short_side_base: int = 1024
    max_size_factor: float = 4.0
    min_scale: float = 0.1
    max_scale: float = 2.0
    color_jitter: bool = True
    flip_probability: float = 0.5
    image_pad_value: int = 128
    label_resize: LabelResize = 'detectron2'

    def __post_init__(self) -> None:
        if self.label_resize not in ('detectron2', 'pixel_centre'):
            raise ValueError(
                f"label_resize must be 'detectron2' or 'pixel_centre', got {self.label_resize!r}"
            )
        object.__setattr__(self, 'crop_size', tuple(int(v) for v in self.crop_size))
        if self.mode not in ('official', 'lsj'):
            raise ValueError(f"augment mode must be 'official' or 'lsj', got {self.mode!r}")
        if len(self.crop_size) != 2 or min(self.crop_size) <= 0:
            raise ValueError(f'crop_size must be two positive ints, got {self.crop_size}')
        if self.short_side_base < 10:
            raise ValueError(f'short_side_base must be >= 10, got {self.short_side_base}')
        if not 0 < self.min_scale <= self.max_scale:
            raise ValueError(
                f'need 0 < min_scale <= max_scale, got {self.min_scale}, {self.max_scale}'
            )
        if not 0.0 <= self.flip_probability <= 1.0:
            raise ValueError(f'flip_probability must be in [0, 1], got {self.flip_probability}')

    def short_side_choices(self) -> tuple[int, ...]:
        """The official short-side list, scaled: int(x·0.1·base) for x = 5..20."""
        return tuple(int(x * 0.1 * self.short_side_base) for x in range(5, 21))


# ---------------------------------------------------------------- geometric primitives


def resize_shortest_edge_size(
    height: int, width: int, short_side: int, max_size: float
) -> tuple[int, int]:
    """Output (H, W) of ResizeShortestEdge (detectron2 rounding: int(x + 0.5))."""
    scale = short_side / min(height, width)
    new_h, new_w = height * scale, width * scale
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def nearest_indices(source: int, target: int, rule: LabelResize = 'detectron2') -> np.ndarray:
    """Source index of every target pixel, as torch's nearest interpolation picks it.

    torch (`UpSample.h`, `nearest_idx`) computes min(floor(i · (in / out)), in - 1) in float32,
    with exact shortcuts for equal sizes and for doubling (i >> 1), which the float formula
    reproduces. This is what detectron2 applies to the float64 label maps of the official mapper.

    `rule='pixel_centre'` gives floor((i + 0.5) · in/out) instead (PIL's nearest).

    Returns:
        (target,) int64 source indices.
    """
    if rule == 'pixel_centre':
        centres = (np.arange(target) + 0.5) * (source / target)
        return np.minimum(np.floor(centres).astype(np.int64), source - 1)
    scale = np.float32(source) / np.float32(target)
    positions = np.arange(target, dtype=np.float32) * scale
    return np.minimum(np.floor(positions).astype(np.int64), source - 1)


def resize_sample(
    sample: AnnotatedImage, size: tuple[int, int], label_resize: LabelResize = 'detectron2'
) -> AnnotatedImage:
    """Resize: image bilinear (Pillow's), every label map nearest with the same index map."""
    if sample.size == tuple(size):
        return sample
    height, width = size
    # The core's resize: Pillow's bilinear with Pillow <= 12's pass order, as at test time.
    image = resize_image(sample.image, (height, width))
    rows = nearest_indices(sample.size[0], height, label_resize)[:, None]
    cols = nearest_indices(sample.size[1], width, label_resize)[None, :]
    return replace(
        sample,
        image=image,
        semantic=sample.semantic[rows, cols],
        ood_mask=sample.ood_mask[rows, cols],
        instance=None if sample.instance is None else sample.instance[rows, cols],
    )


def crop_sample(
    sample: AnnotatedImage, top: int, left: int, height: int, width: int
) -> AnnotatedImage:
    """Crop the window [top, top + height) × [left, left + width) from every map."""
    window = (slice(top, top + height), slice(left, left + width))
    return replace(
        sample,
        image=sample.image[window].copy(),
        semantic=sample.semantic[window].copy(),
        ood_mask=sample.ood_mask[window].copy(),
        instance=None if sample.instance is None else sample.instance[window].copy(),
    )


def pad_sample(sample: AnnotatedImage, size: tuple[int, int], image_value: int) -> AnnotatedImage:
    """Pad bottom/right to `size`: image `image_value`, semantic void, others 0/False."""
    pad_h, pad_w = size[0] - sample.size[0], size[1] - sample.size[1]
    if pad_h < 0 or pad_w < 0:
        raise ValueError(f'cannot pad {sample.size} to the smaller {size}')
    if pad_h == 0 and pad_w == 0:
        return sample
    spec = ((0, pad_h), (0, pad_w))
    return replace(
        sample,
        image=np.pad(sample.image, (*spec, (0, 0)), constant_values=image_value),
        semantic=np.pad(sample.semantic, spec, constant_values=VOID_ID),
        ood_mask=np.pad(sample.ood_mask, spec, constant_values=False),
        instance=None if sample.instance is None else np.pad(sample.instance, spec),
    )


def flip_sample(sample: AnnotatedImage) -> AnnotatedImage:
    """Horizontal flip of every map."""
    return replace(
        sample,
        image=sample.image[:, ::-1].copy(),
        semantic=sample.semantic[:, ::-1].copy(),
        ood_mask=sample.ood_mask[:, ::-1].copy(),
        instance=None if sample.instance is None else sample.instance[:, ::-1].copy(),
    )


def random_crop(
    sample: AnnotatedImage, crop_size: tuple[int, int], rng: np.random.Generator
) -> AnnotatedImage:
    """Uniform random crop of min(crop, image) per axis (detectron2 'absolute' RandomCrop)."""
    height, width = min(crop_size[0], sample.size[0]), min(crop_size[1], sample.size[1])
    top = int(rng.integers(0, sample.size[0] - height + 1))
    left = int(rng.integers(0, sample.size[1] - width + 1))
    return crop_sample(sample, top, left, height, width)


# ---------------------------------------------------------------- photometric jitter


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def _jitter_contrast(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.integers(2):
        return _convert(bgr, alpha=float(rng.uniform(0.5, 1.5)))
    return bgr


def _jitter_saturation(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.integers(2):
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=float(rng.uniform(0.5, 1.5)))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return bgr


def _jitter_hue(bgr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.integers(2):
        hsv = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)
        # OpenCV's 8-bit hue is in [0, 180).
        shift = int(rng.integers(-18, 19))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return bgr


def jitter_colors(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """ColorAugSSD photometric jitter (SSD / detectron2 PointRend recipe).

    Args:
        image: (H, W, 3) uint8 RGB.
        rng: random generator.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    if rng.integers(2):
        bgr = _convert(bgr, beta=float(rng.uniform(-32, 32)))
    if rng.integers(2):
        bgr = _jitter_saturation(_jitter_contrast(bgr, rng), rng)
        bgr = _jitter_hue(bgr, rng)
    else:
        bgr = _jitter_contrast(_jitter_hue(_jitter_saturation(bgr, rng), rng), rng)
    return np.ascontiguousarray(bgr[:, :, ::-1])


# ---------------------------------------------------------------- recipes


def resize_official(
    sample: AnnotatedImage, config: AugmentConfig, rng: np.random.Generator
) -> AnnotatedImage:
    """ResizeShortestEdge with a short side drawn from the (scaled) official list."""
    short_side = int(rng.choice(config.short_side_choices()))
    size = resize_shortest_edge_size(
        *sample.size, short_side, config.max_size_factor * config.short_side_base
    )
    return resize_sample(sample, size, config.label_resize)


def resize_lsj(
    sample: AnnotatedImage, config: AugmentConfig, rng: np.random.Generator
) -> AnnotatedImage:
    """Large-scale jitter resize: fit the crop size times a random scale in [min, max]."""
    scale = float(rng.uniform(config.min_scale, config.max_scale))
    height, width = sample.size
    factor = scale * min(config.crop_size[0] / height, config.crop_size[1] / width)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    return resize_sample(sample, size, config.label_resize)


def augment_sample(
    sample: AnnotatedImage, config: AugmentConfig, rng: np.random.Generator
) -> AnnotatedImage:
    """Apply the configured augmentation.

    Args:
        sample: the image and its aligned label maps (after AnomalyMix, as in the official
            mapper, so a pasted object is resized, cropped, jittered and flipped with the scene).
        config: recipe and sizes.
        rng: the only source of randomness.

    Returns:
        The augmented sample. 'lsj' always returns `crop_size`; 'official' returns
        min(crop, resized image) per axis.
    """
    if config.mode == 'official':
        sample = random_crop(resize_official(sample, config, rng), config.crop_size, rng)
    else:
        sample = random_crop(resize_lsj(sample, config, rng), config.crop_size, rng)
        sample = pad_sample(sample, config.crop_size, config.image_pad_value)
    if config.color_jitter:
        sample = replace(sample, image=jitter_colors(sample.image, rng))
    if rng.uniform() < config.flip_probability:
        sample = flip_sample(sample)
    return sample


class Augmenter:
    """Callable `(sample, rng) -> sample` wrapper around `augment_sample`."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, sample: AnnotatedImage, rng: np.random.Generator) -> AnnotatedImage:
        return augment_sample(sample, self.config, rng)


class ComposedTransform:
    """Chain of `(sample, rng) -> sample` transforms applied left to right with one generator.

    A class rather than a closure so that data-loader workers can pickle it.
    """

    def __init__(self, *transforms: Transform) -> None:
        self.transforms = transforms

    def __call__(self, sample: AnnotatedImage, rng: np.random.Generator) -> AnnotatedImage:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample


def compose_transforms(*transforms: Transform) -> ComposedTransform:
    """Chain transforms left to right, sharing one generator (e.g. AnomalyMix, then Augmenter)."""
    return ComposedTransform(*transforms)
