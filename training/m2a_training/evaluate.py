"""m2a-eval: evaluate a checkpoint or an exported engine on the benchmark datasets.

Writes into --out:
    results.md, results.json      Tables 1-4 of the paper (pixel AuPRC / FPR95; component sIoU /
                                  PPV / F1*; closed-set mIoU and open-IoU; open-set PQ / SQ / RQ)
                                  as far as the datasets and the model allow, plus every metric,
                                  the protocols, thresholds, notes and throughput
    plots/pr_curves.png, plots/roc_curves.png
    gallery/<dataset>/NN_<frame>.png   the worst frames: input, ground truth, heatmap, prediction
    per_frame/<dataset>.csv       per-frame AP / FPR / mIoU / PQ and the gallery ranking error

Datasets (`--dataset NAME=PATH`, repeatable): smiyc_ra21, smiyc_ro21, fs_lost_and_found,
fs_static, road_anomaly, lost_and_found, synthetic (a synthetic world root or its anomaly_val/),
street_hazards, cityscapes (val split; a synthetic world root works too), coco, coco_k5,
coco_k10, coco_k20. The readers accept the official downloads and apply the official splits
(docs/evaluation.md, "The benchmarks as downloaded"); each run first prints the frame count of
every dataset, and `--list-frames` stops there.

Scoring protocol (`--protocol official` (default) or `--protocol node`): how logits become the
anomaly map. `official` follows `anomaly_utils/anomaly_inference.py` of the official code
(source-resolution scoring, refinement only with two or more confident queries, flip averaging
on the mirrored source image, bilinear labels); `node` is the ROS node's fast path (mask-
resolution scoring, refinement with one query, no flip). Each switch can be set on its own:
`--scoring-resolution`, `--refinement-min-queries`, `--flip/--no-flip`, `--label-upsampling`.

Pixel protocols (`--protocol NAME` for all datasets, `--protocol DATASET=NAME` for one):
smiyc (SegmentMeIfYouCan conventions, exact float16 curve), smiyc_binned (the leaderboard's
768 percentile bins), fishyscapes (exact float32), mask2anomaly (the official script:
interpolated FPR95, anomaly-free frames skipped). Default: the leaderboard's, smiyc_binned on
smiyc_ra21 / smiyc_ro21 and smiyc elsewhere. Component metrics binarise at the best-pixel-F1
threshold of the same curve, as SMIYC does; the report header names each protocol.

Open-set threshold: `--calibrate-on NAME` picks it at 95 % TPR on NAME (DenseHybrid's rule on
half-resolution maps) and applies it to every dataset: open-IoU where there are semantic labels,
TPR / FPR elsewhere. StreetHazards always also reports its t5 <-> t6 cross-calibrated open-IoU.

Two passes keep memory flat: pass 1 runs the model and writes each frame's score map to a disk
cache (float16, or float32 where float32 thresholds follow; about 6-10 MB per 1024x2048 frame);
pass 2 computes the threshold-dependent metrics from it (see `m2a_training.evaluation.runner`).

Split a large evaluation over processes with the training launcher:
    torchrun --standalone --nproc_per_node 4 -m m2a_training.cli.evaluate \\
        --checkpoint ... --out ...

Examples:
    m2a-eval --checkpoint model.safetensors --dataset smiyc_ra21=data/RoadAnomaly21 \
        --dataset fs_lost_and_found=data/fs_laf --out eval/
    m2a-eval --engine model_1024x2048.onnx --checkpoint model.safetensors \
        --dataset cityscapes=data/cityscapes --dataset fs_static=data/fs_static \
        --calibrate-on fs_static --out eval_onnx/
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from m2a_perception.metrics.pixel import PIXEL_PROTOCOLS, PixelProtocol, get_pixel_protocol
from m2a_perception.postprocess import SCORING_PROTOCOLS, PostprocessConfig
from m2a_perception.postprocess.config import UNIT_RANGE_SCORERS
from m2a_perception.runtime.loader import (
    BackendSpec,
    engine_kind,
    load_backend,
    require_instance_head,
)
from m2a_perception.weights import WriteFailedError
from m2a_perception.weights.checkpoint import atomic_write, write_failure
from m2a_training.data.benchmarks import BenchmarkOptions
from m2a_training.distributed import DistributedContext
from m2a_training.evaluation.datasets import (
    LEADERBOARD_PIXEL_PROTOCOLS,
    AnomalyEvalDataset,
    EvalDataset,
    open_eval_dataset,
    parse_dataset_spec,
)
from m2a_training.evaluation.plots import render_gallery_panel, save_curve_plots, write_gallery
from m2a_training.evaluation.report import (
    build_tables,
    report_json,
    report_markdown,
    write_json,
    write_per_frame_csv,
)
from m2a_training.evaluation.runner import (
    EvalOptions,
    EvaluationResult,
    build_plans,
    run_evaluation,
)

LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """What one `m2a-eval` run evaluates and how (built by `m2a_training.cli.evaluate`).

    Field names follow the command-line flags (`--no-panoptic` -> `no_panoptic`); the CLI module
    documents each one in its --help. `None` means "the protocol's default" for the switches.
    """

    out: Path
    dataset: tuple[str, ...]
    checkpoint: Path | None = None
    engine: Path | None = None
    backend: str = 'torch'
    precision: str = 'fp32'
    allow_gate_failed: bool = False
    method_name: str | None = None
    limit: int | None = None
    streethazards_convention: str = 'mask2anomaly'
    workers: int = 2
    unknown_labels: str = 'error'
    lost_and_found_split: str = 'testNoKnown'
    lost_and_found_root: Path | None = None
    cityscapes_root: Path | None = None
    fs_static_version: int | None = None
    list_frames: bool = False
    protocol: tuple[str, ...] = ()
    calibrate_on: str | None = None
    calibration_scale: float = 0.5
    calibration_mantissa_bits: int = 16
    no_panoptic: bool = False
    scorer: str | None = None
    refinement: str | None = None
    scoring_resolution: str | None = None
    refinement_min_queries: int | None = None
    flip: bool | None = None
    scf: bool = False
    no_mining: bool = False
    mining_split: str | None = None
    label_upsampling: str | None = None
    gallery: int = 8
    cache_dir: Path | None = None
    keep_cache: bool = False
    no_progress: bool = False


def scoring_protocol_of(specs: Sequence[str]) -> str:
    """The scoring protocol named among the `--protocol` values (the last wins; 'official')."""
    named = [spec for spec in specs if spec in SCORING_PROTOCOLS]
    return named[-1] if named else 'official'


def parse_protocols(specs: Sequence[str], names: list[str]) -> dict[str, PixelProtocol]:
    """`--protocol` values -> pixel protocol per dataset name (later values win).

    Scoring-protocol names (`SCORING_PROTOCOLS`) are skipped; see `scoring_protocol_of`.

    Raises:
        ValueError: unknown protocol or a dataset that is not evaluated.
    """
    default: PixelProtocol | None = None  # None: the leaderboard's protocol of each dataset
    per_dataset: dict[str, PixelProtocol] = {}
    for spec in specs:
        if spec in SCORING_PROTOCOLS:
            continue
        dataset, separator, protocol = spec.rpartition('=')
        if protocol not in PIXEL_PROTOCOLS:
            raise ValueError(f'unknown protocol {protocol!r}; choose from {PIXEL_PROTOCOLS}')
        if not separator:
            default = get_pixel_protocol(protocol)
            per_dataset = {}
            continue
        if dataset not in names:
            raise ValueError(f'--protocol names dataset {dataset!r}, which is not evaluated')
        per_dataset[dataset] = get_pixel_protocol(protocol)
    leaderboard = {
        name: get_pixel_protocol(LEADERBOARD_PIXEL_PROTOCOLS.get(name, 'smiyc')) for name in names
    }
    return {name: per_dataset.get(name, default or leaderboard[name]) for name in names}


def benchmark_options(settings: EvaluateSettings) -> BenchmarkOptions:
    """The dataset flags as reader options."""
    return BenchmarkOptions(
        strict_labels=settings.unknown_labels == 'error',
        lost_and_found_split=settings.lost_and_found_split,
        lost_and_found_root=settings.lost_and_found_root,
        cityscapes_root=settings.cityscapes_root,
        fs_static_version=settings.fs_static_version,
    )


def dataset_description(dataset: EvalDataset) -> str:
    """Which split of which folder a dataset reads, for the frame-count line."""
    if isinstance(dataset, AnomalyEvalDataset):
        return f'{dataset.reader.name} in {dataset.reader.root}'
    return type(dataset).__name__


def open_datasets(
    specs: Sequence[str], convention: str, options: BenchmarkOptions | None = None
) -> list[EvalDataset]:
    """Open every `NAME=PATH`; all problems of one dataset are reported together."""
    datasets = []
    seen = set()
    for spec in specs:
        name, path = parse_dataset_spec(spec)
        if name in seen:
            raise ValueError(f'dataset {name!r} given twice')
        seen.add(name)
        datasets.append(
            open_eval_dataset(name, path, streethazards_convention=convention, options=options)  # type: ignore[arg-type]
        )
    return datasets


def postprocess_config(settings: EvaluateSettings) -> PostprocessConfig:
    """The scoring protocol of `--protocol`, with every switch given on the command line."""
    switches = {
        'scorer': settings.scorer,
        'refinement': settings.refinement,
        'scoring_resolution': settings.scoring_resolution,
        'refinement_min_queries': settings.refinement_min_queries,
        'flip': settings.flip,
        'label_upsampling': settings.label_upsampling,
        'mining_split': settings.mining_split,
    }
    overrides = {name: value for name, value in switches.items() if value is not None}
    return PostprocessConfig.for_protocol(
        scoring_protocol_of(settings.protocol),
        scf=settings.scf,
        mining=not settings.no_mining,
        **overrides,
    )


def write_report(
    result: EvaluationResult, out: Path, run: dict[str, Any], gallery_size: int
) -> dict[str, list[Path]]:
    """Tables, plots, gallery and per-frame CSVs under `out` (rank 0)."""
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {
        'plots': save_curve_plots(list(result.datasets.values()), out / 'plots'),
        'gallery': [],
        'per-frame': [],
    }
    for name, dataset_result in result.datasets.items():
        files['gallery'] += write_gallery(dataset_result, out / 'gallery' / name, gallery_size)
        files['per-frame'].append(
            write_per_frame_csv(dataset_result, out / 'per_frame' / f'{name}.csv')
        )
    tables = build_tables(result, run['method'])
    relative = {kind: [str(p.relative_to(out)) for p in paths] for kind, paths in files.items()}
    markdown = report_markdown(result, tables, run, relative)
    atomic_write(out / 'results.md', lambda tmp: tmp.write_text(markdown))
    write_json(report_json(result, tables, {**run, 'files': relative}), out / 'results.json')
    files['report'] = [out / 'results.md', out / 'results.json']
    return files


def backend_spec(settings: EvaluateSettings, device: torch.device) -> BackendSpec:
    """The loader spec of --checkpoint / --engine (the engine kind from its suffix)."""
    if settings.checkpoint is None:
        raise ValueError(
            'pass --checkpoint CKPT (and --engine ENGINE to evaluate an engine of it)'
        )
    kind = settings.backend if settings.engine is None else engine_kind(settings.engine)
    return BackendSpec(
        kind=kind,
        checkpoint=str(settings.checkpoint),
        engine_path='' if settings.engine is None else str(settings.engine),
        device=str(device),
        precision=settings.precision,
        allow_gate_failed=settings.allow_gate_failed,
    )


def run(settings: EvaluateSettings, context: DistributedContext, device: torch.device) -> int:
    """Open the datasets, evaluate in two passes and write the report (rank 0); exit status."""
    datasets = open_datasets(
        settings.dataset, settings.streethazards_convention, benchmark_options(settings)
    )
    for dataset in datasets:
        print(f'dataset {dataset.name}: {len(dataset)} frames ({dataset_description(dataset)})')
    if settings.list_frames:
        return 0
    names = [dataset.name for dataset in datasets]
    if settings.calibrate_on is not None:
        if settings.calibrate_on not in names:
            raise ValueError(f'--calibrate-on {settings.calibrate_on!r} is not among the datasets')
        if not next(d for d in datasets if d.name == settings.calibrate_on).has_anomaly:
            raise ValueError(f'--calibrate-on {settings.calibrate_on!r} has no anomaly labels')
    if settings.limit is not None and settings.limit < 1:
        raise ValueError('--limit must be at least 1')
    protocols = parse_protocols(settings.protocol, names)
    base_postprocess = postprocess_config(settings)
    loaded = load_backend(backend_spec(settings, device))
    require_instance_head(loaded, base_postprocess)  # as the node's loader, before a frame
    options = EvalOptions(
        protocols=protocols,
        cache_dir=settings.cache_dir or settings.out / 'cache',
        calibrate_on=settings.calibrate_on,
        calibration_scale=settings.calibration_scale,
        calibration_mantissa_bits=settings.calibration_mantissa_bits,
        gallery_size=max(0, settings.gallery),
        limit=settings.limit,
        num_workers=max(0, settings.workers),
        keep_cache=settings.keep_cache,
        progress=not settings.no_progress,
        heatmap_range=(0.0, 1.0) if base_postprocess.scorer in UNIT_RANGE_SCORERS else None,
    )
    num_classes = loaded.config.num_classes
    plans = build_plans(
        datasets,
        loaded.backend,
        loaded.config.preprocess,
        num_classes,
        base_postprocess,
        options,
        context,
        panoptic=not settings.no_panoptic,
    )
    render = functools.partial(render_gallery_panel, heatmap_range=options.heatmap_range)
    result = run_evaluation(plans, options, context, num_classes, render)
    if result is None:
        return 0
    run = {
        'method': settings.method_name
        or Path(loaded.spec.engine_path or loaded.spec.checkpoint).stem,
        'backend': loaded.describe(),
        'device': str(device),
        'scoring_protocol': scoring_protocol_of(settings.protocol),
        'postprocess': base_postprocess.to_dict(),
        'protocols': {name: protocol.name for name, protocol in protocols.items()},
        'options': {
            'limit': settings.limit,
            'calibrate_on': settings.calibrate_on,
            'label_upsampling': base_postprocess.label_upsampling,
            'panoptic': not settings.no_panoptic,
        },
        'environment': {'python': platform.python_version(), 'torch': torch.__version__},
    }
    try:
        files = write_report(result, settings.out, run, options.gallery_size)
    except WriteFailedError:
        raise
    except OSError as error:  # plots, gallery, CSVs; results.md/json are written atomically
        raise (write_failure(settings.out, error) or error) from error
    for path in files['report']:
        print(f'wrote {path}')
    return 0
