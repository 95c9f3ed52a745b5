"""Fixtures for the deployment tests: small models and one shared ONNX export (CPU)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

# The tiny config at this size is what the ONNX fixture and the CLI tests use.
TINY_SIZE = (64, 128)

# The session's ONNX exports take a minute each on the CPU; under `pytest -n 2 --dist loadgroup`
# the tests that use them run on one worker, so each graph is exported once per run.
SHARED_EXPORTS = frozenset({'tiny_onnx', 'deploy_onnx'})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SHARED_EXPORTS & set(getattr(item, 'fixturenames', ())):
            item.add_marker(pytest.mark.xdist_group('deploy_onnx'))


@pytest.fixture(scope='session')
def micro_config(tiny_config):
    """The tiny config with one encoder and one decoder layer: faster torch.export in tests."""
    return dataclasses.replace(
        tiny_config,
        name='micro',
        pixel_decoder=dataclasses.replace(tiny_config.pixel_decoder, encoder_layers=1),
        transformer_decoder=dataclasses.replace(tiny_config.transformer_decoder, num_layers=1),
    )


@pytest.fixture
def micro_model(micro_config):
    from m2a_perception.model import build_model

    torch.manual_seed(0)
    return build_model(micro_config).eval()


@pytest.fixture(scope='session')
def tiny_onnx(tmp_path_factory, tiny_config) -> Path:
    """`export_onnx` of the seed-0 tiny model at TINY_SIZE, exported once per session."""
    from m2a_perception.export import export_onnx
    from m2a_perception.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    return export_onnx(model, tmp_path_factory.mktemp('onnx') / 'tiny.onnx', TINY_SIZE)


@pytest.fixture
def copy_tiny_onnx(tiny_onnx):
    """A build function for engine caches: writes the shared ONNX file to the given path."""

    def build(path: Path) -> dict[str, str]:
        shutil.copyfile(tiny_onnx, path)
        return {'frontend': 'copy of the session ONNX export'}

    return build


@pytest.fixture
def fast_onnxruntime_kind(monkeypatch, tiny_onnx):
    """The onnxruntime engine kind, building by copying the session's ONNX export.

    Valid for the seed-0 tiny model, which is what `--config tiny --random-weights` and the
    tiny_model fixture build.
    """
    calls = []

    def build(self, request, engine_path: Path):
        calls.append(engine_path)
        shutil.copyfile(tiny_onnx, engine_path)
        return {'frontend': 'copy'}

    from m2a_perception.deploy.build import OnnxRuntimeKind

    monkeypatch.setattr(OnnxRuntimeKind, 'build', build)
    return calls


@pytest.fixture(scope='session')
def deploy_onnx(tmp_path_factory, tiny_config) -> dict[str, Path]:
    """The two deploy graphs of the seed-0 tiny model at TINY_SIZE, as TensorRT gets them:
    uint8 input, FP32 and FP16 precision recipes, exported once per session."""
    from m2a_perception.deploy.precision import (
        build_inference_graph,
        export_graph_onnx,
        get_recipe,
    )
    from m2a_perception.model import build_model

    torch.manual_seed(0)
    model = build_model(tiny_config).eval()
    folder = tmp_path_factory.mktemp('deploy_onnx')
    preprocess = tiny_config.preprocess
    paths = {}
    for precision in ('fp32', 'fp16'):
        graph = build_inference_graph(
            model, get_recipe(precision), preprocess.pixel_mean, preprocess.pixel_std
        )
        paths[precision] = export_graph_onnx(
            graph, folder / f'tiny-{precision}.onnx', (1, 3, *TINY_SIZE)
        )
    return paths
