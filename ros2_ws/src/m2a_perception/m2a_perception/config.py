"""Model configuration: a frozen dataclass loaded from `config/model/*.yaml`.

Allowed dependencies: standard library and PyYAML.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

# Cityscapes R50 GMA defaults (shared/reference/mask2anomaly-reference.md §2).
PIXEL_MEAN_RGB = (123.675, 116.280, 103.530)
PIXEL_STD_RGB = (58.395, 57.120, 57.375)

# Upper bounds of the sizes a config may ask for: generous (several times the largest published
# Mask2Former/Mask2Anomaly variants: 200 queries, 9 decoder layers, hidden 256, Swin-L widths),
# but a config from an untrusted checkpoint can no longer make the loader allocate gigabytes.
SIZE_LIMITS: dict[str, int] = {
    'num_classes': 2000,
    'backbone.blocks_per_stage': 64,
    'backbone.stem_channels': 1024,
    'backbone.res2_out_channels': 2048,
    'backbone.bottleneck_channels': 1024,
    'backbone.vit_patch_size': 64,
    'backbone.vit_embed_dim': 2048,
    'backbone.vit_depth': 64,
    'backbone.vit_num_heads': 64,
    'backbone.vit_ffn_dim': 16384,
    'backbone.vit_pretrain_grid': 128,
    'backbone.vit_num_register_tokens': 64,
    'pixel_decoder.conv_dim': 2048,
    'pixel_decoder.mask_dim': 2048,
    'pixel_decoder.encoder_layers': 24,
    'pixel_decoder.encoder_heads': 64,
    'pixel_decoder.encoder_points': 32,
    'pixel_decoder.encoder_ffn_dim': 16384,
    'transformer_decoder.hidden_dim': 2048,
    'transformer_decoder.num_queries': 1000,
    'transformer_decoder.num_heads': 64,
    'transformer_decoder.ffn_dim': 16384,
    'transformer_decoder.num_layers': 32,
    'transformer_decoder.kan_grid_size': 64,
    'transformer_decoder.kan_spline_order': 8,
    'instance_head.harmonics': 16,
    'instance_head.num_convs': 8,
    'instance_head.hidden_dim': 2048,
    'preprocess.short_side': 8192,
    'preprocess.max_size': 16384,
    'preprocess.size_divisibility': 1024,
}


def _check_sizes(section: str, values: dict[str, Any]) -> None:
    """Raise ValueError if an integer size is not an int or lies outside [0, SIZE_LIMITS]."""
    for name, value in values.items():
        key = f'{section}.{name}' if section else name
        limit = SIZE_LIMITS.get(key)
        if limit is None:
            continue
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, bool) or not isinstance(item, int):
                raise ValueError(f'{key} must be an integer, got {item!r}')
            if not 0 <= item <= limit:
                raise ValueError(f'{key} = {item} is outside the allowed range [0, {limit}]')


# How MSDeformAttn samples its value maps (model/ms_deform_attn.py): the official `grid_sample`
# fallback, or the same bilinear sampling from Gather and index arithmetic (no GridSample op).
GRID_SAMPLE = 'grid_sample'
GATHER = 'gather'
DEFORM_SAMPLINGS = (GRID_SAMPLE, GATHER)


# The mask-embedding head (model/transformer_decoder.py): the official 3-layer MLP, or the
# Kolmogorov–Arnold layers of Mask2KAN (model/kan.py; seeds-digest.md §5).
MASK_EMBEDS = ('mlp', 'kan')


def check_deform_sampling(name: str) -> str:
    """`name` if it is a known sampler ('grid_sample' or 'gather'), else ValueError."""
    if name not in DEFORM_SAMPLINGS:
        raise ValueError(f'unknown deform_sampling {name!r}; choose from {list(DEFORM_SAMPLINGS)}')
    return name


# Backbone architectures: the official ResNet (ResNet-50: `resnet50`), or a DINOv2 ViT with a
# simple feature pyramid (model/vit.py; `dinov2_vits14`, `dinov2_vitb14` are its sizes, see
# config/model/*dinov2*.yaml and seeds-digest.md §6).
BACKBONE_ARCHS = ('resnet', 'dinov2_vit')
# Padding a ViT input needs: whole patch grids (14) and whole 1/32 maps (32).
VIT_SIZE_DIVISIBILITY = 224


@dataclass(frozen=True)
class BackboneConfig:
    """ResNet in detectron2 layout (`stem`, `res2`..`res5`), frozen BatchNorm throughout; or,
    with `arch: dinov2_vit`, a DINOv2 ViT (the vit_* fields) with a simple feature pyramid."""

    # 'resnet' (official) or 'dinov2_vit'; the fields of the other architecture are ignored.
    arch: str = 'resnet'

    # Bottleneck blocks in res2..res5; (3, 4, 6, 3) is ResNet-50.
    blocks_per_stage: tuple[int, int, int, int] = (3, 4, 6, 3)
    stem_channels: int = 64
    # Output channels of res2; doubles per stage (256, 512, 1024, 2048 for ResNet-50).
    res2_out_channels: int = 256
    # Bottleneck width of res2; doubles per stage.
    bottleneck_channels: int = 64
    # Stages with frozen parameters: 5 freezes the stem and res2..res5 (FREEZE_AT 5). For a ViT
    # any value > 0 freezes the whole ViT (the pyramid adapter always trains).
    freeze_at: int = 5
    # DINOv2 ViT-S/14 (ViT-B/14: embed 768, heads 12, ffn 3072); pos_embed is trained on a
    # 37×37 grid (518-pixel crops).
    vit_patch_size: int = 14
    vit_embed_dim: int = 384
    vit_depth: int = 12
    vit_num_heads: int = 6
    vit_ffn_dim: int = 1536
    vit_pretrain_grid: int = 37
    vit_num_register_tokens: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, 'blocks_per_stage', tuple(self.blocks_per_stage))
        _check_sizes('backbone', dataclasses.asdict(self))
        if self.arch not in BACKBONE_ARCHS:
            raise ValueError(
                f'backbone.arch must be one of {list(BACKBONE_ARCHS)}, got {self.arch!r}'
            )
        if min(self.vit_patch_size, self.vit_depth, self.vit_num_heads, self.vit_ffn_dim) < 1:
            raise ValueError('backbone.vit_* sizes must be positive')
        if self.vit_embed_dim % 4 or self.vit_embed_dim % self.vit_num_heads:
            raise ValueError(
                'backbone.vit_embed_dim must be divisible by 4 (pyramid) and by vit_num_heads'
            )
        if self.vit_pretrain_grid < 1:
            raise ValueError('backbone.vit_pretrain_grid must be positive')
        if len(self.blocks_per_stage) != 4 or min(self.blocks_per_stage) < 1:
            raise ValueError(
                f'backbone.blocks_per_stage needs 4 positive counts, got {self.blocks_per_stage}'
            )
        if not 0 <= self.freeze_at <= 5:
            raise ValueError(f'backbone.freeze_at must be in [0, 5], got {self.freeze_at}')


@dataclass(frozen=True)
class PixelDecoderConfig:
    """MSDeformAttn pixel decoder (Mask2Former), deformable encoder on res3..res5."""

    conv_dim: int = 256
    mask_dim: int = 256
    num_groups: int = 32
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn_dim: int = 1024
    # 'grid_sample' (official, the eager default) or 'gather' (no GridSample in exported graphs;
    # TensorRT exports always use it, see deploy/precision.py). Changes no parameter.
    deform_sampling: str = GRID_SAMPLE

    def __post_init__(self) -> None:
        _check_sizes('pixel_decoder', dataclasses.asdict(self))
        if min(self.num_groups, self.encoder_heads) <= 0:
            raise ValueError('pixel_decoder.num_groups and encoder_heads must be positive')

        check_deform_sampling(self.deform_sampling)
        if self.conv_dim % self.num_groups:
            raise ValueError('pixel_decoder.conv_dim must be divisible by num_groups')
        if self.conv_dim % self.encoder_heads:
            raise ValueError('pixel_decoder.conv_dim must be divisible by encoder_heads')


@dataclass(frozen=True)
class TransformerDecoderConfig:
    """Masked-attention transformer decoder with global masked attention (GMA)."""

    hidden_dim: int = 256
    num_queries: int = 100
    num_heads: int = 8
    ffn_dim: int = 2048
    # Decoder layers; the official config's DEC_LAYERS 10 counts the query-only prediction too.
    num_layers: int = 9
    # Feature levels the layers attend to in round-robin (1/32, 1/16, 1/8).
    num_feature_levels: int = 3
    # Mask-embedding head: 'mlp' (official) or 'kan' (Mask2KAN, experimental). The kan_* fields
    # are efficient-KAN's defaults and only matter for 'kan'.
    mask_embed: str = 'mlp'
    kan_grid_size: int = 5
    kan_spline_order: int = 3
    kan_grid_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        if isinstance(self.kan_grid_range, (list, tuple)):
            object.__setattr__(self, 'kan_grid_range', tuple(self.kan_grid_range))
        _check_sizes('transformer_decoder', dataclasses.asdict(self))
        if self.mask_embed not in MASK_EMBEDS:
            raise ValueError(
                f'transformer_decoder.mask_embed must be one of {list(MASK_EMBEDS)}, '
                f'got {self.mask_embed!r}'
            )
        if self.kan_grid_size < 1 or self.kan_spline_order < 0:
            raise ValueError('transformer_decoder.kan_grid_size must be >= 1, spline_order >= 0')
        grid_range = self.kan_grid_range
        if (
            not isinstance(grid_range, tuple)
            or len(grid_range) != 2
            or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in grid_range
            )
            or not grid_range[0] < grid_range[1]
        ):
            raise ValueError(
                'transformer_decoder.kan_grid_range must be two finite numbers [low, high] with '
                f'low < high, got {grid_range!r}'
            )
        object.__setattr__(self, 'kan_grid_range', tuple(float(v) for v in grid_range))
        if self.num_heads <= 0:
            raise ValueError('transformer_decoder.num_heads must be positive')
        if self.hidden_dim % self.num_heads:
            raise ValueError('transformer_decoder.hidden_dim must be divisible by num_heads')
        if self.num_feature_levels != 3:
            raise ValueError('transformer_decoder.num_feature_levels must be 3 (res3..res5)')


# The optional class-agnostic instance head (model/instance_head.py): absent (the faithful
# Mask2Anomaly), or the centroid positional-embedding head of the generalist panoptic paper
# (seed 004 Section 3.3.1; seeds-digest.md §6, R10).
INSTANCE_HEADS = ('none', 'centroid')


@dataclass(frozen=True)
class InstanceHeadConfig:
    """Per-pixel class-agnostic instance embedding on the 1/4 mask features (experimental).

    With `kind: none` (default) the network has no such module, no such parameters and no such
    output. With `kind: centroid` every pixel regresses the spectral positional embedding
    concat(γ(u), γ(v)) of its instance's centroid (4·harmonics channels; seed 004 Eq. 2-3).
    """

    kind: str = 'none'
    # L of γ(p) = (sin 2^l πp, cos 2^l πp), l = 0..L-1; the paper's best is L = 4 (Table 4).
    harmonics: int = 4
    # Width of the head: a 1×1 reduction of the mask features to hidden_dim channels, then
    # num_convs 3×3 conv + GroupNorm + ReLU blocks, then the 1×1 projection to 4L channels. Narrow
    # on purpose: at 1/4 resolution a 3×3 conv at the full 256 channels costs ~77 GMAC per layer
    # at 1024×2048.
    hidden_dim: int = 64
    num_convs: int = 2

    def __post_init__(self) -> None:
        _check_sizes('instance_head', dataclasses.asdict(self))
        if self.kind not in INSTANCE_HEADS:
            raise ValueError(
                f'instance_head.kind must be one of {list(INSTANCE_HEADS)}, got {self.kind!r}'
            )
        if self.harmonics < 1:
            raise ValueError(f'instance_head.harmonics must be >= 1, got {self.harmonics}')
        if self.hidden_dim < 1:
            raise ValueError(f'instance_head.hidden_dim must be >= 1, got {self.hidden_dim}')

    @property
    def enabled(self) -> bool:
        """Whether the network has the head."""
        return self.kind != 'none'

    @property
    def embedding_dim(self) -> int:
        """Channels of the embedding: 2L for u, then 2L for v."""
        return 4 * self.harmonics


@dataclass(frozen=True)
class PreprocessConfig:
    """Test-time resize and normalisation (detectron2 DefaultPredictor semantics)."""

    # Short side after resizing; 0 keeps the source size.
    short_side: int = 1024
    max_size: int = 2048
    size_divisibility: int = 32
    pixel_mean: tuple[float, float, float] = PIXEL_MEAN_RGB
    pixel_std: tuple[float, float, float] = PIXEL_STD_RGB

    def __post_init__(self) -> None:
        _check_sizes('preprocess', {k: getattr(self, k) for k in ('short_side', 'max_size')})
        _check_sizes('preprocess', {'size_divisibility': self.size_divisibility})
        if self.short_side < 0 or self.max_size <= 0 or self.size_divisibility <= 0:
            raise ValueError('preprocess sizes must be positive (short_side may be 0)')
        object.__setattr__(self, 'pixel_mean', tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, 'pixel_std', tuple(float(v) for v in self.pixel_std))
        if len(self.pixel_mean) != 3 or len(self.pixel_std) != 3:
            raise ValueError('preprocess.pixel_mean and pixel_std need 3 values (RGB)')


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes the Mask2Anomaly network.

    Only sizes differ between the full Cityscapes config and the tiny test config.
    """

    name: str = 'cityscapes_r50_gma'
    # Known classes (Cityscapes: 19 train ids); the class head has num_classes + 1 logits.
    num_classes: int = 19
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    pixel_decoder: PixelDecoderConfig = field(default_factory=PixelDecoderConfig)
    transformer_decoder: TransformerDecoderConfig = field(default_factory=TransformerDecoderConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    instance_head: InstanceHeadConfig = field(default_factory=InstanceHeadConfig)

    def __post_init__(self) -> None:
        _check_sizes('', {'num_classes': self.num_classes})
        if self.num_classes <= 0:
            raise ValueError(f'num_classes must be positive, got {self.num_classes}')
        if self.pixel_decoder.conv_dim != self.transformer_decoder.hidden_dim:
            raise ValueError('pixel_decoder.conv_dim must equal transformer_decoder.hidden_dim')
        if self.pixel_decoder.mask_dim != self.transformer_decoder.hidden_dim:
            raise ValueError('pixel_decoder.mask_dim must equal transformer_decoder.hidden_dim')
        if (
            self.instance_head.enabled
            and self.instance_head.hidden_dim % self.pixel_decoder.num_groups
        ):
            raise ValueError(
                'instance_head.hidden_dim must be divisible by pixel_decoder.num_groups '
                f'({self.pixel_decoder.num_groups}, its GroupNorm groups), got '
                f'{self.instance_head.hidden_dim}'
            )
        if self.backbone.arch == 'dinov2_vit':
            divisor = math.lcm(self.backbone.vit_patch_size, 32)
            if self.preprocess.size_divisibility % divisor:
                raise ValueError(
                    f'preprocess.size_divisibility must be a multiple of {divisor} for a '
                    f'{self.backbone.vit_patch_size}-pixel-patch ViT (whole patch grids and '
                    f'1/32 maps), got {self.preprocess.size_divisibility}'
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a nested mapping; unknown keys are an error (typos must not pass)."""
        sections = {
            'backbone': BackboneConfig,
            'pixel_decoder': PixelDecoderConfig,
            'transformer_decoder': TransformerDecoderConfig,
            'preprocess': PreprocessConfig,
            'instance_head': InstanceHeadConfig,
        }
        data = dict(data)
        _reject_unknown(cls, data, 'model config')
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sections:
                if not isinstance(value, dict):
                    raise ValueError(f'model config section {key!r} must be a mapping')
                _reject_unknown(sections[key], value, key)
                kwargs[key] = sections[key](**value)
            else:
                kwargs[key] = value
        return cls(**kwargs)


def _reject_unknown(klass: type, data: dict[str, Any], where: str) -> None:
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f'unknown keys in {where}: {unknown}; known keys: {sorted(known)}')


def config_search_path() -> list[Path]:
    """Folders searched for `model/<name>.yaml`, most specific first.

    `M2A_CONFIG_DIR` overrides; then the repository's `config/` (source and editable installs);
    then the ament share directory of a colcon install.
    """
    here = Path(__file__).resolve()
    candidates = []
    if os.environ.get('M2A_CONFIG_DIR'):
        candidates.append(Path(os.environ['M2A_CONFIG_DIR']))
    candidates.append(
        here.parents[4] / 'config'
    )  # <repo>/ros2_ws/src/m2a_perception/m2a_perception
    # <prefix>/lib/pythonX.Y/site-packages/m2a_perception -> <prefix>/share/m2a_perception/config
    candidates.append(here.parents[4] / 'share' / 'm2a_perception' / 'config')
    return candidates


def load_model_config(name_or_path: str | os.PathLike[str]) -> ModelConfig:
    """Load a model config from a YAML path, or by name from `config/model/<name>.yaml`."""
    path = Path(name_or_path)
    if not path.suffix:
        for folder in config_search_path():
            candidate = folder / 'model' / f'{path.name}.yaml'
            if candidate.is_file():
                path = candidate
                break
        else:
            searched = ', '.join(str(p / 'model') for p in config_search_path())
            raise FileNotFoundError(f'model config {str(name_or_path)!r} not found in: {searched}')
    if not path.is_file():
        raise FileNotFoundError(f'model config file not found: {path}')
    data = parse_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ValueError(f'model config {path} must be a YAML mapping')
    return ModelConfig.from_dict(data)


def _construct_tuple_as_list(loader: yaml.SafeLoader, node: yaml.SequenceNode) -> list[Any]:
    return loader.construct_sequence(node, deep=True)


class _PlainDataLoader(yaml.SafeLoader):
    """yaml's SafeLoader that also reads `!!python/tuple` as a list of plain values.

    launch_ros writes every list parameter of a launch file that way (it dumps the parameters
    as tuples into its temporary parameter file); the items still go through the safe
    constructors, so nothing but plain data is built.
    """

    yaml_constructors: ClassVar[dict[str, Any]] = {
        **yaml.SafeLoader.yaml_constructors,
        'tag:yaml.org,2002:python/tuple': _construct_tuple_as_list,
    }


def parse_yaml(text: str, source: str) -> Any:
    """Plain YAML data (never Python objects) from `text`; `source` names it in errors.

    Every YAML file or value a user hands m2a goes through here: model configs, parameter files,
    `-p name:=value` overrides. A `!!python/tuple` (what launch_ros writes for list parameters)
    reads as a list; every other Python tag is refused.

    Raises:
        ValueError: one sentence naming `source` and the line, e.g. for a `!!python/object` tag
            (refused without constructing anything) or a syntax error.
    """
    try:
        return yaml.load(text, Loader=_PlainDataLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f'{source} line {mark.line + 1}' if mark is not None else source
        problem = error.problem or 'invalid YAML'
        if isinstance(error, yaml.constructor.ConstructorError) and 'tag' in problem:
            tag = problem.rpartition('tag ')[2].strip("'").replace('tag:yaml.org,2002:', '!!')
            raise ValueError(
                f'{where}: the YAML tag {tag} is refused (only plain data is allowed)'
            ) from None
        raise ValueError(f'{where}: invalid YAML: {problem}') from None
    except yaml.YAMLError as error:
        raise ValueError(f'{source}: invalid YAML: {error}') from None
