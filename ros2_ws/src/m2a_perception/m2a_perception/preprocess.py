"""Test-time pre-processing: resize the short side, normalise, zero-pad to a multiple of 32.

Follows detectron2's DefaultPredictor as used by the official Mask2Anomaly inference script:
ResizeShortestEdge with PIL bilinear on uint8 (sizes rounded with int(x + 0.5)), float RGB 0..255,
normalise with the official mean/std, then zero padding at the bottom and right. A
`PreprocessRecord` keeps what is needed to map outputs back onto the source image.

The resize is Pillow's 8-bit bilinear resampling, run on the backend's device (`resize_uint8`): a
camera frame goes to the GPU as uint8 and is resized there by `resize_uint8_torch`, which gives
Pillow's bytes exactly: the same filter taps (Resample.c `precompute_coeffs`), the same 22-bit
fixed-point weights and rounding (`normalize_coeffs_8bpc`, `clip8`) and the same uint8
intermediate between the horizontal and the vertical pass. On the CPU, Pillow itself runs.
The pass order is Pillow's up to 12.x, the versions detectron2 and the released checkpoints
used: horizontal first. Pillow 13 runs the vertical pass first when the height shrinks by more
than twice what the width does (`ImagingResampleInner`), which moves about a quarter of the
pixels by one grey level for such sizes (never for the usual camera frames);
`vertical_first=True` reproduces it.

Allowed dependencies: numpy, torch; Pillow for the CPU kernel.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

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


# Pillow's fixed point for 8-bit resampling: Resample.c PRECISION_BITS = 32 - 8 - 2.
_PIL_PRECISION_BITS = 22


@functools.lru_cache(maxsize=64)
def _bilinear_taps_numpy(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`bilinear_taps` as read-only numpy arrays, cached: a camera stream has one or two sizes.

    Bounded and holding host arrays only; device copies live in a `TapCache`.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # bilinear support 1.0, widened when down-scaling
    num_taps = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    # C's (int) cast truncates toward zero; negative starts are clamped to 0 right after.
    first = np.maximum((center - support + 0.5).astype(np.int64), 0)
    count = np.minimum((center + support + 0.5).astype(np.int64), in_size) - first
    offsets = np.arange(num_taps, dtype=np.int64)[None, :]
    used = offsets < count[:, None]
    distance = (offsets + first[:, None] - center[:, None] + 0.5) / filterscale
    weights = np.where(used, np.clip(1.0 - np.abs(distance), 0.0, None), 0.0)
    totals = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, totals, out=weights, where=totals != 0)
    fixed = np.floor(0.5 + weights * (1 << _PIL_PRECISION_BITS)).astype(np.int32)
    indices = np.where(used, offsets + first[:, None], first[:, None])
    indices.flags.writeable = False  # shared by every caller through the cache
    fixed.flags.writeable = False
    return indices, fixed


def bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's antialiased bilinear taps for resampling one axis from `in_size` to `out_size`.

    The triangle filter is widened by the down-scaling factor (antialiasing), each output
    sample's weights are normalised to sum 1 and then rounded to 22-bit fixed point, as in
    Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`.

    Returns:
        indices: (out_size, K) int64 source positions; unused taps repeat the first one.
        weights: (out_size, K) int32 fixed-point weights; unused taps are 0.
        Both are new CPU tensors (copies of the cached arrays).
    """
    indices, fixed = _bilinear_taps_numpy(int(in_size), int(out_size))
    return torch.tensor(indices), torch.tensor(fixed)


