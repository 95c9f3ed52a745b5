"""Precision recipes written into the model, and the deployable `InferenceGraph`.

TensorRT precision flags changed incompatibly between torch-tensorrt 2.8 (JetPack 6, weak typing,
`enabled_precisions`) and 2.13 (strong typing only; `enabled_precisions` silently ignored), see
shared/reference/tensorrt.md §1.4. So the precision is not a compile flag here: every dtype is
explicit in the graph, and the engine is built strongly typed, which both versions honour.

The FP16 recipe (`fp16-islands`):

- normalisation of the uint8 input runs in FP32, then the image is cast to FP16;
- the ResNet backbone runs in FP16; its frozen BatchNorm scale and shift are computed in FP32
  (the experimental DINOv2 ViT backbone has no FP16 plan yet and stays FP32 as a whole)
  from FP32 statistics and cast once;
- in the pixel decoder and the transformer decoder every convolution and linear layer computes in
  FP16 (explicit casts of its input and weights) and hands FP32 back, so the residual streams,
  LayerNorm and GroupNorm, every softmax (attention and deformable-attention weights), the
  deformable sampling locations and the bilinear sampling itself, the sine position encodings
  and the attention masks are all FP32. Only FFN hidden activations (`linear1`, before a ReLU)
  stay FP16;
- the class head (`class_embed`), the mask-embedding MLP (`mask_embed`), the per-pixel
  `mask_features` projection, the mask product (einsum) and the optional instance head
  (`instance_head`) are FP32 end to end;
- outputs are FP32.

Both recipes sample the deformable attention with `gather` (`DEPLOY_DEFORM_SAMPLING`), whatever
the checkpoint's config says: the same bilinear values as the official `grid_sample` (bit for bit
in eager mode on the CPU), but no GridSample op in the exported graph. TensorRT 10.14 and later
give wrong output for GridSample inside FP16 engines (FP32 islands, pytorch/TensorRT#4074) and
for GridSample-based deformable attention (NVIDIA/TensorRT#4813); see model/ms_deform_attn.py.

The FP32 recipe keeps the network untouched apart from the sampler. Resizing and padding stay
outside the graph; the
graph takes the padded uint8 image and, when told the valid size, zeroes the padding after
normalisation exactly as `preprocess.normalize_and_pad` does.

Allowed dependencies: torch, the model package, `export` (names), onnx (lazily).
"""

from __future__ import annotations

import copy
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import GATHER, check_deform_sampling
from m2a_perception.export import DEFAULT_OPSET, write_onnx
from m2a_perception.model import SIZE_DIVISIBILITY, Mask2Anomaly
from m2a_perception.model.attention import MultiheadAttention
from m2a_perception.model.backbone import FrozenBatchNorm2d
from m2a_perception.model.ms_deform_attn import set_deform_sampling
from m2a_perception.model.pixel_decoder import ConvGroupNorm
from m2a_perception.model.vit import ViTBackbone
from m2a_perception.types import instance_embedding_of

# The MSDeformAttn sampler of every deploy (TensorRT) graph: no GridSample op (module docstring).
DEPLOY_DEFORM_SAMPLING = GATHER

# Names (relative to the network) of modules that stay FP32 end to end in the FP16 recipe.
FP32_MODULES = (
    'sem_seg_head.predictor.class_embed',
    'sem_seg_head.predictor.mask_embed',
    'sem_seg_head.pixel_decoder.mask_features',
    # The optional centroid instance head (absent by default): a few convolutions on the FP32
    # mask features whose output is decoded by nearest-neighbour search on a fine grid.
    'sem_seg_head.instance_head',
    # Unused in forward (kept for checkpoint compatibility); casting it would only cost time.
    'fusion_layer',
)
# Linear layers followed by a ReLU and another linear layer: their output may stay low precision.
_LOW_PRECISION_OUTPUT_LINEARS = ('linear1',)


