"""PR / ROC curve plots (matplotlib, Agg canvas) and gallery panels (numpy / OpenCV).

Figures are built with `matplotlib.figure.Figure` directly, which renders with Agg and leaves the
global pyplot state (and any interactive backend) alone. Gallery panels are composed as arrays
(about 50x faster than a matplotlib figure per frame).

Gallery panel of one frame, a 2x2 grid: input image; ground truth (anomalies red, void darkened,
or the semantic / panoptic labels); anomaly heatmap (inferno, the `m2a-infer` colours);
prediction (pixels above the dataset's component threshold in red, or the open-set semantic map
with unknown in magenta, or the panoptic segments).

Allowed dependencies: numpy, matplotlib, OpenCV, Pillow, m2a_perception (visualize, metrics,
classes).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from m2a_perception.classes import UNKNOWN_ID, VOID_ID
from m2a_perception.metrics.pixel import PixelCurve
from m2a_perception.visualize import blend, colorize_labels, colorize_scalar, resize_to
from m2a_training.evaluation.datasets import EvalFrame
from m2a_training.evaluation.runner import (
    DatasetPlan,
    DatasetResult,
    FrameStats,
    Thresholds,
)

# Points drawn per curve: exact float32 curves can hold millions of points.
MAX_CURVE_POINTS = 4000
# Gallery panels are scaled into this width range: large frames stay small, small ones legible.
PANEL_WIDTH = 768
MIN_PANEL_WIDTH = 384
CAPTION_HEIGHT = 22
ANOMALY_COLOR = np.array([255, 0, 0], dtype=np.uint8)


def _subsample(count: int) -> np.ndarray:
    if count <= MAX_CURVE_POINTS:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, MAX_CURVE_POINTS).round().astype(np.int64))


def _curve_label(result: DatasetResult) -> str:
    assert result.pixel is not None
    return (
        f'{result.title} (AuPRC {100 * result.pixel.auprc:.2f}, '
        f'FPR95 {100 * result.pixel.fpr95:.2f})'
    )


def save_curve_plots(results: Sequence[DatasetResult], folder: Path) -> list[Path]:
    """Write `pr_curves.png` and `roc_curves.png` with one line per dataset with anomalies."""
    with_curves = [
        r for r in results if r.curve is not None and r.pixel is not None and r.curve.num_positives
    ]
    if not with_curves:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in ('pr', 'roc'):
        figure = Figure(figsize=(6.4, 5.2), dpi=120)
        axes = figure.add_subplot()
        for result in with_curves:
            curve: PixelCurve = result.curve  # type: ignore[assignment]
            keep = _subsample(curve.thresholds.size)
            if kind == 'pr':
                axes.plot(curve.tpr[keep], curve.precision[keep], label=_curve_label(result))
            else:
                axes.plot(curve.fpr[keep], curve.tpr[keep], label=_curve_label(result))
        if kind == 'pr':
            axes.set_xlabel('recall (TPR)')
            axes.set_ylabel('precision')
            axes.set_title('Pixel-level precision-recall')
        else:
            axes.plot([0, 1], [0, 1], color='0.7', linestyle=':', linewidth=1)
            axes.axhline(0.95, color='0.6', linestyle='--', linewidth=0.8)
            axes.set_xlabel('false-positive rate')
            axes.set_ylabel('true-positive rate')
            axes.set_title('Pixel-level ROC (dashed: TPR 95 %)')
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc='best')
        figure.tight_layout()
        path = folder / f'{kind}_curves.png'
        figure.savefig(path)
        written.append(path)
    return written


def _overlay(image: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> np.ndarray:
    out = image.copy()
    if mask.any():
        tinted = (1 - alpha) * image[mask].astype(np.float32) + alpha * color.astype(np.float32)
        out[mask] = np.clip(tinted, 0, 255).astype(np.uint8)
    return out


def _id_colors(ids: np.ndarray) -> np.ndarray:
    """Stable pseudo-random colours per segment id; id 0 (VOID) black."""
    values, inverse = np.unique(ids, return_inverse=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(40, 256, size=(values.size, 3), dtype=np.uint8)
    palette[values == 0] = 0
    return palette[inverse.reshape(ids.shape)]


def _semantic_colors(labels: np.ndarray, num_known: int | None) -> np.ndarray:
    shown = labels.copy()
    if num_known is not None and num_known != UNKNOWN_ID:
        # Non-Cityscapes label sets: map their anomaly / unknown id onto the palette's unknown.
        shown[labels == num_known] = UNKNOWN_ID
    return colorize_labels(shown)


def _heat_range(score: np.ndarray, fixed: tuple[float, float] | None) -> tuple[float, float]:
    if fixed is not None:
        return fixed
    low, high = float(np.min(score)), float(np.max(score))
    return low, high if high > low else low + 1e-6


def render_gallery_panel(
    plan: DatasetPlan,
    frame: EvalFrame,
    arrays: dict[str, np.ndarray],
    stats: FrameStats,
    thresholds: Thresholds,
    heatmap_range: tuple[float, float] | None = (0.0, 1.0),
) -> bytes:
    """Four-panel PNG of one frame (input, ground truth, heatmap, prediction)."""
    image = frame.image
    score = arrays['score'].astype(np.float32)
    dataset = plan.dataset
    if 'label' in arrays:
        label = arrays['label']
        truth = _overlay(image, label == VOID_ID, np.zeros(3, np.uint8), 0.6)
        truth = _overlay(truth, label == 1, ANOMALY_COLOR, 0.6)
        threshold = thresholds.component.get(plan.name, math.nan)
        predicted = score > threshold if math.isfinite(threshold) else np.zeros_like(label, bool)
        prediction = _overlay(image, predicted, ANOMALY_COLOR, 0.6)
        prediction_title = f'score > {threshold:.3g} (best-F1 threshold)'
    elif 'semantic_pred' in arrays:
        num_known = dataset.semantic_classes
        truth = blend(image, _semantic_colors(arrays['semantic_gt'], num_known), 0.6)
        labels = arrays['semantic_pred'].copy()
        point = thresholds.calibrated or thresholds.towns.get(frame.group or '')
        prediction_title = 'closed-set labels'
        if point is not None and num_known is not None:
            labels[score > point.threshold] = num_known
            prediction_title = f'open-set labels (unknown: score > {point.threshold:.3g})'
        prediction = blend(image, _semantic_colors(labels, num_known), 0.6)
    elif 'panoptic_pred' in arrays:
        truth = blend(image, _id_colors(arrays['panoptic_gt']), 0.6)
        prediction = blend(image, _id_colors(arrays['panoptic_pred']), 0.6)
        prediction_title = 'panoptic segments'
    else:
        truth = prediction = image
        prediction_title = 'prediction'
    heat = colorize_scalar(score, *_heat_range(score, heatmap_range))
    panels = [
        (image, frame.name),
        (truth, 'ground truth'),
        (heat, 'anomaly score'),
        (prediction, prediction_title),
    ]
    header = f'{dataset.title}: error {stats.error:.3f} ({_describe_stats(stats)})'
    return encode_png(compose_panels(panels, header))


def _caption(text: str, width: int, height: int = CAPTION_HEIGHT) -> np.ndarray:
    bar = np.full((height, width, 3), 255, dtype=np.uint8)
    scale = height / 40.0
    cv2.putText(
        bar, text, (4, int(height * 0.7)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
        cv2.LINE_AA,
    )  # fmt: skip
    return bar


def compose_panels(panels: Sequence[tuple[np.ndarray, str]], header: str) -> np.ndarray:
    """A 2x2 grid of captioned (H, W, 3) uint8 panels under a header line.

    Panels are scaled to a width in [`MIN_PANEL_WIDTH`, `PANEL_WIDTH`] (the label-like second
    and fourth with nearest neighbours).
    """
    height, width = panels[0][0].shape[:2]
    target = min(max(width, MIN_PANEL_WIDTH), PANEL_WIDTH)
    height, width = max(1, round(height * target / width)), target
    cells = []
    for position, (panel, title) in enumerate(panels):
        panel = resize_to(panel, (height, width), nearest=position in (1, 3))
        cells.append(np.concatenate([_caption(title, width), panel], axis=0))
    while len(cells) < 4:
        cells.append(np.full_like(cells[0], 255))
    grid = np.concatenate(
        [np.concatenate(cells[:2], axis=1), np.concatenate(cells[2:4], axis=1)], axis=0
    )
    return np.concatenate([_caption(header, grid.shape[1]), grid], axis=0)


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 RGB -> PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format='PNG', compress_level=3)
    return buffer.getvalue()


def _describe_stats(stats: FrameStats) -> str:
    parts = []
    if stats.ap is not None:
        parts.append(f'AP {stats.ap:.3f}')
    if stats.fpr_at_tpr95_threshold is not None:
        parts.append(f'FPR@TPR95 thr. {stats.fpr_at_tpr95_threshold:.3f}')
    if stats.miou is not None:
        parts.append(f'mIoU {stats.miou:.3f}')
    if stats.pq is not None:
        parts.append(f'PQ {stats.pq:.3f}')
    return ', '.join(parts) or 'no ground truth'


def write_gallery(result: DatasetResult, folder: Path, limit: int) -> list[Path]:
    """Write the dataset's worst frames as `<folder>/<rank>_<frame>.png`."""
    written = []
    for rank, item in enumerate(result.gallery[:limit], start=1):
        safe = ''.join(c if c.isalnum() or c in '-_.' else '_' for c in item.name)
        path = folder / f'{rank:02d}_{safe}.png'
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(item.png)
        written.append(path)
    return written
