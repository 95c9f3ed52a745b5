"""Option comparison on the synthetic world: every architecture / post-processing option against
the default, with the demo's recipes, the same seeds and the same budget.

An option is a name, dotted overrides on the base model config (`config/model/demo.yaml`) and
dotted overrides on the post-processing (`PostprocessConfig`); adding one is one line in
`OPTIONS`. Options with the same model overrides share one trained model (a post-processing-only
option such as `mining_split: query_regions` is evaluated on the default's model, never
retrained). Training is the demo's two stages (`m2a_training.demo.stage_config`, the Trainer on
`config/train/synthetic_stage{1,2}.yaml`, iterations scaled by a budget factor); each option is
then evaluated on the trained model of its group:

- closed-set mIoU (val scenes) and anomaly AuPRC / FPR95 (held-out scenes, judged on the road)
  by the training `Validator`, with the option's post-processing;
- unknown-instance PQ / SQ / RQ on the held-out scenes (`PanopticAccumulator`, open-set
  protocol, the `unknown` group) with the open-set outputs of the demo's gallery (threshold 0.5,
  panoptic and mining on) plus the option's post-processing. The world stores no instance ids
  for obstacles; the ground-truth instances are the 8-connected components of the full-frame
  obstacle mask (every known pixel counts, the ego hood is void), see `unknown_instance_truth`.

Allowed dependencies: numpy, scipy, PIL, PyYAML, torch, m2a_perception, m2a_training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image
from scipy import ndimage

from m2a_perception.config import ModelConfig, load_model_config
from m2a_perception.files import atomic_write
from m2a_perception.metrics.panoptic import (
    UNKNOWN_CATEGORY_ID,
    PanopticAccumulator,
    PanopticCategory,
    PanopticSegment,
)
from m2a_perception.model import Mask2Anomaly
from m2a_perception.pictures import read_rgb
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.weights import load_checkpoint
from m2a_training.config import TrainConfig, apply_overrides, build_dataclass, load_yaml
from m2a_training.data.synthetic import FULL_FRAME_LABELS, load_synthetic_world
from m2a_training.demo import STAGE_RECIPES, clean_outputs, final_model, stage_config
from m2a_training.distributed import DistributedContext, resolve_device
from m2a_training.evaluation.runner import predicted_panoptic
from m2a_training.trainer import train
from m2a_training.validation import Validator

JSON_NAME = 'comparison.json'
MARKDOWN_NAME = 'comparison.md'
WORLD_DIR = 'world'

# A DINOv2-layout ViT at the demo model's scale (0.6 M ViT parameters): patch 14, DINOv2's 37x37
# pos_embed grid, embed 96, 4 blocks. Its config must pad to lcm(14, 32) = 224.
_DEMO_VIT = (
    'backbone.arch=dinov2_vit',
    'backbone.vit_embed_dim=96',
    'backbone.vit_depth=4',
    'backbone.vit_num_heads=4',
    'backbone.vit_ffn_dim=384',
    'preprocess.size_divisibility=224',
)
# config/model/demo_centroid.yaml as overrides on demo.yaml.
_DEMO_CENTROID = (
    'instance_head.kind=centroid',
    'instance_head.harmonics=4',
    'instance_head.hidden_dim=24',
    'instance_head.num_convs=2',
)


@dataclass(frozen=True)
class ComparedOption:
    """One row of the comparison.

    Attributes:
        name: row name (`--options` selects by it).
        model: dotted overrides on the base model config, e.g.
            'transformer_decoder.mask_embed=kan'.
        postprocess: dotted overrides on the post-processing, e.g. 'mining_split=query_regions'.
        recipe: dotted overrides on both training stages, e.g. 'data.target_mode=panoptic' (an
            option that needs other targets; it is trained on its own, never shared with one
            that has the same model but the default recipe).
        note: what the row is, printed under the table (say what it is not, too).
    """

    name: str
    model: tuple[str, ...] = ()
    postprocess: tuple[str, ...] = ()
    recipe: tuple[str, ...] = ()
    note: str = ''


OPTIONS: tuple[ComparedOption, ...] = (
    ComparedOption('default', note='mask_embed mlp, ResNet backbone, mining_split components'),
    ComparedOption(
        'kan',
        model=('transformer_decoder.mask_embed=kan',),
        note='Mask2KAN mask embedding (grid 5, order 3, grid range [-1, 1]), regulariser 1e-4',
    ),
    ComparedOption(
        'dinov2_vit',
        model=(*_DEMO_VIT, 'backbone.freeze_at=5'),
        note=(
            'frozen RANDOM ViT (embed 96, depth 4): no pretrained DINOv2 weights can be '
            'downloaded here, so this row measures the architecture without its pretraining, '
            "not the paper's frozen DINOv2; only the pyramid and heads train"
        ),
    ),
    ComparedOption(
        'dinov2_vit_trained',
        model=(*_DEMO_VIT, 'backbone.freeze_at=0'),
        note=(
            'the same ViT trained from scratch (freeze_at 0), as the demo trains its ResNet: '
            "a synthetic-world comparison of the architecture, not the paper's recipe"
        ),
    ),
    ComparedOption(
        'panoptic_targets',
        recipe=('data.target_mode=panoptic',),
        note=(
            'the default model trained on panoptic mask targets (one per thing instance), the '
            "centroid head's recipe without the head: separates the head from its targets"
        ),
    ),
    ComparedOption(
        'centroid_head',
        model=_DEMO_CENTROID,
        recipe=('data.target_mode=panoptic',),
        postprocess=('mining_split=centroid_head',),
        note=(
            'class-agnostic centroid instance head (seed 004, config/model/demo_centroid.yaml) '
            'on panoptic targets; unknown components split by the predicted centroids'
        ),
    ),
    ComparedOption(
        'query_regions',
        postprocess=('mining_split=query_regions',),
        note='post-processing only: the default model, unknown components split by query region',
    ),
)


@dataclass(frozen=True)
class Budget:
    """Training length: the demo recipes' iterations times `scale` (at least 1 each)."""

    scale: float = 1.0

    def iterations(self, recipe_iters: int) -> int:
        return max(1, round(recipe_iters * self.scale))


