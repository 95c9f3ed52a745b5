"""Pictures of one segmentation: anomaly heatmap, semantic and panoptic overlays, segment JSON.

The one writer behind `m2a-infer` and the demo gallery (`m2a_training.demo`).

Allowed dependencies: numpy, Pillow, matplotlib (lazily, for the heatmap's colour bar),
m2a_perception (classes, types, visualize).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from m2a_perception.classes import class_names
from m2a_perception.postprocess.config import UNIT_RANGE_SCORERS
from m2a_perception.types import SegmentationOutput
from m2a_perception.visualize import (
    blend,
    colorize_labels,
    colorize_panoptic,
    colorize_scalar,
    colormap_lut,
    draw_segment_boundaries,
    draw_unknown_boxes,
)


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image Pillow opens (alpha dropped, greyscale expanded)."""
    with Image.open(path) as image:
        # A writable copy: torch warns on read-only arrays, which Pillow hands out.
        return np.array(image.convert('RGB'))


def save_heatmap(path: Path, anomaly: np.ndarray, scorer: str) -> None:
    """Anomaly heatmap with a colour bar; colours equal `visualize.colorize_scalar`."""
    import matplotlib

    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap

    if scorer in UNIT_RANGE_SCORERS:
        vmin, vmax = 0.0, 1.0
    else:
        vmin, vmax = float(np.min(anomaly)), float(np.max(anomaly))
        vmax = vmax if vmax > vmin else vmin + 1e-6
    colors = colorize_scalar(anomaly, vmin, vmax)
    height, width = anomaly.shape
    figure, axes = plt.subplots(figsize=(10.0, 10.0 * height / width + 0.8), dpi=100)
    try:
        axes.imshow(colors, interpolation='nearest')
        axes.set_axis_off()
        mappable = plt.cm.ScalarMappable(
            norm=plt.Normalize(vmin, vmax), cmap=ListedColormap(colormap_lut() / 255.0)
        )
        bar = figure.colorbar(mappable, ax=axes, orientation='horizontal', fraction=0.05, pad=0.02)
        bar.set_label(f'anomaly score ({scorer}); higher = more anomalous')
        figure.savefig(path, bbox_inches='tight')
    finally:
        plt.close(figure)


def write_outputs(
    out_dir: Path, image: np.ndarray, output: SegmentationOutput, scorer: str, alpha: float
) -> list[Path]:
    """Write the heatmap, the overlays and the segment JSON; return the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    host = output.cpu()
    written = []
    heatmap_path = out_dir / 'anomaly_heatmap.png'
    save_heatmap(heatmap_path, host.anomaly_map.numpy(), scorer)
    written.append(heatmap_path)
    if tuple(image.shape[:2]) != output.output_size:
        image = np.asarray(
            Image.fromarray(image).resize(output.output_size[::-1], Image.Resampling.BILINEAR)
        )
    if host.semantic is not None:
        overlay = blend(image, colorize_labels(host.semantic.numpy()), alpha)
        path = out_dir / 'semantic_overlay.png'
        Image.fromarray(overlay).save(path)
        written.append(path)
    if host.panoptic is not None:
        ids = host.panoptic.numpy()
        overlay = blend(image, colorize_panoptic(ids, host.segments), alpha)
        overlay = draw_segment_boundaries(overlay, ids)
        overlay = draw_unknown_boxes(overlay, host.segments, output.source_size)
        path = out_dir / 'panoptic_overlay.png'
        Image.fromarray(overlay).save(path)
        written.append(path)
    names = class_names(include_unknown=True)
    records = []
    for segment in host.segments:
        record = segment.to_dict()
        record['class_name'] = names[segment.class_id] if segment.class_id < len(names) else None
        records.append(record)
    path = out_dir / 'segments.json'
    path.write_text(json.dumps(records, indent=2))
    written.append(path)
    return written