@dataclass(frozen=True)
class PrecisionRecipe:
    """How the inference graph assigns dtypes.

    Attributes:
        name: 'fp32' or 'fp16' (the value of `--precision`).
        version: bumped whenever the dtype plan changes; part of every engine cache key.
        compute_dtype: dtype of the bulk convolutions and matrix products.
        fp32_islands: what stays FP32 (documentation; recorded in engine sidecars).
    """

    name: str
    version: int
    compute_dtype: torch.dtype
    fp32_islands: tuple[str, ...]

    @property
    def id(self) -> str:
        """Stable identifier used in cache keys, e.g. 'fp16-islands-v1'."""
        suffix = '-islands' if self.compute_dtype != torch.float32 else ''
        return f'{self.name}{suffix}-v{self.version}'

    def as_dict(self) -> dict[str, object]:
        return {
            'id': self.id,
            'name': self.name,
            'version': self.version,
            'compute_dtype': str(self.compute_dtype).replace('torch.', ''),
            'fp32_islands': list(self.fp32_islands),
        }


FP32 = PrecisionRecipe('fp32', 1, torch.float32, ('everything',))
FP16 = PrecisionRecipe(
    'fp16',
    1,
    torch.float16,
    (
        'input normalisation',
        'frozen BatchNorm folding',
        'LayerNorm',
        'GroupNorm',
        'softmax (attention and deformable-attention weights)',
        'deformable sampling locations and bilinear sampling (gather)',
        'position encodings',
        'residual streams of the pixel and transformer decoders',
        'attention masks',
        'class head',
        'mask embedding MLP',
        'mask_features projection',
        'mask product (einsum)',
        'outputs',
    ),
)
RECIPES: dict[str, PrecisionRecipe] = {'fp32': FP32, 'fp16': FP16}


def get_recipe(name: str) -> PrecisionRecipe:
    """The recipe called `name` ('fp32' or 'fp16').

    Raises:
        ValueError: for an unknown name.
    """
    if name not in RECIPES:
        raise ValueError(f'unknown precision {name!r}; choose from {sorted(RECIPES)}')
    return RECIPES[name]


# --- modules with explicit casts --------------------------------------------------------------


class _CastingLinear(nn.Linear):
    """Linear layer computing in its weight dtype; returns `output_dtype`."""

    output_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.to(self.weight.dtype), self.weight, self.bias)
        return out.to(self.output_dtype)


class _CastingConvMixin:
    """Convolution computing in its weight dtype; returns `output_dtype`."""

    output_dtype: torch.dtype

    def _conv_forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        out = super()._conv_forward(x.to(weight.dtype), weight, bias)  # type: ignore[misc]
        return out.to(self.output_dtype)


class _CastingConv2d(_CastingConvMixin, nn.Conv2d):
    pass


class _CastingConvGroupNorm(_CastingConvMixin, ConvGroupNorm):
    pass


class _CastingMultiheadAttention(MultiheadAttention):
    """Projections and attention products in the weight dtype; the softmax is FP32 already."""

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        blocked: torch.Tensor | None = None,
    ) -> torch.Tensor:
        dtype = self.in_proj_weight.dtype
        return super().forward(query.to(dtype), key.to(dtype), value.to(dtype), blocked)


class _Fp32FoldedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """Frozen BatchNorm whose scale and shift are computed in FP32, then cast to the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight.float() * (self.running_var.float() + self.eps).rsqrt()
        shift = self.bias.float() - self.running_mean.float() * scale
        return x * scale.to(x.dtype)[None, :, None, None] + shift.to(x.dtype)[None, :, None, None]


class _Fp32ViTBackbone(ViTBackbone):
    """The ViT backbone as an FP32 island: casts its input to FP32 (its weights stay FP32)."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return super().forward(x.float())


# Exact module types -> their casting variant (exact types, so that a new subclass in the model
# is not silently treated like its parent).
_CASTING_TYPES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: _CastingLinear,
    nn.Conv2d: _CastingConv2d,
    ConvGroupNorm: _CastingConvGroupNorm,
    MultiheadAttention: _CastingMultiheadAttention,
}
# Module types whose own parameters stay FP32 in the decoders (their math is an FP32 island).
_FP32_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.Embedding)