@dataclass(frozen=True)
class ComparisonSettings:
    """What every option shares.

    Attributes:
        out: output folder (world, one folder per trained model, table and JSON).
        recipes: folder of the two synthetic stage recipes.
        base_model: model config name or YAML path the model overrides apply to.
        budget: training length.
        recipe_overrides: training-config overrides for both stages (e.g. a smaller world).
        command: the command line, recorded with the table.
    """

    out: Path
    recipes: Path
    base_model: str = 'demo'
    budget: Budget = field(default_factory=Budget)
    recipe_overrides: tuple[str, ...] = ()
    command: str = ''


@dataclass(frozen=True)
class ModelGroup:
    """Options that share one trained model (same model and recipe overrides); named by its
    first."""

    name: str
    model: tuple[str, ...]
    options: tuple[ComparedOption, ...]
    recipe: tuple[str, ...] = ()


def select_options(names: Sequence[str] | None) -> list[ComparedOption]:
    """The options named (in the given order), or all of `OPTIONS`.

    Raises:
        ValueError: an unknown or repeated name.
    """
    by_name = {option.name: option for option in OPTIONS}
    if names is None:
        return list(OPTIONS)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f'unknown options {unknown}; known: {", ".join(by_name)}')
    if len(set(names)) != len(names):
        raise ValueError(f'options listed twice in {list(names)}')
    return [by_name[name] for name in names]


def group_by_model(options: Sequence[ComparedOption]) -> list[ModelGroup]:
    """Group options by their model and recipe overrides (order-insensitive), in first-seen
    order."""
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[ComparedOption]] = {}
    for option in options:
        key = (tuple(sorted(option.model)), tuple(sorted(option.recipe)))
        groups.setdefault(key, []).append(option)
    return [
        ModelGroup(members[0].name, members[0].model, tuple(members), members[0].recipe)
        for members in groups.values()
    ]


def build_option_model_config(base: str, overrides: Sequence[str], name: str) -> dict[str, Any]:
    """The base model config (as plain data) with the dotted overrides, validated.

    Raises:
        ValueError: an override that the model config refuses (the message names it).
    """
    data = load_model_config(base).to_dict()
    data = apply_overrides(data, [*overrides, f'name={data["name"]}_{name}'])
    try:
        ModelConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise ValueError(f'option {name!r}: model overrides {list(overrides)}: {error}') from None
    return data