class TapCache:
    """`bilinear_taps` already on the device, per (in_size, out_size, device).

    A camera stream resizes every frame from the same size, so its taps are computed and
    copied to the device once instead of per frame. Owned by a `Preprocessor` (one per
    segmenter), bounded to `max_entries` axis resamplings (least recently used dropped).

    Attributes:
        hits: look-ups served from the cache.
        misses: look-ups that computed and copied taps.
    """

    def __init__(self, max_entries: int = 16) -> None:
        if max_entries < 1:
            raise ValueError(f'max_entries must be at least 1, got {max_entries}')
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[
            tuple[int, int, torch.device], tuple[torch.Tensor, torch.Tensor]
        ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, in_size: int, out_size: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(indices, weights) of `bilinear_taps(in_size, out_size)` on `device`; do not modify."""
        key = (int(in_size), int(out_size), torch.device(device))
        taps = self._entries.get(key)
        if taps is not None:
            self.hits += 1
            self._entries.move_to_end(key)
            return taps
        self.misses += 1
        indices, fixed = _bilinear_taps_numpy(key[0], key[1])
        taps = (torch.tensor(indices, device=key[2]), torch.tensor(fixed, device=key[2]))
        self._entries[key] = taps
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return taps


def _resample_axis(
    images: torch.Tensor, out_size: int, dim: int, taps: TapCache | None = None
) -> torch.Tensor:
    """One Pillow resampling pass of a uint8 tensor along `dim` (-1 width, -2 height).

    The resampled axis is moved first so that every tap gathers whole contiguous rows (a
    gather along the last axis is several times slower on CPU), and the taps are summed one by
    one so that a 4096-pixel frame needs no more than two output-sized int32 buffers.
    """
    in_size = int(images.shape[dim])
    if taps is not None:
        indices, weights = taps.get(in_size, out_size, images.device)
    else:
        indices, weights = bilinear_taps(in_size, out_size)
        indices, weights = indices.to(images.device), weights.to(images.device)
    rows = images.movedim(dim, 0).contiguous()
    weight_shape = (out_size,) + (1,) * (rows.dim() - 1)
    accumulator = torch.full(
        (out_size, *rows.shape[1:]),
        1 << (_PIL_PRECISION_BITS - 1),
        dtype=torch.int32,
        device=images.device,
    )
    for tap in range(indices.shape[1]):
        term = rows.index_select(0, indices[:, tap]).to(torch.int32)
        accumulator.add_(term.mul_(weights[:, tap].view(weight_shape)))
    resampled = (accumulator >> _PIL_PRECISION_BITS).clamp_(0, 255).to(torch.uint8)
    return resampled.movedim(0, dim)


def resize_uint8_torch(
    frame: torch.Tensor,
    size: tuple[int, int],
    vertical_first: bool = False,
    taps: TapCache | None = None,
) -> torch.Tensor:
    """Pillow's bilinear resize in torch ops, for frames on an accelerator.

    Args:
        frame: (H, W, C) uint8 on any device.
        size: (height, width) of the result.
        vertical_first: Pillow 13's pass order (see the module docstring); default Pillow <= 12's.
        taps: device taps to reuse across frames (a `Preprocessor`'s); None computes them.

    Returns:
        (height, width, C) uint8 on the frame's device; the frame itself if the size is equal.
    """
    height, width = int(size[0]), int(size[1])
    passes = [(width, 1), (height, 0)]
    if vertical_first:
        passes.reverse()
    for out_size, dim in passes:
        if frame.shape[dim] != out_size:
            frame = _resample_axis(frame, out_size, dim, taps)
    return frame


def resize_uint8_pil(
    frame: torch.Tensor, size: tuple[int, int], vertical_first: bool = False
) -> torch.Tensor:
    """The same resize by Pillow's C kernels, for frames on the CPU (several times faster there).

    One `Image.resize` per axis fixes the pass order: a one-axis resize is the same in every
    Pillow version, whereas Pillow 13's two-axis resize picks its own order.
    """
    from PIL import Image  # a CPU-only dependency of this one function

    height, width = int(size[0]), int(size[1])
    image = Image.fromarray(frame.contiguous().numpy())
    passes = [(width, image.height), (width, height)]
    if vertical_first:
        passes = [(image.width, height), (width, height)]
    for pass_size in passes:
        if image.size != pass_size:
            image = image.resize(pass_size, Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(image))


def resize_uint8(
    frame: torch.Tensor,
    size: tuple[int, int],
    vertical_first: bool = False,
    taps: TapCache | None = None,
) -> torch.Tensor:
    """Bilinear resize of an (H, W, 3) uint8 frame on its device, byte-equal to PIL.

    CPU frames go through Pillow's C kernels, accelerator frames through `resize_uint8_torch`
    (with `taps`, reused across frames); both give the same bytes (tests/model/
    test_preprocess.py checks them against each other and against `Image.resize`).

    Returns:
        (height, width, 3) uint8 on the frame's device.
    """
    if frame.dtype != torch.uint8 or frame.dim() != 3:
        raise ValueError(
            f'expected an (H, W, C) uint8 frame, got {tuple(frame.shape)} {frame.dtype}'
        )
    if tuple(frame.shape[:2]) == (int(size[0]), int(size[1])):
        return frame
    if frame.device.type == 'cpu':
        return resize_uint8_pil(frame, size, vertical_first)
    return resize_uint8_torch(frame, size, vertical_first, taps)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 numpy image resized to (height, width) with `resize_uint8`."""
    if image.shape[:2] == tuple(size):
        return image
    if not image.flags.writeable:  # e.g. np.asarray of a PIL image; torch wants writable memory
        image = image.copy()
    return resize_uint8(torch.from_numpy(np.ascontiguousarray(image)), size).numpy()


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


def mean_colour(pixel_mean: tuple[float, float, float]) -> tuple[int, int, int]:
    """The uint8 colour that normalises to (about) zero: the padding of uint8 network input."""
    return tuple(round(v) for v in pixel_mean)  # type: ignore[return-value]


def pad_uint8(
    images: torch.Tensor, fill: tuple[int, int, int], height: int, width: int
) -> torch.Tensor:
    """(B, 3, h, w) uint8 -> (B, 3, height, width) uint8, padded bottom/right with `fill`.

    `fill` is the mean colour: after the graph's normalisation the padding is within 0.5/std
    of the zero padding of the float route, and graphs that know their valid size zero it.
    """
    batch, channels, h, w = images.shape
    if (h, w) == (height, width):
        return images.contiguous()
    colour = torch.tensor(fill, dtype=torch.uint8, device=images.device).view(1, 3, 1, 1)
    padded = colour.expand(batch, channels, height, width).clone()
    padded[..., :h, :w] = images
    return padded


class Preprocessor:
    """Turns camera frames into network input.

    Holds its configuration and a `TapCache`: the resize taps of each frame size, kept on the
    device so that a stream of same-size frames does not recompute and copy them per frame.
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.taps = TapCache()

    def record_for(self, height: int, width: int) -> PreprocessRecord:
        """The geometry a (height, width) source image will get."""
        resized = compute_resized_size(height, width, self.config.short_side, self.config.max_size)
        return PreprocessRecord(
            source_size=(height, width),
            resized_size=resized,
            padded_size=padded_size(*resized, self.config.size_divisibility),
        )

    def __call__(
        self,
        image: np.ndarray,
        device: torch.device | str = 'cpu',
        dtype: torch.dtype = torch.float32,
    ) -> tuple[torch.Tensor, PreprocessRecord]:
        """Args:
            image: (H, W, 3) uint8 RGB.
            device: where the network input should live (resize, padding and normalisation run
                there; the frame is copied to it as uint8).
            dtype: the network's input type: float32 (normalised here) or uint8 (graphs that
                normalise inside, e.g. TensorRT engines: the frame goes in as uint8, padded
                with the mean colour, with no float round trip).

        Returns:
            (1, 3, H', W') padded network input of `dtype`, and its record.
        """
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f'expected an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}'
            )
        record = self.record_for(image.shape[0], image.shape[1])
        if not image.flags.writeable:
            # e.g. a view of a ROS message buffer; torch wants memory it may write to.
            image = image.copy()
        # The frame crosses to the device as uint8 (a third of float32) and is resized there.
        source = torch.from_numpy(np.ascontiguousarray(image)).to(device)
        tensor = resize_uint8(source, record.resized_size, taps=self.taps).permute(2, 0, 1)[None]
        if dtype == torch.uint8:
            height, width = record.padded_size
            return pad_uint8(tensor, mean_colour(self.config.pixel_mean), height, width), record
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