def _cast_own_parameters(module: nn.Module, dtype: torch.dtype) -> None:
    for parameter in module.parameters(recurse=False):
        parameter.data = parameter.data.to(dtype)


def _keeps_fp32(name: str) -> bool:
    if name.rsplit('.', 1)[-1] == 'fusion_layer':
        return True
    return any(name == kept or name.startswith(kept + '.') for kept in FP32_MODULES)


def _apply_backbone_plan(backbone: nn.Module, low: torch.dtype) -> None:
    """ResNet: low precision throughout; frozen BatchNorm folded from FP32 statistics."""
    for module in backbone.modules():
        if type(module) is FrozenBatchNorm2d:
            module.__class__ = _Fp32FoldedFrozenBatchNorm2d
        elif isinstance(module, nn.Conv2d):
            _cast_own_parameters(module, low)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f'precision plan has no rule for backbone module {type(module)}')


def apply_precision(
    network: Mask2Anomaly,
    recipe: PrecisionRecipe,
    *,
    compute_dtype: torch.dtype | None = None,
    deform_sampling: str = DEPLOY_DEFORM_SAMPLING,
) -> Mask2Anomaly:
    """Return a copy of `network` with the recipe's dtypes and casts written into it.

    The input network is not modified. Parameter names are unchanged.

    Args:
        network: the eval-mode Mask2Anomaly (FP32 weights).
        recipe: `FP32` (a plain copy) or `FP16`.
        compute_dtype: overrides the recipe's low-precision dtype. With `torch.float32` the FP16
            plan is applied with no-op casts, which checks on CPU that the rewritten modules
            compute exactly what the original ones do.
        deform_sampling: the copy's MSDeformAttn sampler (default `gather`: no GridSample).

    Returns:
        The converted copy, in eval mode.

    Raises:
        TypeError: if the network contains a convolution or linear type the plan does not know
            (the model changed: extend the plan rather than guess).
    """
    converted = copy.deepcopy(network).float().eval()
    set_deform_sampling(converted, check_deform_sampling(deform_sampling))
    if recipe.compute_dtype == torch.float32 and compute_dtype is None:
        return converted
    low = compute_dtype or recipe.compute_dtype
    if type(converted.backbone) is ViTBackbone:
        # The experimental DINOv2 backbone has no low-precision plan yet: the ViT and its
        # pyramid stay FP32 (an FP32 island), fed the FP32 image; the decoders follow the plan.
        converted.backbone.__class__ = _Fp32ViTBackbone
    else:
        _apply_backbone_plan(converted.backbone, low)
    # Decoders: low-precision matrix products with FP32 in and out. Modules with their own
    # parameters but no matrix product (norms, embeddings, the encoder's level embedding) keep
    # them FP32 because they act on FP32 streams.
    for name, module in converted.sem_seg_head.named_modules(prefix='sem_seg_head'):
        if _keeps_fp32(name) or isinstance(module, _FP32_TYPES):
            continue
        casting = _CASTING_TYPES.get(type(module))
        if casting is None:
            if isinstance(module, (nn.Linear, nn.Conv2d, MultiheadAttention)):
                raise TypeError(f'precision plan has no rule for {name} ({type(module)})')
            continue
        _cast_own_parameters(module, low)
        module.__class__ = casting
        low_output = name.rsplit('.', 1)[-1] in _LOW_PRECISION_OUTPUT_LINEARS
        module.output_dtype = low if low_output else torch.float32
    return converted