def build_option_postprocess(
    base: PostprocessConfig, overrides: Sequence[str]
) -> PostprocessConfig:
    """`base` with dotted overrides, type-checked as the training config checks its fields."""
    data = apply_overrides(dataclasses.asdict(base), overrides)
    return build_dataclass(PostprocessConfig, data, 'postprocess')


def unknown_instance_truth(label: np.ndarray) -> tuple[np.ndarray, list[PanopticSegment]]:
    """Ground-truth unknown instances of one held-out scene.

    Args:
        label: (H, W) uint8, 1 obstacle, 0 known, 255 void.

    Returns:
        (H, W) int64 ids: obstacle components 1..n (8-connected), known pixels n + 1 (a segment
        that is not listed, so a prediction there is a false positive, as in panopticapi), void
        0; and the n unknown segments.
    """
    components, count = ndimage.label(label == 1, structure=np.ones((3, 3), dtype=bool))
    ids = components.astype(np.int64)
    ids[label == 0] = count + 1
    segments = [PanopticSegment(k, UNKNOWN_CATEGORY_ID) for k in range(1, count + 1)]
    return ids, segments


def compute_unknown_instance_pq(
    segmenter: Segmenter, anomaly_root: Path, num_classes: int
) -> dict[str, float]:
    """Unknown-instance PQ, SQ, RQ and counts over every held-out scene (full-frame labels)."""
    categories = [PanopticCategory(k, str(k), True) for k in range(num_classes)]
    categories.append(PanopticCategory(UNKNOWN_CATEGORY_ID, 'unknown', True))
    accumulator = PanopticAccumulator(categories, UNKNOWN_CATEGORY_ID)
    for path in sorted((anomaly_root / 'images').glob('*.png')):
        label = np.asarray(Image.open(anomaly_root / FULL_FRAME_LABELS / path.name))
        output = segmenter(read_rgb(path)).cpu()
        pred_ids, pred_segments = predicted_panoptic(
            output, range(num_classes), UNKNOWN_CATEGORY_ID
        )
        gt_ids, gt_segments = unknown_instance_truth(label)
        accumulator.update(gt_ids, gt_segments, pred_ids, pred_segments)
    result = accumulator.compute().per_category.get(UNKNOWN_CATEGORY_ID)
    if result is None:  # no obstacle and no unknown prediction anywhere
        return {'pq': math.nan, 'sq': math.nan, 'rq': math.nan, 'tp': 0, 'fp': 0, 'fn': 0}
    return {
        'pq': result.pq,
        'sq': result.sq,
        'rq': result.rq,
        'tp': result.true_positives,
        'fp': result.false_positives,
        'fn': result.false_negatives,
    }


def evaluate_option(
    model: Mask2Anomaly, model_config: ModelConfig, stage2: TrainConfig, option: ComparedOption
) -> dict[str, Any]:
    """mIoU, anomaly AuPRC / FPR95 and unknown-instance PQ of one option on its trained model."""
    validation_postprocess = build_option_postprocess(
        stage2.validation.postprocess, option.postprocess
    )
    config = dataclasses.replace(
        stage2,
        validation=dataclasses.replace(stage2.validation, postprocess=validation_postprocess),
    )
    context = DistributedContext(device=resolve_device(stage2.runtime.device, 0))
    metrics = Validator(config, context).run(model, model_config).metrics
    # The open-set outputs of the demo's gallery, then the option's own post-processing.
    open_set = build_option_postprocess(
        dataclasses.replace(
            stage2.validation.postprocess, anomaly_threshold=0.5, panoptic=True, mining=True
        ),
        option.postprocess,
    )
    segmenter = Segmenter.from_model(
        model, model_config, context.device, postprocess_config=open_set
    )
    world = load_synthetic_world(stage2.data.root)
    return {
        'anomaly_auprc': metrics['anomaly_auprc'],
        'anomaly_fpr95': metrics['anomaly_fpr95'],
        'miou': metrics['miou'],
        'unknown_instances': compute_unknown_instance_pq(
            segmenter, world.anomaly_root, model_config.num_classes
        ),
    }


@dataclass(frozen=True)
class TrainedGroup:
    """A group's trained model and the stage-2 config it came from."""

    checkpoint: Path
    stage2: TrainConfig
    trainer_validation: dict[str, float]
    iterations: tuple[int, int]
    seeds: tuple[int, int]


