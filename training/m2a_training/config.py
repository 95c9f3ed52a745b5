"""Training configuration: YAML -> frozen dataclasses, with dot-list overrides.

    config = load_train_config('config/train/cityscapes_stage2.yaml', ['solver.lr=2e-5'])

A config file is one YAML mapping whose sections mirror `TrainConfig`. Unknown keys anywhere are
an error that names the key and lists the known ones, and every value is checked against the
field's type (tuples from YAML lists, Literal choices, optional sections), so a typo never passes
silently. Overrides are `dotted.key=value` with the value parsed as YAML (`null`, `[380, 760]`,
`true`); setting a key inside a section that the file leaves `null` creates that section.

The loss section is the criterion's own `CriterionConfig` and the augmentation section is
`AugmentConfig`, so their defaults and checks live in one place.

Paths: `output_dir`, `data.root` and `model.init_checkpoint` are relative to the working
directory; every other data path is relative to `data.root` (absolute paths stay as they are).

Allowed dependencies: standard library, PyYAML, m2a_perception.postprocess, m2a_training.losses,
m2a_training.data.augment.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from m2a_perception.postprocess import PostprocessConfig
from m2a_training.data.augment import AugmentConfig
from m2a_training.losses import CriterionConfig

SelectionMetric = Literal['miou', 'anomaly_auprc', 'anomaly_auprc_minus_fpr95']
SELECTION_METRICS = ('miou', 'anomaly_auprc', 'anomaly_auprc_minus_fpr95')
AmpDtype = Literal['float16', 'bfloat16']
Device = Literal['auto', 'cpu', 'cuda']


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the offending key."""


@dataclass(frozen=True)
class ModelSection:
    """Network and its initial weights.

    Attributes:
        config: model config name (`config/model/<name>.yaml`) or YAML path; None takes it from
            `init_checkpoint`.
        init_checkpoint: m2a safetensors checkpoint to start from: a backbone-only conversion
            (stage 1, from `m2a-convert-checkpoint`) or a trained stage-1 model (stage 2). None
            starts from random weights (synthetic-world runs only).
    """

    config: str | None = None
    init_checkpoint: str | None = None


@dataclass(frozen=True)
class SyntheticWorldSection:
    """Generate the synthetic road world at `data.root` when it is not there yet."""

    num_train: int = 160
    num_val: int = 24
    num_anomaly_val: int = 24
    num_outlier_images: int = 60
    size: tuple[int, int] = (128, 256)
    seed: int = 0
    anomaly_kinds: tuple[str, ...] | None = None
    outlier_object_scale: tuple[float, float] = (0.25, 0.7)


@dataclass(frozen=True)
class AnomalyMixSection:
    """AnomalyMix outliers from a COCO instances file or the authors' folder (stage 2).

    Attributes:
        annotation_file: COCO `instances_*.json`, or the authors' processed outlier folder
            (holding `images/` and `ood_annotations/*.png`), relative to `data.root`.
        image_dir: folder of the COCO images, relative to `data.root` (unused for a folder).
        probability: chance that a training image gets a pasted object (0.2).
        pool_size: random pool of eligible COCO images (paper: 300); None keeps all.
        min_side: minimum height and width of a pool image (meta-OOD: 480; COCO json only).
        keep_empty_masks: folder layout: keep masks without outlier pixels, as the official
            pool does (they paste nothing); false leaves them out.
    """

    annotation_file: str = 'coco/annotations/instances_train2017.json'
    image_dir: str = 'coco/train2017'
    probability: float = 0.2
    pool_size: int | None = 300
    min_side: int = 480
    keep_empty_masks: bool = True


