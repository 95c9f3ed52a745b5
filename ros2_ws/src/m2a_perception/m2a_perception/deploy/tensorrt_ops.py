"""Static TensorRT check of an ONNX graph against TensorRT's ONNX operator support matrix.

TensorRT cannot run in CI, so what its ONNX parser accepts is checked from data instead:
`tensorrt_onnx_ops.yaml` (next to this file) holds the rows of onnx-tensorrt's
`docs/operators.md` for the TensorRT versions we target (JetPack 6.2: 10.3, JetPack 7.2: 10.16,
desktop torch-tensorrt 2.13: 11.0), with their sources, and our own forbidden operators
(GridSample from TensorRT 10.14 on). `check_onnx_for_tensorrt` walks every node of a graph and
returns one sentence per violation: an operator outside the matrix or forbidden, the opset out of
range, an input type outside the supported types, a restriction broken (constant axes, outputs,
attributes, ranks) or a UINT8 tensor inside the network.

Allowed dependencies: standard library, PyYAML, onnx (lazily, for files).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MATRIX_FILE = Path(__file__).with_name('tensorrt_onnx_ops.yaml')

# onnx.TensorProto element types -> the names the support matrix uses.
_ONNX_TYPE_NAMES = {
    1: 'FP32',
    2: 'UINT8',
    3: 'INT8',
    6: 'INT32',
    7: 'INT64',
    9: 'BOOL',
    10: 'FP16',
    11: 'DOUBLE',
    16: 'BF16',
}


@dataclass(frozen=True)
class OpRule:
    """One operator row of the matrix (field meanings: the header of the YAML file)."""

    name: str
    types: tuple[str, ...]
    restriction: str = ''
    typed_inputs: tuple[int, ...] = (0,)
    index_inputs: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    constant_inputs: Mapping[int, str] = field(default_factory=dict)
    max_outputs: int | None = None
    ones_attributes: tuple[str, ...] = ()
    input_ranks: tuple[int, ...] = ()
    allowed_attributes: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> OpRule:
        return cls(
            name=name,
            types=tuple(data['types']),
            restriction=str(data.get('restriction', '')),
            typed_inputs=tuple(data.get('typed_inputs', (0,))),
            index_inputs={int(k): tuple(v) for k, v in data.get('index_inputs', {}).items()},
            constant_inputs={int(k): str(v) for k, v in data.get('constant_inputs', {}).items()},
            max_outputs=data.get('max_outputs'),
            ones_attributes=tuple(data.get('ones_attributes', ())),
            input_ranks=tuple(data.get('input_ranks', ())),
            allowed_attributes={
                k: tuple(v) for k, v in data.get('allowed_attributes', {}).items()
            },
        )


@dataclass(frozen=True)
class TensorRTTarget:
    """A TensorRT version we deploy to, with the support table that describes it.

    Attributes:
        name: e.g. 'jetpack-7.2'.
        tensorrt: the TensorRT version, 'major.minor'.
        platform: where it runs (documentation).
        table: name of the support table (its source is in the YAML header).
        opset: inclusive (min, max) default-domain opset the parser accepts.
        ops: operator name -> rule.
        forbidden_ops: operator name -> why we refuse it on this version.
    """

    name: str
    tensorrt: str
    platform: str
    table: str
    opset: tuple[int, int]
    ops: Mapping[str, OpRule]
    forbidden_ops: Mapping[str, str]


def load_support_matrix(path: str | os.PathLike[str] = MATRIX_FILE) -> dict[str, TensorRTTarget]:
    """The targets of the matrix file, by name.

    Raises:
        ValueError: a malformed file (unknown schema, a target naming a missing table).
    """
    with Path(path).open() as handle:
        data = yaml.safe_load(handle)
    if not isinstance(data, dict) or data.get('schema') != 1:
        raise ValueError(f'{path}: not a schema-1 TensorRT support matrix')
    tables = {
        name: {op: OpRule.from_dict(op, row) for op, row in rows.items()}
        for name, rows in data['tables'].items()
    }
    targets = {}
    for name, target in data['targets'].items():
        if target['table'] not in tables:
            raise ValueError(f'{path}: target {name} names unknown table {target["table"]!r}')
        low, high = target['opset']
        targets[name] = TensorRTTarget(
            name=name,
            tensorrt=str(target['tensorrt']),
            platform=str(target['platform']),
            table=target['table'],
            opset=(int(low), int(high)),
            ops=tables[target['table']],
            forbidden_ops=dict(target.get('forbidden_ops') or {}),
        )
    return targets


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split('.')
    return int(parts[0]), int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def target_for_tensorrt_version(
    version: str, targets: Mapping[str, TensorRTTarget] | None = None
) -> TensorRTTarget | None:
    """The target whose TensorRT major.minor equals `version`'s (e.g. '10.16.2.10'), or None."""
    targets = load_support_matrix() if targets is None else targets
    wanted = _major_minor(version)
    return next((t for t in targets.values() if _major_minor(t.tensorrt) == wanted), None)


# --- the check --------------------------------------------------------------------------------


