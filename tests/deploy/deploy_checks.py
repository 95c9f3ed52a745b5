"""The deploy-path checks shared by the model variants' tests (tiny, KAN head, DINOv2 backbone).

Each variant's test states what is special about it; the common steps live here once:
export to ONNX and compare it in onnxruntime with the eager model, check the ONNX file against
every TensorRT target, and run the FP16 deploy graph on the CPU through the precision gate.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

from m2a_perception.config import ModelConfig
from m2a_perception.deploy.gate import GateResult, run_gate, synthetic_gate_images
from m2a_perception.deploy.precision import FP16, InferenceGraph, build_inference_graph
from m2a_perception.deploy.tensorrt_backend import GraphBackend
from m2a_perception.deploy.tensorrt_ops import check_onnx_for_targets, load_support_matrix
from m2a_perception.export import export_onnx
from m2a_perception.inference import TorchBackend
from m2a_perception.inference.onnxruntime_backend import OnnxRuntimeBackend


def seeded_images(size: tuple[int, int], seed: int) -> torch.Tensor:
    """A (1, 3, H, W) float batch of standard-normal pixels, reproducible from `seed`."""
    return torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(seed))


def onnx_op_types(path: Path) -> set[str]:
    """The ONNX op types in the file's main graph."""
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def assert_passes_every_tensorrt_target(path: Path) -> None:
    """No op of the ONNX file is refused by any TensorRT target of the support matrix."""
    assert check_onnx_for_targets(path) == {name: [] for name in load_support_matrix()}


def export_onnx_matching_eager(
    model: torch.nn.Module,
    path: Path,
    size: tuple[int, int],
    seeds: Iterable[int] = (1,),
    atol: float = 1e-4,
) -> Path:
    """`export_onnx` of the eval-mode model at `size`; in onnxruntime every output has the eager
    shape and is within `atol` of it on the `seeded_images` of each seed. Returns the path."""
    path = export_onnx(model, path, size)
    backend = OnnxRuntimeBackend(path)
    for seed in seeds:
        images = seeded_images(size, seed)
        with torch.no_grad():
            expected = model(images)
        for out, ref in zip(backend(images), expected, strict=True):
            assert out.shape == ref.shape
            assert (out - ref).abs().max().item() <= atol
    return path


def fp16_graph(model: torch.nn.Module, config: ModelConfig) -> InferenceGraph:
    """The FP16 deploy graph of the model (uint8 input, the config's normalisation)."""
    preprocess = config.preprocess
    return build_inference_graph(model, FP16, preprocess.pixel_mean, preprocess.pixel_std)


def assert_graph_passes_the_gate(
    model: torch.nn.Module, graph: InferenceGraph, config: ModelConfig, size: tuple[int, int]
) -> GateResult:
    """The deploy graph on the CPU passes the precision gate against the eager model on two
    synthetic frames of `size`; returns the gate's result for variant-specific checks."""
    preprocess = config.preprocess
    backend = GraphBackend(
        graph, 'cpu', (1, 3, *size), preprocess.pixel_mean, preprocess.pixel_std
    )
    result = run_gate(
        TorchBackend(model),
        backend,
        synthetic_gate_images(size, count=2),
        preprocess.pixel_mean,
        preprocess.pixel_std,
    )
    assert result.passed, result.summary()
    return result