@dataclass(frozen=True)
class DataSection:
    """Training data.

    Attributes:
        root: base folder of every data path below.
        cityscapes: Cityscapes root (`leftImg8bit/`, `gtFine/`), relative to `root`.
        train_split, val_split: Cityscapes splits for training and mIoU validation.
        target_mode: 'semantic', 'mask_split' or 'panoptic' mask targets.
        augment: training augmentation.
        anomaly_mix: AnomalyMix outliers, or None (stage 1).
        num_workers: data-loader worker processes per rank (0 loads in the training process).
        synthetic_world: if set, generate the synthetic world at `root` when `root` holds no
            `manifest.json` (the world's Cityscapes part is `root/cityscapes`).
    """

    root: str = 'datasets'
    cityscapes: str = 'cityscapes'
    train_split: str = 'train'
    val_split: str = 'val'
    target_mode: Literal['semantic', 'mask_split', 'panoptic'] = 'semantic'
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    anomaly_mix: AnomalyMixSection | None = None
    num_workers: int = 4
    synthetic_world: SyntheticWorldSection | None = None


@dataclass(frozen=True)
class SolverSection:
    """Optimisation (official Mask2Former / Mask2Anomaly Cityscapes values by default).

    Attributes:
        batch_size: global batch over all ranks (split evenly; must divide by the world size).
        max_iters: training iterations.
        lr: base learning rate of AdamW.
        weight_decay: AdamW decay (0 for norm layers and embeddings).
        poly_power: lr = lr · (1 − it / max_iters)^power.
        warmup_iters, warmup_factor: linear warm-up from factor·lr (official: none).
        grad_clip: full-model gradient clipping L2 norm, or None.
        amp: mixed precision with a gradient scaler on CUDA (ignored on CPU).
        amp_dtype: 'float16' (official, with loss scaling) or 'bfloat16'.
    """

    batch_size: int = 16
    max_iters: int = 90000
    lr: float = 1e-4
    weight_decay: float = 0.05
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_factor: float = 1.0
    grad_clip: float | None = 0.01
    amp: bool = True
    amp_dtype: AmpDtype = 'float16'


@dataclass(frozen=True)
class CheckpointSection:
    """Periodic checkpoints (the last iteration is always saved).

    Attributes:
        period: save every this many iterations.
        keep_last: keep only this many periodic checkpoints (the best one is a separate
            copy); None keeps all.
    """

    period: int = 5000
    keep_last: int | None = 3


@dataclass(frozen=True)
class AnomalySetSection:
    """One anomaly validation set, read by `m2a_training.data.benchmarks`.

    Attributes:
        name: reader name (`open_anomaly_benchmark`: fs_lost_and_found, smiyc_ra21, ...).
        root: dataset folder, relative to `data.root`.
        max_images: evaluate only the first this many frames; None uses all.
    """

    name: str
    root: str
    max_images: int | None = None


@dataclass(frozen=True)
class ValidationSection:
    """Periodic validation and best-checkpoint selection.

    Attributes:
        period: validate every this many iterations and at the last one; 0 never validates.
        semantic_max_images: mIoU on the first this many `data.val_split` images; None all,
            0 skips mIoU.
        anomaly_sets: held-out anomaly validation sets (never test sets).
        selection_metric: what the best checkpoint maximises: 'miou', 'anomaly_auprc' (mean
            over the sets) or 'anomaly_auprc_minus_fpr95' (mean AuPRC minus mean FPR95).
        histogram_pixels: per image and class, at most this many anomaly scores go into the
            in-distribution / OOD TensorBoard histograms.
        postprocess: the shared open-set post-processing used by the `Segmenter` (anomaly
            scorer, refinement); the semantic map is closed-set (`anomaly_threshold` null) for
            mIoU, and panoptic output and mining are off to keep validation fast.
    """

    period: int = 5000
    semantic_max_images: int | None = None
    anomaly_sets: tuple[AnomalySetSection, ...] = ()
    selection_metric: SelectionMetric = 'miou'
    histogram_pixels: int = 2000
    postprocess: PostprocessConfig = field(
        default_factory=lambda: PostprocessConfig(
            anomaly_threshold=None, panoptic=False, mining=False
        )
    )