def train_group(
    group: ModelGroup, settings: ComparisonSettings, progress: Callable[[str], None]
) -> TrainedGroup:
    """The demo's two Trainer stages for one model config, in `out/<group>/`."""
    folder = settings.out / group.name
    clean_outputs(folder)
    model_data = build_option_model_config(settings.base_model, group.model, group.name)
    model_file = folder / 'model.yaml'
    atomic_write(
        model_file, lambda tmp: tmp.write_text(yaml.safe_dump(model_data, sort_keys=False))
    )
    shared = [f'data.root={settings.out / WORLD_DIR}', *settings.recipe_overrides, *group.recipe]
    configs, summaries = [], []
    for index, recipe_name in enumerate(STAGE_RECIPES):
        recipe = settings.recipes / recipe_name
        recipe_iters = load_yaml(recipe.read_text())['solver']['max_iters']
        first = (
            [f'model.config={model_file}']
            if index == 0
            else [f'model.init_checkpoint={final_model(summaries[-1])}']
        )
        config = stage_config(
            recipe,
            folder,
            f'stage{index + 1}',
            settings.budget.iterations(recipe_iters),
            [*first, *shared],
        )
        progress(
            f'{group.name}: stage {index + 1}, {config.solver.max_iters} iterations '
            f'(seed {config.seed})'
        )
        started = time.perf_counter()
        summaries.append(train(config))
        configs.append(config)
        progress(f'{group.name}: stage {index + 1} done in {time.perf_counter() - started:.0f} s')
    stage2 = configs[1]
    return TrainedGroup(
        checkpoint=final_model(summaries[1]),
        stage2=stage2,
        trainer_validation=summaries[1].validations.get(summaries[1].iteration, {}),
        iterations=(configs[0].solver.max_iters, stage2.solver.max_iters),
        seeds=(configs[0].seed, stage2.seed),
    )


