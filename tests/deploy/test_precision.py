"""Precision recipes written into the model: strict export, FP32 parity and FP32 islands."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from m2a_perception.deploy.gate import synthetic_gate_images
from m2a_perception.deploy.precision import (
    FP16,
    FP32,
    InferenceGraph,
    apply_precision,
    build_inference_graph,
    example_uint8_input,
    export_inference_graph,
    get_recipe,
    inspect_precision,
)
from m2a_perception.deploy.tensorrt_backend import GraphBackend
from m2a_perception.inference import TorchBackend
from m2a_perception.preprocess import normalize_and_pad

from .deploy_checks import assert_graph_passes_the_gate

SIZE = (64, 64)
SHAPE = (1, 3, *SIZE)


def _reference(model, config, images, valid=None):
    preprocess = config.preprocess
    if valid is not None:
        images = images[..., : valid[0], : valid[1]]
    normalized = normalize_and_pad(images, preprocess.pixel_mean, preprocess.pixel_std, 32)
    with torch.no_grad():
        return model(normalized)


def _graph(model, config, recipe, valid=None, **kwargs):
    preprocess = config.preprocess
    return build_inference_graph(
        model, recipe, preprocess.pixel_mean, preprocess.pixel_std, valid, **kwargs
    )


def test_recipes():
    assert get_recipe('fp16') is FP16 and FP16.id == 'fp16-islands-v1'
    assert get_recipe('fp32') is FP32 and FP32.id == 'fp32-v1'
    assert 'LayerNorm' in FP16.fp32_islands and 'mask product (einsum)' in FP16.fp32_islands
    assert FP16.as_dict()['compute_dtype'] == 'float16'
    with pytest.raises(ValueError, match='unknown precision'):
        get_recipe('int8')


@pytest.mark.parametrize('valid', [None, (50, 40)])
def test_fp32_graph_equals_the_eager_model_exactly(micro_model, micro_config, valid):
    images = example_uint8_input(SHAPE, seed=1)
    graph = _graph(micro_model, micro_config, FP32, valid)
    with torch.no_grad():
        outputs = graph(images)
    for out, ref in zip(
        outputs, _reference(micro_model, micro_config, images, valid), strict=True
    ):
        assert out.dtype == torch.float32
        assert torch.equal(out, ref)


def test_fp16_plan_with_fp32_casts_exports_strictly_and_matches_eager(micro_model, micro_config):
    """The rewritten modules of the FP16 plan compute exactly what the model does, and the graph
    goes through strict torch.export (the TensorRT input)."""
    graph = _graph(micro_model, micro_config, FP16, compute_dtype=torch.float32)
    decoder_layer = graph.network.sem_seg_head.pixel_decoder.transformer.encoder.layers[0]
    assert type(decoder_layer.self_attn.value_proj).__name__ == '_CastingLinear'
    program = export_inference_graph(graph, SHAPE)
    exported = program.module()
    for seed in (1, 2):
        images = example_uint8_input(SHAPE, seed=seed)
        reference = _reference(micro_model, micro_config, images)
        with torch.no_grad():
            eager = graph(images)
        for out, ref in zip(eager, reference, strict=True):
            assert torch.equal(out, ref)
        for out, ref in zip(exported(images), reference, strict=True):
            torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    assert not program.range_constraints  # static shapes only


def test_exported_graph_survives_the_ep_engine_serialisation(micro_model, micro_config, tmp_path):
    """`.ep` engines are written with `torch.export.save` (through torch-tensorrt): the graph's
    output structure must serialise, and the loaded program computes the same logits."""
    program = export_inference_graph(_graph(micro_model, micro_config, FP32), SHAPE)
    path = tmp_path / 'graph.pt2'
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    images = example_uint8_input(SHAPE, seed=1)
    expected = program.module()(images)
    actual = loaded(images)
    assert len(actual) == len(expected) == 2
    for out, ref in zip(actual, expected, strict=True):
        assert torch.equal(out, ref)


def test_fp16_graph_keeps_the_fp32_islands_in_the_exported_graph(micro_model, micro_config):
    graph = _graph(micro_model, micro_config, FP16)
    report = inspect_precision(export_inference_graph(graph, SHAPE))
    assert report.ok, report.island_violations
    assert report.output_dtypes == ('torch.float32', 'torch.float32')
    # The bulk runs in FP16; only the class head, mask embedding and mask features stay FP32.
    assert report.bulk_ops_by_dtype['torch.float16'] > 3 * report.bulk_ops_by_dtype.get(
        'torch.float32', 0
    )
    fp32_modules = {path.removeprefix('network.') for path in report.fp32_bulk_modules}
    allowed = (
        'sem_seg_head.predictor.class_embed',
        'sem_seg_head.predictor.mask_embed',
        'sem_seg_head.pixel_decoder.mask_features',
    )
    assert fp32_modules and all(path.startswith(allowed) for path in fp32_modules), fp32_modules
    assert report.as_dict()['ok'] is True


def test_inspect_precision_reports_a_low_precision_island():
    class HalfSoftmax(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(x.half(), -1).float()

    report = inspect_precision(torch.export.export(HalfSoftmax(), (torch.randn(2, 4),)))
    assert not report.ok
    assert 'softmax' in report.island_violations[0] and 'float16' in report.island_violations[0]


def test_fp16_graph_runs_on_cpu_and_passes_the_gate(micro_model, micro_config):
    graph = _graph(micro_model, micro_config, FP16)
    network = graph.network
    assert network.backbone.stem.conv1.weight.dtype == torch.float16
    assert network.backbone.stem.conv1.norm.running_var.dtype == torch.float32
    assert network.sem_seg_head.predictor.class_embed.weight.dtype == torch.float32
    assert network.sem_seg_head.pixel_decoder.mask_features.weight.dtype == torch.float32
    assert network.sem_seg_head.predictor.decoder_norm.weight.dtype == torch.float32
    result = assert_graph_passes_the_gate(micro_model, graph, micro_config, SIZE)
    assert 0 < result.class_logits_max_abs < 0.5


def test_apply_precision_leaves_the_input_model_alone(micro_model):
    before = {name: tensor.clone() for name, tensor in micro_model.state_dict().items()}
    converted = apply_precision(micro_model, FP16)
    assert all(p.dtype == torch.float32 for p in micro_model.parameters())
    assert set(converted.state_dict()) == set(before)
    for name, tensor in micro_model.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_apply_precision_refuses_modules_it_has_no_rule_for(micro_model):
    class NewLinear(nn.Linear):
        pass

    micro_model.sem_seg_head.predictor.extra = NewLinear(4, 4)
    with pytest.raises(TypeError, match='no rule'):
        apply_precision(micro_model, FP16)


def test_graph_input_checks(micro_model, micro_config):
    graph = _graph(micro_model, micro_config, FP32, valid=(70, 64))
    assert isinstance(graph, InferenceGraph)
    with pytest.raises(ValueError, match='uint8'):
        graph(torch.zeros(*SHAPE))
    with pytest.raises(ValueError, match='exceeds'):
        graph(torch.zeros(*SHAPE, dtype=torch.uint8))
    with pytest.raises(ValueError, match='multiple of 32'):
        example_uint8_input((1, 3, 60, 64))


def test_graph_backend_turns_normalised_input_back_into_uint8(micro_model, micro_config):
    preprocess = micro_config.preprocess
    graph = _graph(micro_model, micro_config, FP32)
    backend = GraphBackend(graph, 'cpu', SHAPE, preprocess.pixel_mean, preprocess.pixel_std)
    images = example_uint8_input(SHAPE, seed=3)
    assert torch.equal(backend.prepare(images), images)
    normalized = normalize_and_pad(images, preprocess.pixel_mean, preprocess.pixel_std, 32)
    assert torch.equal(backend.prepare(normalized), images)
    for out, ref in zip(backend(normalized), backend(images), strict=True):
        assert torch.equal(out, ref)
    with pytest.raises(ValueError, match='built for input'):
        backend(torch.zeros(1, 3, 64, 96, dtype=torch.uint8))


def test_uint8_frames_go_straight_to_a_uint8_graph(micro_model, micro_config):
    """A uint8 graph gets the frame as uint8 (no float round trip) and matches the float path."""
    import dataclasses

    from m2a_perception.pipeline import Segmenter
    from m2a_perception.postprocess import PostprocessConfig

    preprocess = dataclasses.replace(micro_config.preprocess, short_side=48, max_size=64)
    backend = GraphBackend(
        _graph(micro_model, micro_config, FP32), 'cpu', SHAPE, preprocess.pixel_mean,
        preprocess.pixel_std,
    )  # fmt: skip
    seen: list[torch.dtype] = []
    run = backend.run
    backend.run = lambda images: (seen.append(images.dtype), run(images))[1]
    frame = synthetic_gate_images((48, 64), count=1)[0].permute(1, 2, 0).contiguous().numpy()
    post = PostprocessConfig(output_resolution='model')
    images, record = Segmenter(backend, preprocess, post).preprocess(frame)
    assert images.dtype == torch.uint8 and record.padded_size == SIZE  # 48x64 padded to 64x64
    # The padding is the mean colour, so it normalises to about zero as in the float route.
    assert images[0, :, 48:, :].flatten(1).unique(dim=1).tolist() == [[124], [116], [104]]
    graph_output = Segmenter(backend, preprocess, post)(frame)
    torch_output = Segmenter(TorchBackend(micro_model), preprocess, post)(frame)
    assert seen == [torch.uint8]
    torch.testing.assert_close(
        graph_output.anomaly_map, torch_output.anomaly_map, atol=2e-3, rtol=0
    )


def test_deploy_graphs_sample_with_gather_and_leave_the_model_alone(micro_model, micro_config):
    from m2a_perception.model.ms_deform_attn import deform_samplings_in

    assert deform_samplings_in(micro_model) == {'grid_sample'}
    for recipe in (FP32, FP16):
        graph = _graph(micro_model, micro_config, recipe)
        assert deform_samplings_in(graph) == {'gather'}
    assert deform_samplings_in(micro_model) == {'grid_sample'}
    official = _graph(micro_model, micro_config, FP32, deform_sampling='grid_sample')
    assert deform_samplings_in(official) == {'grid_sample'}
    images = example_uint8_input(SHAPE, seed=3)
    with torch.no_grad():
        gathered, reference = _graph(micro_model, micro_config, FP32)(images), official(images)
    for out, ref in zip(gathered, reference, strict=True):
        assert (out - ref).abs().max().item() <= 1e-6


@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_exported_deploy_onnx_has_no_grid_sample(deploy_onnx, precision):
    import onnx

    model = onnx.load(str(deploy_onnx[precision]))
    ops = {node.op_type for node in model.graph.node}
    assert 'GridSample' not in ops
    assert {'Gather', 'Floor'} <= ops  # the gather sampler is there instead
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
