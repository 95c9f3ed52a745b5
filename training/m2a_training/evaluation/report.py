"""Tables 1-4 of the Mask2Anomaly paper from an `EvaluationResult`, as markdown and JSON.

- Table 1 (pixel level): AuPRC and FPR95 per anomaly benchmark, paper column order (SMIYC RA-21,
  SMIYC RO-21, FS L&F, FS Static, Road Anomaly, Lost & Found), then other datasets, then the
  average over the datasets shown. StreetHazards goes to Table 3, as in the paper.
- Table 2 (component level): sIoU, PPV, F1* where the benchmark defines them, and the average.
- Table 3 (open-set semantic): AuPRC, FPR95, closed-set mIoU, open-IoU^t5, open-IoU^t6 and their
  image-weighted mean (StreetHazards' cross-calibrated protocol); datasets evaluated with the
  `--calibrate-on` threshold show it in the open-IoU column of a row naming the source.
- Table 4 (open-set panoptic): PQ/SQ/RQ of known things, stuff, all known classes, and of the
  unknown class.

Values in the tables are percentages with two decimals, '-' where not available; the JSON file
holds the same tables (as strings) and every metric as a fraction, with NaN written as null.

Allowed dependencies: standard library, m2a_training.evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from m2a_perception.weights.checkpoint import atomic_write
from m2a_training.evaluation.datasets import ANOMALY_BENCHMARKS, COCO_SPLITS
from m2a_training.evaluation.runner import DatasetResult, EvaluationResult

DASH = '-'
REPORT_VERSION = 1


@dataclass(frozen=True)
class Table:
    """A table: a title, column headers and rows of cell strings."""

    key: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]

    def markdown(self) -> str:
        lines = [f'### {self.title}', '']
        lines.append('| ' + ' | '.join(self.columns) + ' |')
        lines.append('|' + '|'.join('---' for _ in self.columns) + '|')
        lines += ['| ' + ' | '.join(row) + ' |' for row in self.rows]
        return '\n'.join(lines)

    def as_dict(self) -> dict[str, object]:
        return {
            'title': self.title,
            'columns': list(self.columns),
            'rows': [list(r) for r in self.rows],
        }


def percent(value: float | None) -> str:
    """Fraction -> '12.34'; '-' for None / NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f'{100.0 * value:.2f}'


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return sum(present) / len(present) if present else None


def _ordered(results: dict[str, DatasetResult]) -> list[DatasetResult]:
    order = {name: position for position, name in enumerate(ANOMALY_BENCHMARKS)}
    return sorted(results.values(), key=lambda r: (order.get(r.name, len(order)), r.name))


def pixel_table(result: EvaluationResult, method: str) -> Table | None:
    """Table 1."""
    shown = [
        r for r in _ordered(result.datasets) if r.pixel is not None and r.name != 'street_hazards'
    ]
    if not shown:
        return None
    columns = ['Method']
    row = [method]
    for r in shown:
        assert r.pixel is not None
        columns += [f'{r.title} AuPRC ↑', f'{r.title} FPR95 ↓']
        row += [percent(r.pixel.auprc), percent(r.pixel.fpr95)]
    columns += ['Average AuPRC ↑', 'Average FPR95 ↓']
    row += [
        percent(_mean([r.pixel.auprc for r in shown if r.pixel])),
        percent(_mean([r.pixel.fpr95 for r in shown if r.pixel])),
    ]
    return Table(
        'table1', 'Table 1: pixel-level anomaly segmentation', tuple(columns), (tuple(row),)
    )


def component_table(result: EvaluationResult, method: str) -> Table | None:
    """Table 2."""
    shown = [r for r in _ordered(result.datasets) if r.component is not None]
    if not shown:
        return None
    columns = ['Method']
    row = [method]
    for r in shown:
        assert r.component is not None
        columns += [f'{r.title} sIoU ↑', f'{r.title} PPV ↑', f'{r.title} F1* ↑']
        row += [percent(r.component.siou), percent(r.component.ppv), percent(r.component.f1_star)]
    columns += ['Average sIoU ↑', 'Average PPV ↑', 'Average F1* ↑']
    for field in ('siou', 'ppv', 'f1_star'):
        row.append(percent(_mean([getattr(r.component, field) for r in shown])))
    return Table(
        'table2', 'Table 2: component-level anomaly segmentation', tuple(columns), (tuple(row),)
    )