@dataclass(frozen=True)
class LoggingSection:
    """Console, metrics file and TensorBoard.

    Attributes:
        period: log (console, `metrics.jsonl`, TensorBoard) every this many iterations.
        tensorboard: write TensorBoard events under `output_dir/tensorboard`.
        progress_bar: tqdm bars with ETA for training and validation (rank 0).
    """

    period: int = 20
    tensorboard: bool = True
    progress_bar: bool = True


@dataclass(frozen=True)
class RuntimeSection:
    """Where and how the process runs.

    Attributes:
        device: 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'. Under torchrun each rank
            uses `cuda:LOCAL_RANK`.
        num_threads: torch intra-op threads per process; None keeps PyTorch's default.
    """

    device: Device = 'auto'
    num_threads: int | None = None


@dataclass(frozen=True)
class TrainConfig:
    """A complete training run.

    Attributes:
        name: run name for logs and checkpoint metadata.
        seed: seeds model initialisation, data order, augmentation and point sampling.
        output_dir: checkpoints, logs and TensorBoard events.
    """

    name: str = 'm2a'
    seed: int = 0
    output_dir: str = 'output/m2a'
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    solver: SolverSection = field(default_factory=SolverSection)
    loss: CriterionConfig = field(default_factory=CriterionConfig)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    validation: ValidationSection = field(default_factory=ValidationSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)

    def __post_init__(self) -> None:
        solver = self.solver
        if solver.batch_size <= 0 or solver.max_iters <= 0:
            raise ConfigError('solver.batch_size and solver.max_iters must be positive')
        if solver.lr <= 0 or solver.weight_decay < 0 or solver.poly_power < 0:
            raise ConfigError('need solver.lr > 0, weight_decay >= 0 and poly_power >= 0')
        if solver.warmup_iters < 0 or not 0 < solver.warmup_factor <= 1:
            raise ConfigError('need solver.warmup_iters >= 0 and 0 < warmup_factor <= 1')
        if solver.grad_clip is not None and solver.grad_clip <= 0:
            raise ConfigError('solver.grad_clip must be positive or null')
        if self.checkpoint.period <= 0:
            raise ConfigError('checkpoint.period must be positive')
        if self.checkpoint.keep_last is not None and self.checkpoint.keep_last < 1:
            raise ConfigError('checkpoint.keep_last must be >= 1 or null')
        if self.validation.period < 0 or self.logging.period <= 0:
            raise ConfigError('need validation.period >= 0 and logging.period > 0')
        if self.data.num_workers < 0:
            raise ConfigError('data.num_workers must be >= 0')
        if self.loss.contrastive is not None and self.data.anomaly_mix is None:
            raise ConfigError(
                'loss.contrastive (stage 2) needs data.anomaly_mix: without pasted outliers the '
                'contrastive loss has no outlier term'
            )
        metric = self.validation.selection_metric
        if metric != 'miou' and not self.validation.anomaly_sets:
            raise ConfigError(
                f'validation.selection_metric {metric!r} needs validation.anomaly_sets'
            )
        if metric == 'miou' and self.validation.semantic_max_images == 0:
            raise ConfigError("selection_metric 'miou' needs semantic_max_images != 0")

    @property
    def stage(self) -> int:
        """1 for closed-set training, 2 for mask contrastive fine-tuning."""
        return 1 if self.loss.contrastive is None else 2

    def data_path(self, path: str) -> Path:
        """A data path resolved against `data.root` (absolute paths unchanged)."""
        return Path(self.data.root) / path

    def to_dict(self) -> dict[str, Any]:
        """Plain nested mapping (tuples as lists), loadable again by `build_train_config`."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        """The resolved config as YAML (what is saved beside every checkpoint)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- typed construction


def _type_name(annotation: Any) -> str:
    return getattr(annotation, '__name__', None) or str(annotation).replace('typing.', '')


