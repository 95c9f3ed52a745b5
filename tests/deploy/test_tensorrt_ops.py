"""Static TensorRT check: the exported deploy graphs fit TensorRT's ONNX support matrix."""

from __future__ import annotations

import dataclasses

import onnx
import pytest
from onnx import TensorProto, helper

from m2a_perception.deploy.tensorrt_ops import (
    check_onnx_for_targets,
    check_onnx_for_tensorrt,
    load_support_matrix,
    target_for_tensorrt_version,
)

TARGETS = load_support_matrix()


def test_matrix_names_the_tensorrt_versions_we_target():
    assert {name: t.tensorrt for name, t in TARGETS.items()} == {
        'jetpack-6.2': '10.3',
        'jetpack-7.2': '10.16',
        'desktop': '11.0',
    }
    assert TARGETS['jetpack-6.2'].opset == (9, 20) and TARGETS['desktop'].opset == (9, 25)
    assert 'GridSample' in TARGETS['jetpack-7.2'].forbidden_ops
    assert '#4074' in TARGETS['desktop'].forbidden_ops['GridSample']
    assert target_for_tensorrt_version('10.16.2.10').name == 'jetpack-7.2'
    assert target_for_tensorrt_version('10.3.0.30').name == 'jetpack-6.2'
    assert target_for_tensorrt_version('10.9.0') is None


@pytest.mark.parametrize('precision', ['fp32', 'fp16'])
def test_deploy_graphs_pass_every_target(deploy_onnx, precision):
    results = check_onnx_for_targets(deploy_onnx[precision])
    assert set(results) == set(TARGETS)
    assert results == {name: [] for name in TARGETS}


def test_grid_sample_graph_is_refused_from_tensorrt_10_14_on(tiny_config, tmp_path):
    """The official sampler's graph: accepted by 10.3, refused by 10.16 and 11.0."""
    import torch

    from m2a_perception.export import export_onnx
    from m2a_perception.model import build_model

    config = dataclasses.replace(
        tiny_config,
        pixel_decoder=dataclasses.replace(
            tiny_config.pixel_decoder, deform_sampling='grid_sample'
        ),
    )
    torch.manual_seed(0)
    path = export_onnx(build_model(config).eval(), tmp_path / 'grid.onnx', (64, 128))
    results = check_onnx_for_targets(path)
    assert results['jetpack-6.2'] == []
    for name in ('jetpack-7.2', 'desktop'):
        assert len(results[name]) == 6  # 2 encoder layers x 3 levels
        assert all('GridSample' in line and 'forbidden' in line for line in results[name])


def _model(nodes, inputs, outputs, initializers=(), opset=18):
    graph = helper.make_graph(nodes, 'g', inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid('', opset)])


def _float(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _check(model, target='jetpack-7.2'):
    return check_onnx_for_tensorrt(model, TARGETS[target])


def test_an_operator_outside_the_matrix_is_refused():
    model = _model(
        [helper.make_node('Unique', ['x'], ['y'], name='u')],
        [_float('x', [4])],
        [_float('y', [None])],
    )
    assert _check(model) == [
        'node 0 Unique (u): Unique is not in the TensorRT 10.16 support matrix '
        '(onnx-tensorrt-10.15)'
    ]


def test_reduce_axes_must_be_constant():
    axes = helper.make_tensor_value_info('axes', TensorProto.INT64, [1])
    model = _model(
        [helper.make_node('ReduceSum', ['x', 'axes'], ['y'], name='r')],
        [_float('x', [2, 3]), axes],
        [_float('y', None)],
    )
    problems = _check(model)
    assert problems == [
        'node 0 ReduceSum (r): `axes` must be a build-time constant '
        '(`axes` must be an initializer)'
    ]
    constant = helper.make_tensor('axes', TensorProto.INT64, [1], [1])
    fixed = _model(
        [helper.make_node('ReduceSum', ['x', 'axes'], ['y'], name='r')],
        [_float('x', [2, 3])],
        [_float('y', None)],
        [constant],
    )
    assert _check(fixed) == []


def test_unsupported_types_attributes_opset_and_uint8_are_refused():
    cubic = _model(
        [helper.make_node('Resize', ['x', '', 'scales'], ['y'], name='rs', mode='cubic')],
        [_float('x', [1, 1, 2, 2])],
        [_float('y', None)],
        [helper.make_tensor('scales', TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    assert _check(cubic) == [
        "node 0 Resize (rs): mode 'cubic' is not supported (supported: ['nearest', 'linear'])"
    ]
    double = _model(
        [helper.make_node('Floor', ['x'], ['y'], name='f')],
        [helper.make_tensor_value_info('x', TensorProto.DOUBLE, [2])],
        [helper.make_tensor_value_info('y', TensorProto.DOUBLE, [2])],
    )
    assert _check(double) == [
        "node 0 Floor (f): input 0 is DOUBLE, TensorRT supports ['FP32', 'FP16', 'BF16']"
    ]
    relu = _model([helper.make_node('Relu', ['x'], ['y'])], [_float('x', [2])], [_float('y', [2])])
    assert _check(relu, 'desktop') == []
    new_opset = relu.__class__()
    new_opset.CopyFrom(relu)
    new_opset.opset_import[0].version = 21
    assert _check(new_opset, 'jetpack-6.2') == ["opset 21 is outside TensorRT 10.3's range 9-20"]
    uint8 = helper.make_tensor_value_info('x', TensorProto.UINT8, [2])
    add = _model(
        [helper.make_node('Add', ['x', 'x'], ['y'], name='a')],
        [uint8],
        [helper.make_tensor_value_info('y', TensorProto.UINT8, [2])],
    )
    problems = _check(add)
    assert any('UINT8 tensor' in line for line in problems)
    assert any('input 0 is UINT8' in line for line in problems)


def test_maxpool_indices_and_layer_norm_extra_outputs_are_refused():
    pool = _model(
        [
            helper.make_node('MaxPool', ['x'], ['y', 'i'], name='p', kernel_shape=[2, 2]),
            helper.make_node('Cast', ['i'], ['j'], name='c', to=TensorProto.FLOAT),
        ],
        [_float('x', [1, 1, 4, 4])],
        [_float('y', None), _float('j', None)],
    )
    assert _check(pool) == [
        "node 0 MaxPool (p): outputs ['i'] are used (2D or 3D pooling only. `Indices` output "
        'tensor unsupported. `dilations` must be empty or all ones)'
    ]


def test_check_accepts_a_path_and_a_model(deploy_onnx):
    assert check_onnx_for_tensorrt(deploy_onnx['fp16'], TARGETS['desktop']) == []
    assert check_onnx_for_tensorrt(onnx.load(str(deploy_onnx['fp16'])), TARGETS['desktop']) == []