class InferenceGraph(nn.Module):
    """What gets compiled: uint8 image in, FP32 `(class_logits, mask_logits)` out.

    The outputs are the `NetworkOutput` fields in their order, as a plain tuple (the export
    boundary; `GraphBackend` wraps them into a `NetworkOutput` again).

    Args:
        network: the network with a precision already applied (`apply_precision`).
        pixel_mean, pixel_std: RGB normalisation of the model (`ModelConfig.preprocess`).
        compute_dtype: dtype the normalised image is cast to before the backbone.
        valid_size: (height, width) of the real image inside the padded input; the padding is
            zeroed after normalisation (as `normalize_and_pad` pads with zeros). None = no
            padding.
    """

    def __init__(
        self,
        network: Mask2Anomaly,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        compute_dtype: torch.dtype = torch.float32,
        valid_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.network = network
        self.compute_dtype = compute_dtype
        self.valid_size = None if valid_size is None else (int(valid_size[0]), int(valid_size[1]))
        self.register_buffer(
            'pixel_mean', torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        )
        self.register_buffer(
            'pixel_std', torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Args:
            images: (B, 3, H, W) uint8 RGB, already resized and padded to the engine's static
                size (H, W multiples of 32).

        Returns:
            class_logits (B, Q, K+1) and mask_logits (B, Q, H/4, W/4), float32; then
            instance_embedding (B, 4L, H/4, W/4) float32 for a network with the instance head.
        """
        if images.dtype != torch.uint8:
            raise ValueError(f'InferenceGraph takes uint8 images, got {images.dtype}')
        height, width = int(images.shape[-2]), int(images.shape[-1])
        # FP32 island: normalisation, identical to preprocess.normalize_and_pad.
        normalized = (images.float() - self.pixel_mean) / self.pixel_std
        if self.valid_size is not None and self.valid_size != (height, width):
            valid_h, valid_w = self.valid_size
            if valid_h > height or valid_w > width:
                raise ValueError(f'valid size {self.valid_size} exceeds input {height}x{width}')
            normalized = F.pad(
                normalized[..., :valid_h, :valid_w], (0, width - valid_w, 0, height - valid_h)
            )
        outputs = self.network(normalized.to(self.compute_dtype))
        # A plain tuple, not the NetworkOutput: this graph is what `.ep` engines serialise, and
        # `torch.export.save` refuses NamedTuple types not registered with torch's pytree.
        embedding = instance_embedding_of(outputs)
        if embedding is None:
            return outputs.class_logits.float(), outputs.mask_logits.float()
        return outputs.class_logits.float(), outputs.mask_logits.float(), embedding.float()


def build_inference_graph(
    network: Mask2Anomaly,
    recipe: PrecisionRecipe,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    valid_size: tuple[int, int] | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
    deform_sampling: str = DEPLOY_DEFORM_SAMPLING,
) -> InferenceGraph:
    """`apply_precision` plus the uint8 front end, in eval mode on the network's device."""
    converted = apply_precision(
        network, recipe, compute_dtype=compute_dtype, deform_sampling=deform_sampling
    )
    graph = InferenceGraph(
        converted, pixel_mean, pixel_std, compute_dtype or recipe.compute_dtype, valid_size
    )
    device = next(network.parameters()).device
    return graph.to(device).eval()


def example_uint8_input(
    input_shape: tuple[int, int, int, int], device: torch.device | str = 'cpu', seed: int = 0
) -> torch.Tensor:
    """A deterministic (B, 3, H, W) uint8 image for tracing and compilation."""
    _, channels, height, width = input_shape
    if channels != 3:
        raise ValueError(f'input must have 3 channels, got shape {input_shape}')
    if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
        raise ValueError(f'input size {height}x{width} must be a multiple of {SIZE_DIVISIBILITY}')
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, input_shape, generator=generator, dtype=torch.uint8)
    return image.to(device)


def export_inference_graph(
    graph: InferenceGraph, input_shape: tuple[int, int, int, int]
) -> torch.export.ExportedProgram:
    """Strict `torch.export` of the graph at a static uint8 input shape (the TensorRT input)."""
    device = graph.pixel_mean.device
    example = example_uint8_input(input_shape, device)
    return torch.export.export(graph.eval(), (example,), strict=True)


def export_graph_onnx(
    graph: InferenceGraph,
    path: str | Path,
    input_shape: tuple[int, int, int, int],
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write the graph as ONNX (uint8 input `images`; outputs `class_logits`, `mask_logits`).

    The explicit casts of the recipe become ONNX `Cast` nodes, so TensorRT's parser builds the
    same dtypes in a strongly typed network. Runs on the CPU; written atomically and checked.
    """
    graph = graph.eval()
    return write_onnx(
        graph, example_uint8_input(input_shape, graph.pixel_mean.device), path, opset
    )


# --- checking a graph against the recipe ------------------------------------------------------

# ATen ops (base names) that must see FP32 inputs in the FP16 recipe.
_ISLAND_OPS = frozenset(
    {
        'softmax',
        '_softmax',
        'layer_norm',
        'native_layer_norm',
        'group_norm',
        'native_group_norm',
        'einsum',
        'grid_sampler',
        'grid_sampler_2d',
        # the gather sampler: value reads and the corner multiply-adds
        'index_select',
        'addcmul',
        'upsample_bilinear2d',
    }
)
# Matrix products and convolutions: the bulk of the compute.
_BULK_OPS = frozenset({'linear', 'conv2d', 'convolution', 'addmm', 'matmul', 'bmm', 'mm'})


@dataclass(frozen=True)
class PrecisionReport:
    """Dtypes found in an exported graph.

    Attributes:
        island_violations: island ops (softmax, norms, einsum, deformable sampling, resize)
            with a non-FP32 floating-point input, as 'op in module: dtypes'.
        bulk_ops_by_dtype: count of convolution / linear / matmul ops by input dtype.
        fp32_bulk_modules: modules whose convolutions / matrix products run in FP32.
        output_dtypes: dtypes of the graph outputs.
    """

    island_violations: tuple[str, ...]
    bulk_ops_by_dtype: dict[str, int]
    fp32_bulk_modules: tuple[str, ...]
    output_dtypes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.island_violations and all(d == 'torch.float32' for d in self.output_dtypes)

    def as_dict(self) -> dict[str, object]:
        return {
            'ok': self.ok,
            'island_violations': list(self.island_violations),
            'bulk_ops_by_dtype': dict(self.bulk_ops_by_dtype),
            'fp32_bulk_modules': list(self.fp32_bulk_modules),
            'output_dtypes': list(self.output_dtypes),
        }


def _tensor_dtypes(args: object) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    items = args if isinstance(args, (list, tuple)) else [args]
    for item in items:
        if isinstance(item, (list, tuple)):
            dtypes.extend(_tensor_dtypes(item))
        elif isinstance(item, torch.fx.Node):
            value = item.meta.get('val')
            if isinstance(value, torch.Tensor):
                dtypes.append(value.dtype)
    return dtypes


def _op_name(target: object) -> str:
    # 'aten.linear.default' -> 'linear'
    parts = str(target).split('.')
    return parts[1] if len(parts) >= 2 and parts[0] == 'aten' else str(target)


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get('nn_module_stack') or {}
    return list(stack.values())[-1][0] if stack else '<root>'


def inspect_precision(program: torch.export.ExportedProgram) -> PrecisionReport:
    """Check an exported inference graph: FP32 islands, bulk dtypes and output dtypes."""
    violations = []
    bulk: Counter[str] = Counter()
    fp32_modules: dict[str, None] = {}
    outputs: list[str] = []
    for node in program.graph.nodes:
        if node.op == 'output':
            outputs = [str(d) for d in _tensor_dtypes(node.args[0])]
        if node.op != 'call_function':
            continue
        name = _op_name(node.target)
        floats = [d for d in _tensor_dtypes(node.args) if d.is_floating_point]
        if name in _ISLAND_OPS:
            if any(d != torch.float32 for d in floats):
                violations.append(f'{name} in {_module_path(node)}: {[str(d) for d in floats]}')
        elif name in _BULK_OPS and floats:
            bulk[str(floats[0])] += 1
            if floats[0] == torch.float32:
                fp32_modules[_module_path(node)] = None
    return PrecisionReport(tuple(violations), dict(bulk), tuple(fp32_modules), tuple(outputs))