def _convert(annotation: Any, value: Any, where: str) -> Any:
    """Check `value` against a field annotation and convert YAML forms (lists -> tuples)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f'{where}: must not be null')
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError('; '.join(errors))
    if value is None:
        raise ConfigError(f'{where}: must not be null (expected {_type_name(annotation)})')
    if origin is Literal:
        if value not in args:
            raise ConfigError(f'{where}: must be one of {list(args)}, got {value!r}')
        return value
    if dataclasses.is_dataclass(annotation):
        return build_dataclass(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f'{where}[{i}]') for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f'{where}: expected {len(args)} values, got {len(value)}')
        pairs = enumerate(zip(args, value, strict=True))
        return tuple(_convert(a, v, f'{where}[{i}]') for i, (a, v) in pairs)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f'{where}: expected true or false, got {value!r}')
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}: expected an integer, got {value!r}')
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f'{where}: expected a number, got {value!r}')
        if isinstance(value, (int, float)):
            return float(value)
        # PyYAML reads `1e-4` (no dot) as a string; accept it as the number it is meant to be.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f'{where}: expected a number, got {value!r}')
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f'{where}: expected a string, got {value!r}')
        return value
    return value


def build_dataclass(klass: type, data: Any, where: str) -> Any:
    """Build a (nested) frozen dataclass from a mapping; unknown keys are an error."""
    if not isinstance(data, Mapping):
        raise ConfigError(f'{where}: expected a mapping, got {data!r}')
    hints = typing.get_type_hints(klass)
    fields = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - fields)
    if unknown:
        raise ConfigError(
            f'{where or "top level"}: unknown keys {unknown}; known keys: {sorted(fields)}'
        )
    kwargs = {
        name: _convert(hints[name], value, f'{where}.{name}' if where else name)
        for name, value in data.items()
    }
    try:
        return klass(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f'{where or "config"}: {error}') from error


# ---------------------------------------------------------------- files and overrides


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, so `refinement=off` stays 'off'."""


_Loader.yaml_implicit_resolvers = {
    first: [entry for entry in resolvers if entry[0] != 'tag:yaml.org,2002:bool']
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:bool',
    re.compile(r'^(?:true|True|TRUE|false|False|FALSE)$'),
    list('tTfF'),
)


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no object construction), with YAML 1.2 booleans."""
    # _Loader is a SafeLoader: plain data only, never Python objects.
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`'solver.lr=1e-5'` -> (['solver', 'lr'], 1e-05); the value is parsed as YAML."""
    key, sep, raw = text.partition('=')
    keys = key.strip().split('.')
    if not sep or not all(keys):
        raise ConfigError(f'override {text!r} is not of the form dotted.key=value')
    try:
        value = load_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f'override {text!r}: value is not valid YAML ({error})') from error
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of `data` with the dot-list overrides applied."""
    result = _plain(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = result
        for depth, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                prefix = '.'.join(keys[: depth + 1])
                raise ConfigError(f'override {text!r}: {prefix} is a value, not a section')
            node = child
        node[keys[-1]] = value
    return result


def build_train_config(data: Mapping[str, Any], overrides: Sequence[str] = ()) -> TrainConfig:
    """Typed, validated config from a mapping and dot-list overrides."""
    return build_dataclass(TrainConfig, apply_overrides(dict(data), overrides), '')


def load_train_config(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """Load `path` (YAML), apply overrides and validate.

    Raises:
        FileNotFoundError: the file does not exist.
        ConfigError: malformed YAML, unknown keys, wrong types or inconsistent settings.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'training config not found: {path}')
    try:
        data = load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f'{path}: not valid YAML ({error})') from error
    if not isinstance(data, dict):
        raise ConfigError(f'{path}: a training config must be a YAML mapping')
    try:
        return build_train_config(data, overrides)
    except ConfigError as error:
        raise ConfigError(f'{path}: {error}') from error
