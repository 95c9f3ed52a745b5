"""m2a-infer: open-set segmentation of one image, written as pictures and JSON.

Writes into --out:
    anomaly_heatmap.png   anomaly score in a colour map, with a colour bar
    semantic_overlay.png  open-set semantic labels over the image (unknown in magenta)
    panoptic_overlay.png  panoptic segments over the image, unknown things boxed
    segments.json         the segment list (id, kind, class, scores, area, box in source pixels)

Examples:
    m2a-infer street.png --checkpoint model.safetensors --out results/ --flip
    m2a-infer street.png --checkpoint model.safetensors --engine engines/<name>.onnx --out res/
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from m2a_perception.classes import class_names
from m2a_perception.cli.common import setup_logging
from m2a_perception.inference.torch_backend import PRECISIONS
from m2a_perception.postprocess import SCORERS, PostprocessConfig
from m2a_perception.postprocess.config import REFINEMENT_MODES, UNIT_RANGE_SCORERS
from m2a_perception.runtime.loader import (
    KINDS,
    BackendError,
    BackendSpec,
    build_segmenter,
    engine_kind,
)
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
from m2a_perception.weights import CheckpointError

LOGGER = logging.getLogger(__name__)

# Scorers whose values are about [0, 1]; the others are drawn over their observed range.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='m2a-infer', description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('image', type=Path, help='input image (any format Pillow reads)')
    parser.add_argument(
        '--checkpoint', type=Path, required=True, help='m2a safetensors checkpoint'
    )
    parser.add_argument('--out', type=Path, required=True, help='output folder (created)')
    parser.add_argument(
        '--backend',
        choices=KINDS,
        default='torch',
        help='torch / torch-compile run the checkpoint; the engine kinds run --engine',
    )
    parser.add_argument(
        '--engine',
        type=Path,
        help='engine from m2a-build-engine for --checkpoint (opened through its sidecar)',
    )
    parser.add_argument('--precision', choices=PRECISIONS, default='fp32')
    parser.add_argument(
        '--allow-gate-failed',
        action='store_true',
        help='use an engine whose accuracy gate failed (explicit override)',
    )
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--scorer', choices=SCORERS, default='mask2anomaly')
    parser.add_argument('--refinement', choices=REFINEMENT_MODES, default='code')
    parser.add_argument(
        '--anomaly-threshold',
        type=float,
        default=0.5,
        help='open-set semantic threshold (Eq. 14); pixels scoring at least this are unknown',
    )
    parser.add_argument('--flip', action='store_true', help='average with a flipped pass')
    parser.add_argument('--scf', action='store_true', help='CSL structure-constrained fusion')
    parser.add_argument('--no-mining', action='store_true', help='skip unknown-instance mining')
    parser.add_argument('--alpha', type=float, default=0.5, help='overlay opacity')
    parser.add_argument('-v', '--verbose', action='store_true')
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        config = PostprocessConfig(
            scorer=args.scorer,
            refinement=args.refinement,
            anomaly_threshold=args.anomaly_threshold,
            flip=args.flip,
            scf=args.scf,
            mining=not args.no_mining,
        )
        image = read_rgb(args.image)
        kind = args.backend
        if args.engine is not None and kind in ('torch', 'torch-compile'):
            kind = engine_kind(args.engine)
        spec = BackendSpec(
            kind=kind,
            checkpoint=str(args.checkpoint),
            engine_path='' if args.engine is None else str(args.engine),
            device=args.device,
            precision=args.precision,
            allow_gate_failed=args.allow_gate_failed,
        )
        segmenter, _ = build_segmenter(spec, config)
        output = segmenter(image)
        written = write_outputs(args.out, image, output, args.scorer, args.alpha)
    except (BackendError, CheckpointError, ValueError, OSError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    counts = {}
    for segment in output.segments:
        counts[segment.kind.value] = counts.get(segment.kind.value, 0) + 1
    LOGGER.info('segments by kind: %s', counts or 'none')
    for path in written:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