def open_set_table(result: EvaluationResult, method: str) -> Table | None:
    """Table 3."""
    rows = []
    source = None if result.calibration is None else result.calibration['dataset']
    for r in _ordered(result.datasets):
        has_semantic = r.semantic is not None
        if not has_semantic and r.name != 'street_hazards':
            continue
        pixel = r.pixel
        towns = r.open_set_towns
        row = [
            method,
            r.title,
            percent(pixel.auprc if pixel else None),
            percent(pixel.fpr95 if pixel else None),
            percent(r.semantic.miou if r.semantic else None),
            percent(towns['t5'].open_miou if 't5' in towns else None),
            percent(towns['t6'].open_miou if 't6' in towns else None),
        ]
        if towns:
            row.append(percent(r.open_set_towns_mean))
            rows.append(tuple(row))
            if r.open_set_calibrated is not None:
                rows.append(
                    (method, f'{r.title} (threshold from {source})', DASH, DASH, DASH, DASH, DASH,
                     percent(r.open_set_calibrated.open_miou))
                )  # fmt: skip
            continue
        calibrated = r.open_set_calibrated
        if calibrated is not None:
            row[1] = f'{r.title} (threshold from {source})'
        row.append(percent(calibrated.open_miou if calibrated else None))
        rows.append(tuple(row))
    if not rows:
        return None
    columns = (
        'Method', 'Dataset', 'AuPRC ↑', 'FPR95 ↓', 'mIoU ↑', 'Open-IoU^t5 ↑', 'Open-IoU^t6 ↑',
        'Open-IoU ↑',
    )  # fmt: skip
    return Table('table3', 'Table 3: open-set semantic segmentation', columns, tuple(rows))


def _unknown_percent(name: str) -> str:
    percent_value = COCO_SPLITS.get(name)
    return '0' if percent_value is None else str(percent_value)


def panoptic_table(result: EvaluationResult, method: str) -> Table | None:
    """Table 4."""
    rows = []
    for r in _ordered(result.datasets):
        if r.panoptic is None:
            continue
        groups = r.panoptic.groups
        row = [f'{r.title} ({_unknown_percent(r.name)})', method]
        for group in ('things', 'stuff', 'all', 'unknown'):
            values = groups.get(group)
            row += [percent(values.pq if values else None)]
            row += [percent(values.sq if values else None)]
            row += [percent(values.rq if values else None)]
        rows.append(tuple(row))
    if not rows:
        return None
    columns = (
        'Dataset (K %)', 'Method', 'PQ_Th ↑', 'SQ_Th ↑', 'RQ_Th ↑', 'PQ_St ↑', 'SQ_St ↑',
        'RQ_St ↑', 'PQ ↑', 'SQ ↑', 'RQ ↑', 'PQ_unk ↑', 'SQ_unk ↑', 'RQ_unk ↑',
    )  # fmt: skip
    return Table('table4', 'Table 4: open-set panoptic segmentation', columns, tuple(rows))


def build_tables(result: EvaluationResult, method: str) -> list[Table]:
    """The tables that have at least one value."""
    tables = [
        pixel_table(result, method),
        component_table(result, method),
        open_set_table(result, method),
        panoptic_table(result, method),
    ]
    return [table for table in tables if table is not None]


def throughput(result: EvaluationResult) -> dict[str, object]:
    """Frames per second end to end and for the metrics alone (per process, summed stages)."""
    frames = sum(r.num_frames for r in result.datasets.values())
    seconds: dict[str, float] = {}
    for r in result.datasets.values():
        for key, value in r.seconds.items():
            if key != 'frames':
                seconds[key] = seconds.get(key, 0.0) + value
    metric_seconds = seconds.get('metrics', 0.0) + seconds.get('pass2_metrics', 0.0)
    inference_seconds = seconds.get('inference', 0.0)
    return {
        'frames': frames,
        'processes': result.world_size,
        'wall_seconds': result.wall_seconds,
        'frames_per_second_end_to_end': frames / result.wall_seconds
        if result.wall_seconds
        else None,
        'frames_per_second_metrics_only': frames / metric_seconds if metric_seconds else None,
        'frames_per_second_inference_only': frames / inference_seconds
        if inference_seconds
        else None,
        'stage_seconds_summed_over_processes': seconds,
    }


