"""Colourising for heatmaps and overlays, shared by `m2a-infer` and the ROS node's image topics.

Every function takes and returns host numpy arrays; images are (H, W, 3) uint8 RGB.

Allowed dependencies: numpy, OpenCV, cityscapesscripts (through `m2a_perception.classes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from m2a_perception.classes import UNKNOWN_COLOR, semantic_palette
from m2a_perception.types import Segment, SegmentKind

DEFAULT_COLORMAP = cv2.COLORMAP_INFERNO
COLORMAP_IDS: dict[str, int] = {
    'inferno': cv2.COLORMAP_INFERNO,
    'turbo': cv2.COLORMAP_TURBO,
    'jet': cv2.COLORMAP_JET,
    'viridis': cv2.COLORMAP_VIRIDIS,
    'magma': cv2.COLORMAP_MAGMA,
    'plasma': cv2.COLORMAP_PLASMA,
    'hot': cv2.COLORMAP_HOT,
}
"""OpenCV colour maps by the names the node's `viz.colormap` parameter accepts."""
COLORMAPS = tuple(COLORMAP_IDS)


def colormap_lut(colormap: int = DEFAULT_COLORMAP) -> np.ndarray:
    """(256, 3) uint8 RGB lookup table of an OpenCV colormap (for legends that must match)."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)[:, 0, :]


def colorize_scalar(
    values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0, colormap: int = DEFAULT_COLORMAP
) -> np.ndarray:
    """Map a scalar field (e.g. the anomaly map) to colours.

    Args:
        values: (H, W) float; NaN is drawn as `vmin`.
        vmin: value drawn with the first colour; lower values are clipped.
        vmax: value drawn with the last colour; higher values are clipped.
        colormap: an OpenCV colormap id (default inferno).

    Returns:
        (H, W, 3) uint8 RGB.

    Raises:
        ValueError: if `values` is not 2-D or `vmax <= vmin`.
    """
    if values.ndim != 2:
        raise ValueError(f'values must be (H, W), got shape {values.shape}')
    if not vmax > vmin:
        raise ValueError(f'vmax must exceed vmin, got {vmin}..{vmax}')
    scaled = (np.nan_to_num(values.astype(np.float32), nan=vmin) - vmin) / (vmax - vmin)
    indices = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return colormap_lut(colormap)[indices]


def colorize_labels(labels: np.ndarray, palette: np.ndarray | None = None) -> np.ndarray:
    """Colour a label map (train ids, unknown id, void) with the Cityscapes palette.

    Args:
        labels: (H, W) integer label map with values 0..255.
        palette: (256, 3) uint8 RGB; default `semantic_palette()` (unknown magenta, void black).

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if labels.ndim != 2:
        raise ValueError(f'labels must be (H, W), got shape {labels.shape}')
    palette = semantic_palette() if palette is None else palette
    return palette[np.clip(labels, 0, 255).astype(np.uint8)]


def segment_colors(
    segments: Sequence[Segment], palette: np.ndarray | None = None
) -> dict[int, tuple[int, int, int]]:
    """A colour per segment id: stuff in its class colour, things and unknown things jittered.

    Instances of one class get distinct but recognisable shades; the jitter depends only on the
    segment id, so colours are stable for a given output.
    """
    palette = semantic_palette() if palette is None else palette
    colors: dict[int, tuple[int, int, int]] = {}
    for segment in segments:
        if segment.kind is SegmentKind.UNKNOWN_THING:
            base = np.asarray(UNKNOWN_COLOR, dtype=np.int32)
        else:
            base = palette[segment.class_id].astype(np.int32)
        if segment.kind is not SegmentKind.STUFF:
            rng = np.random.default_rng(segment.id)
            base = base + rng.integers(-50, 51, size=3)
        r, g, b = (int(v) for v in np.clip(base, 0, 255))
        colors[segment.id] = (r, g, b)
    return colors


def colorize_panoptic(
    segment_ids: np.ndarray, segments: Sequence[Segment], palette: np.ndarray | None = None
) -> np.ndarray:
    """Colour a panoptic segment-id map; id 0 (no segment) is black.

    Args:
        segment_ids: (H, W) integer id map.
        segments: the segments the ids refer to.
        palette: class palette, default `semantic_palette()`.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if segment_ids.ndim != 2:
        raise ValueError(f'segment_ids must be (H, W), got shape {segment_ids.shape}')
    max_id = max((s.id for s in segments), default=0)
    lookup = np.zeros((max(max_id, int(segment_ids.max(initial=0))) + 1, 3), dtype=np.uint8)
    for segment_id, color in segment_colors(segments, palette).items():
        lookup[segment_id] = color
    return lookup[segment_ids.astype(np.int64)]


def blend(
    image: np.ndarray, colors: np.ndarray, alpha: float = 0.5, out: np.ndarray | None = None
) -> np.ndarray:
    """(1 - alpha) * image + alpha * colors, both (H, W, 3) uint8 RGB of the same size.

    `out`, if given, is a contiguous (H, W, 3) uint8 array that receives the result (no
    allocation; e.g. a message buffer).
    """
    if image.shape != colors.shape or image.ndim != 3:
        raise ValueError(f'image {image.shape} and colors {colors.shape} must be equal (H, W, 3)')
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f'alpha must be in [0, 1], got {alpha}')
    if out is not None and (out.shape != image.shape or out.dtype != np.uint8):
        raise ValueError(f'out must be {image.shape} uint8, got {out.shape} {out.dtype}')
    return cv2.addWeighted(image, 1.0 - alpha, colors, alpha, 0.0, dst=out)


def draw_segment_boundaries(
    image: np.ndarray, segment_ids: np.ndarray, color: tuple[int, int, int] = (255, 255, 255)
) -> np.ndarray:
    """Draw one-pixel outlines where the segment id changes (a copy of `image` is returned)."""
    if image.shape[:2] != segment_ids.shape:
        raise ValueError(f'image {image.shape[:2]} and ids {segment_ids.shape} sizes differ')
    ids = segment_ids.astype(np.int64)
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    out = image.copy()
    out[edge] = color
    return out


def draw_unknown_boxes(
    image: np.ndarray,
    segments: Sequence[Segment],
    source_size: tuple[int, int],
    color: tuple[int, int, int] = UNKNOWN_COLOR,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Draw the boxes of unknown things (source-pixel boxes, rescaled to `image`) on a copy.

    With `out` (a contiguous array of the image's shape, possibly `image` itself) the boxes are
    drawn there instead of on a new copy.
    """
    if out is None:
        out = image.copy()
    elif out is not image:
        np.copyto(out, image)
    scale_x = image.shape[1] / source_size[1]
    scale_y = image.shape[0] / source_size[0]
    thickness = max(1, round(min(image.shape[:2]) / 300))
    for segment in segments:
        if segment.kind is not SegmentKind.UNKNOWN_THING:
            continue
        x0, y0, x1, y1 = segment.bbox
        top_left = (int(x0 * scale_x), int(y0 * scale_y))
        bottom_right = (max(0, int(x1 * scale_x) - 1), max(0, int(y1 * scale_y) - 1))
        cv2.rectangle(out, top_left, bottom_right, color, thickness)
    return out


def resize_to(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize an image or map to (height, width); nearest for label and id maps."""
    if image.shape[:2] == tuple(size):
        return image
    interpolation = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