def _tensor_types(model: Any) -> dict[str, str]:
    """Tensor name -> matrix type name, from inputs, outputs, value_info, initializers and
    Constant nodes."""
    graph = model.graph
    types: dict[str, str] = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        elem = value.type.tensor_type.elem_type
        if elem:
            types[value.name] = _ONNX_TYPE_NAMES.get(elem, f'onnx type {elem}')
    for tensor in graph.initializer:
        types[tensor.name] = _ONNX_TYPE_NAMES.get(
            tensor.data_type, f'onnx type {tensor.data_type}'
        )
    for node in graph.node:
        if node.op_type == 'Constant':
            for attribute in node.attribute:
                if attribute.name == 'value':
                    elem = attribute.t.data_type
                    types[node.output[0]] = _ONNX_TYPE_NAMES.get(elem, f'onnx type {elem}')
    return types


def _ranks(model: Any) -> dict[str, int]:
    graph = model.graph
    ranks = {}
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        if value.type.tensor_type.HasField('shape'):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    for tensor in graph.initializer:
        ranks[tensor.name] = len(tensor.dims)
    return ranks


def _attribute_values(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _decoded(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _node_label(node: Any, index: int) -> str:
    return f'node {index} {node.op_type} ({node.name or "unnamed"})'


def _check_node(
    node: Any,
    index: int,
    rule: OpRule,
    types: Mapping[str, str],
    ranks: Mapping[str, int],
    constants: set[str],
    consumers: Mapping[str, int],
) -> list[str]:
    label = _node_label(node, index)
    problems = []
    for position in rule.typed_inputs:
        if position < len(node.input) and node.input[position]:
            dtype = types.get(node.input[position])
            if dtype is None:
                problems.append(f'{label}: the type of input {position} is unknown')
            elif dtype not in rule.types:
                problems.append(
                    f'{label}: input {position} is {dtype}, TensorRT supports {list(rule.types)}'
                )
    for position, allowed in rule.index_inputs.items():
        if position < len(node.input) and types.get(node.input[position]) not in allowed:
            problems.append(
                f'{label}: index input {position} is {types.get(node.input[position])}, '
                f'TensorRT supports {list(allowed)}'
            )
    for position, name in rule.constant_inputs.items():
        value = node.input[position] if position < len(node.input) else ''
        if value and value not in constants:
            problems.append(
                f'{label}: `{name}` must be a build-time constant ({rule.restriction})'
            )
    if rule.max_outputs is not None:
        used = [o for o in node.output[rule.max_outputs :] if o and consumers.get(o)]
        if used:
            problems.append(f'{label}: outputs {used} are used ({rule.restriction})')
    attributes = _attribute_values(node)
    for name in rule.ones_attributes:
        if name in attributes and any(v != 1 for v in attributes[name]):
            problems.append(f'{label}: {name} {attributes[name]} ({rule.restriction})')
    for name, allowed in rule.allowed_attributes.items():
        if name in attributes and _decoded(attributes[name]) not in allowed:
            problems.append(
                f'{label}: {name} {_decoded(attributes[name])!r} is not supported '
                f'(supported: {list(allowed)})'
            )
    if rule.input_ranks and node.input:
        rank = ranks.get(node.input[0])
        if rank is not None and rank not in rule.input_ranks:
            problems.append(f'{label}: input rank {rank} ({rule.restriction})')
    return problems


def check_onnx_for_tensorrt(model: Any, target: TensorRTTarget) -> list[str]:
    """Every way `model` (an onnx.ModelProto or a path) breaks `target`'s support matrix.

    Returns:
        One sentence per violation (empty: the graph passes). Shapes and types are inferred
        first, so graphs without value_info are checked as well.
    """
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    model = onnx.shape_inference.infer_shapes(model)
    problems = []
    low, high = target.opset
    for opset in model.opset_import:
        if opset.domain in ('', 'ai.onnx') and not low <= opset.version <= high:
            problems.append(
                f"opset {opset.version} is outside TensorRT {target.tensorrt}'s range {low}-{high}"
            )
    graph = model.graph
    types, ranks = _tensor_types(model), _ranks(model)
    constants = {t.name for t in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == 'Constant'}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    boundary = {v.name for v in graph.input} | {v.name for v in graph.output}
    for index, node in enumerate(graph.node):
        label = _node_label(node, index)
        if node.domain not in ('', 'ai.onnx'):
            problems.append(f'{label}: custom domain {node.domain!r} is not in the matrix')
            continue
        if node.op_type in target.forbidden_ops:
            problems.append(
                f'{label}: forbidden on TensorRT {target.tensorrt}: '
                f'{target.forbidden_ops[node.op_type]}'
            )
            continue
        rule = target.ops.get(node.op_type)
        if rule is None:
            problems.append(
                f'{label}: {node.op_type} is not in the TensorRT {target.tensorrt} support '
                f'matrix ({target.table})'
            )
            continue
        problems.extend(_check_node(node, index, rule, types, ranks, constants, consumers))
        for name in list(node.input) + list(node.output):
            if types.get(name) == 'UINT8' and (node.op_type != 'Cast' or name not in boundary):
                problems.append(
                    f'{label}: UINT8 tensor {name!r} inside the network (TensorRT supports UINT8 '
                    'only as a network input or output, converted by Cast)'
                )
    return problems


def check_onnx_for_targets(
    model: Any, targets: Sequence[TensorRTTarget] | None = None
) -> dict[str, list[str]]:
    """`check_onnx_for_tensorrt` for each target (default: every target of the matrix)."""
    import onnx

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    chosen = list(load_support_matrix().values()) if targets is None else list(targets)
    return {target.name: check_onnx_for_tensorrt(model, target) for target in chosen}