def _clean(value: Any) -> Any:
    """JSON-safe copy: NaN / inf -> None, tuples -> lists, dict keys -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(item) for item in value]
    return value


def dataset_json(r: DatasetResult) -> dict[str, object]:
    """Every metric of one dataset, as fractions."""
    data: dict[str, Any] = {
        'title': r.title,
        'description': r.description,
        'num_frames': r.num_frames,
        'pixel_protocol': r.protocol,
        'pixel': None if r.pixel is None else r.pixel.as_dict(),
        'component': None if r.component is None else r.component.as_dict(),
        'semantic': None if r.semantic is None else r.semantic.as_dict(),
        'open_set': {
            'towns': {town: m.as_dict() for town, m in r.open_set_towns.items()},
            'town_frames': r.open_set_town_frames,
            'towns_weighted_open_miou': r.open_set_towns_mean,
            'calibrated': None
            if r.open_set_calibrated is None
            else r.open_set_calibrated.as_dict(),
        },
        'transfer': r.transfer,
        'panoptic': None if r.panoptic is None else r.panoptic.as_dict(),
        'notes': r.notes,
        'seconds': r.seconds,
        'gallery': [
            {'name': item.name, 'index': item.index, 'error': item.error} for item in r.gallery
        ],
    }
    return data


def report_json(
    result: EvaluationResult, tables: Sequence[Table], run: dict[str, object]
) -> dict[str, object]:
    """The whole report as one JSON-ready dict."""
    return _clean(
        {
            'tool': 'm2a-eval',
            'report_version': REPORT_VERSION,
            **run,
            'calibration': result.calibration,
            'tables': {table.key: table.as_dict() for table in tables},
            'datasets': {name: dataset_json(r) for name, r in result.datasets.items()},
            'throughput': throughput(result),
        }
    )


def report_markdown(
    result: EvaluationResult,
    tables: Sequence[Table],
    run: dict[str, Any],
    files: dict[str, list[str]],
) -> str:
    """The markdown report: tables, then protocols, thresholds, notes, throughput and files."""
    lines = [f'# m2a-eval: {run["method"]}', '']
    backend = run['backend']
    lines.append(
        f'Backend `{backend["kind"]}` ({backend["path"]}), model config '
        f'`{backend["model_config"]}` ({backend["num_classes"]} classes), '
        f'{result.world_size} process(es). Values in %.'
    )
    lines.append('')
    if not tables:
        lines += ['No metric could be computed on these datasets with this model.', '']
    for table in tables:
        lines += [table.markdown(), '']
    if tables and any(t.key == 'table1' for t in tables):
        lines.append('Table 1 average: mean over the datasets shown (the paper averages six).')
        lines.append('')
    lines += ['## Protocols and thresholds', '']
    for r in result.datasets.values():
        parts = [f'{r.num_frames} frames']
        if r.protocol is not None:
            parts.append(f'pixel protocol `{r.protocol}`')
        if r.pixel is not None:
            parts.append(
                f'best-F1 threshold {r.pixel.best_f1_threshold:.6g} (component binarisation), '
                f'AUROC {percent(r.pixel.auroc)}'
            )
        if r.component is not None:
            parts.append(f'component track `{r.component.track}`')
        if r.transfer is not None:
            parts.append(
                f'at the calibrated threshold TPR {percent(r.transfer["tpr"])}, '
                f'FPR {percent(r.transfer["fpr"])}'
            )
        for town, metrics in r.open_set_towns.items():
            parts.append(
                f'open-IoU^{town} threshold {metrics.threshold:.6g} (from the other town)'
            )
        lines.append(f'- **{r.title}** (`{r.name}`): ' + '; '.join(parts) + '.')
        lines += [f'  - note: {note}' for note in r.notes]
    if result.calibration is not None:
        calibration = result.calibration
        lines.append(
            f'- open-set threshold {calibration["threshold"]:.6g} calibrated on '
            f'`{calibration["dataset"]}` (TPR {percent(calibration["tpr"])}, FPR '
            f'{percent(calibration["fpr"])}; {calibration["rule"]}; maps scaled by '
            f'{calibration["scale"]}).'
        )
    lines.append('')
    rates = throughput(result)
    lines += ['## Throughput', '']
    for key in (
        'frames_per_second_end_to_end',
        'frames_per_second_inference_only',
        'frames_per_second_metrics_only',
    ):
        value = rates[key]
        shown = DASH if value is None else f'{value:.2f}'
        lines.append(f'- {key.replace("_", " ")}: {shown}')
    lines.append(f'- wall time: {result.wall_seconds:.1f} s for {rates["frames"]} frames')
    lines.append('')
    if any(files.values()):
        lines += ['## Files', '']
        for kind, paths in files.items():
            for path in paths:
                lines.append(f'- {kind}: [{path}]({path})')
        lines.append('')
    return '\n'.join(lines)


def write_per_frame_csv(r: DatasetResult, path: Path) -> Path:
    """One line per frame: index, name, error and the per-frame metrics."""
    fields = [f.name for f in dataclasses.fields(r.frames[0])] if r.frames else ['index']
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [','.join(fields)]
    for stats in r.frames:
        values = []
        for name in fields:
            value = getattr(stats, name)
            if value is None:
                values.append('')
            elif isinstance(value, float):
                values.append(f'{value:.6g}')
            else:
                text = str(value)
                values.append(f'"{text}"' if ',' in text else text)
        lines.append(','.join(values))
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_json(data: dict[str, object], path: Path) -> Path:
    text = json.dumps(data, indent=2, allow_nan=False) + '\n'
    atomic_write(path, lambda tmp: tmp.write_text(text))
    return path
