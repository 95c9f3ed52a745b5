"""Export the inference graph: `torch.export` (strict, static shape) and ONNX (dynamo exporter).

This is the path TensorRT takes, so the graph must have no graph breaks and no data-dependent
shapes: one static input shape per engine, the static masked-attention row guard, the
deformable attention (`grid_sample`, or `gather` for TensorRT graphs) and float32 softmax are all
inside the model already.

Allowed dependencies: torch, onnx (imported lazily for checks).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from m2a_perception.model import SIZE_DIVISIBILITY, Mask2Anomaly
from m2a_perception.model.instance_head import CentroidInstanceHead
from m2a_perception.types import InstanceNetworkOutput, NetworkOutput
from m2a_perception.weights.checkpoint import atomic_write

LOGGER = logging.getLogger(__name__)

INPUT_NAME = 'images'
# The ONNX output names are the eval-mode output's field names (what the TensorRT engine binds):
# these two for the default model; `output_names` gives `InstanceNetworkOutput`'s three for a
# model with the optional instance head.
OUTPUT_NAMES: tuple[str, ...] = NetworkOutput._fields


def output_names(module: torch.nn.Module) -> tuple[str, ...]:
    """The graph output names of `module` (a `Mask2Anomaly`, or a graph wrapping one)."""
    if any(isinstance(m, CentroidInstanceHead) for m in module.modules()):
        return InstanceNetworkOutput._fields
    return OUTPUT_NAMES


# Opset 18: GridSample is native (>= 16), LayerNorm is a single op (>= 17), and it avoids the
# opset-20 GridSample mis-parse of TensorRT 10.13 (shared/reference/tensorrt.md §2.8).
DEFAULT_OPSET = 18


def example_input(
    image_size: tuple[int, int], batch: int = 1, device: torch.device | str = 'cpu'
) -> torch.Tensor:
    """A deterministic (batch, 3, H, W) normalised input for tracing and parity checks."""
    height, width = image_size
    if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
        raise ValueError(f'export size {height}x{width} must be a multiple of {SIZE_DIVISIBILITY}')
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, height, width, generator=generator).to(device)


def export_program(
    model: Mask2Anomaly, image_size: tuple[int, int], batch: int = 1
) -> torch.export.ExportedProgram:
    """`torch.export.export(..., strict=True)` of the eval-mode model at a static shape."""
    model = model.eval()
    device = next(model.parameters()).device
    return torch.export.export(model, (example_input(image_size, batch, device),), strict=True)


def export_onnx(
    model: Mask2Anomaly,
    path: str | Path,
    image_size: tuple[int, int],
    batch: int = 1,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write an ONNX file with input `images` and outputs `class_logits`, `mask_logits` (and
    `instance_embedding` with the instance head).

    Uses the torch dynamo exporter on the exported program; the file is written atomically and
    checked with `onnx.checker`.
    """
    model = model.eval().cpu()
    LOGGER.info('exporting ONNX at %dx%d (batch %d, opset %d)', *image_size, batch, opset)
    return write_onnx(model, example_input(image_size, batch), path, opset)


def write_onnx(
    module: torch.nn.Module, example: torch.Tensor, path: str | Path, opset: int = DEFAULT_OPSET
) -> Path:
    """Dynamo-export `module` at `example`'s static shape to ONNX (input `images`, outputs
    `class_logits`, `mask_logits`, and `instance_embedding` with the instance head), write it
    atomically and check it with `onnx.checker`."""
    import onnx

    program = torch.onnx.export(
        module,
        (example,),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(output_names(module)),
        opset_version=opset,
        verbose=False,
    )
    path = Path(path)
    atomic_write(path, lambda tmp: program.save(str(tmp)))
    onnx.checker.check_model(str(path))
    return path