def run_comparison(
    options: Sequence[ComparedOption],
    settings: ComparisonSettings,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train each model group once, evaluate every option, write the JSON and markdown table.

    Every model config is validated before anything trains, so a bad override fails at once.
    Returns the report (what `comparison.json` holds).
    """
    groups = group_by_model(options)
    for group in groups:
        build_option_model_config(settings.base_model, group.model, group.name)
        for option in group.options:
            build_option_postprocess(PostprocessConfig(), option.postprocess)
    settings.out.mkdir(parents=True, exist_ok=True)
    clean_outputs(settings.out)  # the world: every comparison starts from the same state
    started = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    trained: dict[str, dict[str, Any]] = {}
    timing: dict[str, float] = {}
    for number, group in enumerate(groups, 1):
        progress(
            f'[{number}/{len(groups)}] training {group.name!r} for '
            f'{", ".join(o.name for o in group.options)}'
        )
        group_started = time.perf_counter()
        result = train_group(group, settings, progress)
        timing[f'train/{group.name}'] = round(time.perf_counter() - group_started, 1)
        trained[group.name] = {
            'model_overrides': list(group.model),
            'recipe_overrides': list(group.recipe),
            'checkpoint': str(result.checkpoint),
            'iterations': {'stage1': result.iterations[0], 'stage2': result.iterations[1]},
            'seeds': {'stage1': result.seeds[0], 'stage2': result.seeds[1]},
            'trainer_validation': result.trainer_validation,
        }
        model, model_config = load_checkpoint(result.checkpoint)
        model.eval()
        for option in group.options:
            progress(f'[{number}/{len(groups)}] evaluating {option.name!r}')
            option_started = time.perf_counter()
            rows[option.name] = {
                'name': option.name,
                'model_overrides': list(option.model),
                'postprocess_overrides': list(option.postprocess),
                'recipe_overrides': list(option.recipe),
                'trained_as': group.name,
                'note': option.note,
                'parameters': sum(p.numel() for p in model.parameters()),
                'trainable_parameters': sum(
                    p.numel() for p in model.parameters() if p.requires_grad
                ),
                **evaluate_option(model, model_config, result.stage2, option),
            }
            timing[f'evaluate/{option.name}'] = round(time.perf_counter() - option_started, 1)
            progress(f'  {format_row(rows[option.name])}')
            # Written after every option: a run stopped early still leaves its finished rows.
            write_report(_report(settings, options, rows, trained, timing), settings.out)
    timing['total'] = round(time.perf_counter() - started, 1)
    report = _report(settings, options, rows, trained, timing)
    write_report(report, settings.out)
    return report


def _report(
    settings: ComparisonSettings,
    options: Sequence[ComparedOption],
    rows: dict[str, dict[str, Any]],
    trained: dict[str, dict[str, Any]],
    timing: dict[str, float],
) -> dict[str, Any]:
    return {
        'command': settings.command,
        'base_model': settings.base_model,
        'budget': settings.budget.scale,
        'recipe_overrides': list(settings.recipe_overrides),
        'models': trained,
        'rows': [rows[option.name] for option in options if option.name in rows],
        'not_run': [option.name for option in options if option.name not in rows],
        'timing_s': dict(timing),
    }


def format_row(row: dict[str, Any]) -> str:
    unknown = row['unknown_instances']
    return (
        f'{row["name"]}: anomaly AuPRC {row["anomaly_auprc"]:.3f}, '
        f'FPR95 {row["anomaly_fpr95"]:.3f}, '
        f'mIoU {row["miou"]:.3f}, unknown PQ {unknown["pq"]:.3f} '
        f'(TP {unknown["tp"]}, FP {unknown["fp"]}, FN {unknown["fn"]})'
    )


def _figure(value: float) -> str:
    return 'n/a' if value is None or math.isnan(value) else f'{value:.3f}'


def markdown_table(report: dict[str, Any]) -> str:
    """The comparison as a markdown table, with the budget, the command and the notes."""
    models = report['models']
    lines = [
        '| option | model overrides | post-processing | trained | params (trainable) '
        '| anomaly AuPRC ↑ | FPR95 ↓ | mIoU ↑ | unknown PQ ↑ | SQ | RQ | TP / FP / FN |',
        '|---|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for row in report['rows']:
        unknown = row['unknown_instances']
        trained = (
            'own model' if row['trained_as'] == row['name'] else f'`{row["trained_as"]}` model'
        )
        lines.append(
            f'| `{row["name"]}` | {_overrides(row["model_overrides"])} '
            f'| {_overrides(row["postprocess_overrides"])} | {trained} '
            f'| {row["parameters"] / 1e6:.3f} M ({row["trainable_parameters"] / 1e6:.3f} M) '
            f'| {_figure(row["anomaly_auprc"])} | {_figure(row["anomaly_fpr95"])} '
            f'| {_figure(row["miou"])} | {_figure(unknown["pq"])} | {_figure(unknown["sq"])} '
            f'| {_figure(unknown["rq"])} | {unknown["tp"]} / {unknown["fp"]} / {unknown["fn"]} |'
        )
    first = next(iter(models.values()))
    lines += [
        '',
        f'Budget: {report["budget"]:g} × the demo recipes = {first["iterations"]["stage1"]} '
        f'stage-1 + {first["iterations"]["stage2"]} stage-2 iterations per model, seeds '
        f'{first["seeds"]["stage1"]} / {first["seeds"]["stage2"]}, base model config '
        f'`{report["base_model"]}`'
        + (
            f', recipe overrides {_overrides(report["recipe_overrides"])}'
            if report['recipe_overrides']
            else ''
        )
        + '.',
        '',
        f'Command: `{report["command"]}`',
        '',
        'Notes:',
    ]
    lines += [f'- `{row["name"]}`: {row["note"]}' for row in report['rows'] if row['note']]
    if report['not_run']:
        lines.append(
            '- not run (the comparison stopped, or has not reached them yet): '
            + ', '.join(report['not_run'])
        )
    return '\n'.join(lines) + '\n'


def _overrides(values: Sequence[str]) -> str:
    return ', '.join(f'`{value}`' for value in values) if values else '—'


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """`comparison.json` (NaN as null) and `comparison.md`, each written atomically."""
    json_path, markdown_path = out / JSON_NAME, out / MARKDOWN_NAME
    text = json.dumps(_nan_to_none(report), indent=2)
    atomic_write(json_path, lambda tmp: tmp.write_text(text + '\n'))
    table = markdown_table(report)
    atomic_write(markdown_path, lambda tmp: tmp.write_text(table))
    return json_path, markdown_path


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _nan_to_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(item) for item in value]
    return value
