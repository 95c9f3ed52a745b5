#!/usr/bin/env python3
"""Generate docs/ros_interface.md and config/m2a_perception.yaml from the node's declarations.

    .venv/bin/python tools/gen_ros_docs.py            # rewrite both files
    .venv/bin/python tools/gen_ros_docs.py --check    # exit 1 if a committed file is stale

The parameter YAML is the node's declarations written out: every parameter at its declared
default, its description above it and its range, choices and mutability beside it. The defaults
are written once, in `m2a_perception.ros.params`; edit them there and regenerate.

Sources (nothing is typed twice):
- parameters: `m2a_perception.ros.params.NODE_PARAMETERS` and `camera_parameters` (name, type,
  default, range or choices, mutability, description);
- output topics and encodings: `m2a_perception.ros.topics.OUTPUT_TOPICS` / `OUTPUT_MESSAGE_TYPES`,
  `m2a_perception.ros.outputs.OUTPUT_ENCODINGS`,
  output QoS `m2a_perception.ros.node.OUTPUT_QOS`;
- messages: the `.msg` files of m2a_perception_msgs, verbatim;
- replay conventions: `m2a_perception.ros.replay.bag` (ground-truth topics).

Only the one-line meaning of each output topic lives here (`OUTPUT_DESCRIPTIONS`); the
generator fails if an output exists in the code without a description, so the two cannot drift.
`tests/replay/test_ros_docs.py` fails when a committed file differs from the output.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOC_PATH = REPO_ROOT / 'docs' / 'ros_interface.md'
PARAMS_PATH = REPO_ROOT / 'config' / 'm2a_perception.yaml'
MSG_DIR = REPO_ROOT / 'ros2_ws' / 'src' / 'm2a_perception_msgs' / 'msg'

OUTPUT_DESCRIPTIONS = {
    'score': 'Per-pixel anomaly score (float32, about [0, 1] for the node scorers); higher = '
    'more anomalous.',
    'heatmap': 'The score through `viz.colormap` between `viz.score_min` and `viz.score_max`, '
    'for RViz.',
    'mask': '255 where score >= `anomaly.threshold`, else 0.',
    'semantic': 'Open-set semantic labels: Cityscapes train ids 0..18, 19 = unknown (score >= '
    '`anomaly.threshold`).',
    'confidence': 'Confidence of the semantic label, 0..255 for [0, 1].',
    'segments': 'Open-set panoptic result: mono16 segment-id image plus one OpenSetSegment per '
    'segment (known stuff, known things, unknown things).',
    'overlay': 'Camera image blended with class colours and boxes around unknown objects; at '
    'most `viz.overlay_rate_hz`.',
    'stats': 'Stage timings and drop counters of every processed frame.',
}


def _type_name(default: object) -> str:
    if isinstance(default, bool):
        return 'bool'
    if isinstance(default, int):
        return 'int'
    if isinstance(default, float):
        return 'double'
    if isinstance(default, str):
        return 'string'
    return 'string[]'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, str):
        return f"`'{value}'`" if value == '' else f'`{value}`'
    if isinstance(value, (list, tuple)):
        return '`[' + ', '.join(str(v) for v in value) + ']`'
    return f'`{value}`'


def _number(value: float | None, integer: bool) -> str:
    assert value is not None
    return str(int(value)) if integer else f'{value:g}'


def _allowed(spec: object) -> str:
    if spec.choices:  # type: ignore[attr-defined]
        return ', '.join(f'`{c}`' for c in spec.choices)  # type: ignore[attr-defined]
    if spec.minimum is not None:  # type: ignore[attr-defined]
        integer = isinstance(spec.default, int)  # type: ignore[attr-defined]
        low = _number(spec.minimum, integer)  # type: ignore[attr-defined]
        high = _number(spec.maximum, integer)  # type: ignore[attr-defined]
        return f'[{low}, {high}]'
    return ''


def _mutability(spec: object) -> str:
    if spec.read_only:  # type: ignore[attr-defined]
        return 'read-only'
    if spec.engine:  # type: ignore[attr-defined]
        return 'unconfigured only'
    return 'runtime'


def _cell(text: str) -> str:
    return text.replace('|', '\\|').replace('\n', ' ')


def _plain(text: str) -> str:
    """A table cell of plain code text: `<name>` must not read as an HTML tag."""
    return _cell(text.replace('<', '&lt;').replace('>', '&gt;'))


def _parameter_rows(specs: object) -> list[str]:
    rows = [
        '| Parameter | Type | Default | Allowed | Changeable | Description |',
        '|---|---|---|---|---|---|',
    ]
    for spec in specs:  # type: ignore[attr-defined]
        rows.append(
            f'| `{spec.name}` | {_type_name(spec.default)} | {_value(spec.default)} | '
            f'{_allowed(spec)} | {_mutability(spec)} | {_plain(spec.description)} |'
        )
    return rows


def _qos_text(qos: object) -> str:
    history = qos.history.name.lower()  # type: ignore[attr-defined]
    reliability = qos.reliability.name.lower()  # type: ignore[attr-defined]
    durability = qos.durability.name.lower()  # type: ignore[attr-defined]
    return f'{reliability}, {history} depth {qos.depth}, {durability}'  # type: ignore[attr-defined]


def render() -> str:
    """The whole document."""
    from m2a_perception.ros.conversions import COMPRESSED_FORMATS, INPUT_ENCODINGS
    from m2a_perception.ros.node import NODE_NAME, OUTPUT_QOS
    from m2a_perception.ros.outputs import OUTPUT_ENCODINGS
    from m2a_perception.ros.params import NODE_PARAMETERS, camera_parameters
    from m2a_perception.ros.replay.bag import GROUND_TRUTH_KINDS, GROUND_TRUTH_SEGMENT
    from m2a_perception.ros.topics import OUTPUT_MESSAGE_TYPES, OUTPUT_TOPICS

    missing = sorted(set(OUTPUT_TOPICS) - set(OUTPUT_DESCRIPTIONS))
    stale = sorted(set(OUTPUT_DESCRIPTIONS) - set(OUTPUT_TOPICS))
    if missing or stale:
        raise SystemExit(
            f'OUTPUT_DESCRIPTIONS in tools/gen_ros_docs.py is out of date: add {missing}, '
            f'remove {stale}'
        )
    lines = [
        '<!-- Generated by tools/gen_ros_docs.py from the code; do not edit by hand. -->',
        '# ROS 2 interface of `m2a_perception`',
        '',
        f'Node `{NODE_NAME}` (a lifecycle node; executable `perception_node`, or '
        '`m2a-perception-node` / `python -m m2a_perception.cli.perception_node` without ROS '
        'tooling). '
        'Topic names are relative to the node namespace; `<camera>` is each entry of '
        '`cameras.names`.',
        '',
        '## Topics',
        '',
        '### Inputs',
        '',
        '| Topic | Type | QoS | Notes |',
        '|---|---|---|---|',
        '| `<camera>/image` (or `cameras.<camera>.topic`) | sensor_msgs/Image | '
        f'`input.reliability`, keep last `input.depth` | encodings {", ".join(INPUT_ENCODINGS)}; '
        '`cameras.<camera>.transport` raw |',
        '| `<camera>/image/compressed` (or `cameras.<camera>.topic`) | '
        f'sensor_msgs/CompressedImage | same | {" or ".join(COMPRESSED_FORMATS)}; transport '
        'compressed |',
        '| `/clock` | rosgraph_msgs/Clock | best effort | only with `use_sim_time` (bag replay) |',
        '',
        '### Outputs (per camera)',
        '',
        f'QoS of every output: {_qos_text(OUTPUT_QOS)} (reliable and best-effort subscribers '
        'both connect; a slow subscriber never makes outputs pile up). Each output is computed '
        'only while it has subscribers and carries the input image header unchanged.',
        '',
        '| Topic | Type | Encoding | Content |',
        '|---|---|---|---|',
    ]
    for key, topic in OUTPUT_TOPICS.items():
        msg_type = OUTPUT_MESSAGE_TYPES[key]
        encoding = OUTPUT_ENCODINGS.get(key, '')
        if key == 'segments':
            encoding = 'segment_ids: mono16'
        lines.append(
            f'| `<camera>/{topic}` | {msg_type} | {encoding} | {_cell(OUTPUT_DESCRIPTIONS[key])} |'
        )
    lines += [
        '',
        '### Node-level',
        '',
        '| Topic | Type | Content |',
        '|---|---|---|',
        '| `/diagnostics` | diagnostic_msgs/DiagnosticArray | every `diagnostics.period_s`: '
        'backend state, processing time against the budget, one status per camera (rate, '
        'stamp age, drops, invalid frames, QoS problems) |',
        '',
        '### Ground truth in bags (replay tools)',
        '',
        '`m2a-replay`, `m2a-pack-bag` and `replay_eval.launch.py` read ground truth next to '
        'each camera, with the header stamp of the image it labels:',
        '',
        '| Topic | Type | Values |',
        '|---|---|---|',
    ]
    values = {
        'anomaly': 'mono8: 0 inlier, 1 anomaly, 255 void',
        'semantic': 'mono8: train ids 0..K-1, K unknown (19 for Cityscapes), 255 void',
    }
    for kind in GROUND_TRUTH_KINDS:
        lines.append(
            f'| `<camera>/{GROUND_TRUTH_SEGMENT}/{kind}` | sensor_msgs/Image | {values[kind]} |'
        )
    lines += [
        '',
        '## Parameters',
        '',
        '"unconfigured only": shapes the engine or the graph; set it in the YAML or run the '
        'cleanup transition first. "runtime": validated and applied while running. Numbers '
        'carry their range in the parameter descriptor (`ros2 param describe`).',
        '',
        *_parameter_rows(NODE_PARAMETERS),
        '',
        '### Per camera',
        '',
        *_parameter_rows(camera_parameters('<camera>')),
        '',
        '## Messages (m2a_perception_msgs)',
        '',
    ]
    for path in sorted(MSG_DIR.glob('*.msg')):
        lines += [f'### {path.stem}', '', '```text', path.read_text().rstrip(), '```', '']
    return '\n'.join(lines).rstrip() + '\n'


_YAML_HEADER = """\
# Parameters of the m2a_perception node, each at its declared default.
# Generated by tools/gen_ros_docs.py from ros2_ws/src/m2a_perception/m2a_perception/ros/params.py;
# do not edit by hand: change the declaration and regenerate. Copy this file to override values
# (`--ros-args --params-file`), or set single ones with `-p name:=value`. Keyed `/**:` so the
# file applies wherever the node is launched (a bare `m2a_perception:` key is silently ignored
# inside a namespace).
#
# "unconfigured only" parameters shape the engine or the graph and change only while the node is
# unconfigured (lifecycle cleanup first); "read-only" ones are fixed at start-up; all others
# change at runtime and are validated (`ros2 param describe /m2a_perception <name>`).
/**:
  ros__parameters:
"""
_YAML_WIDTH = 99
_YAML_VALUE_COLUMN = 40


def _yaml_scalar(value: object) -> str:
    """One YAML flow scalar that loads back as `value` with the same Python type."""
    if isinstance(value, (list, tuple)):
        return '[' + ', '.join(_yaml_scalar(item) for item in value) + ']'
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix('\n').removesuffix('\n...')


def _yaml_note(spec: object) -> str:
    """The end-of-line comment of a parameter: allowed values and when it can change."""
    allowed = _allowed(spec)
    if spec.choices:  # type: ignore[attr-defined]
        allowed = ' | '.join(spec.choices)  # type: ignore[attr-defined]
    return '; '.join(part for part in (allowed, _mutability(spec)) if part and part != 'runtime')


def _yaml_lines(specs: object) -> list[str]:
    """Nested `key: value` lines for dotted parameter names, in declaration order."""
    lines: list[str] = []
    opened: list[str] = []
    for spec in specs:  # type: ignore[attr-defined]
        *groups, leaf = spec.name.split('.')
        common = 0
        while common < min(len(opened), len(groups)) and opened[common] == groups[common]:
            common += 1
        if common < len(opened) or common < len(groups):
            lines.append('')  # a blank line between groups
        opened = opened[:common]
        for group in groups[common:]:
            lines.append(f'{"  " * (2 + len(opened))}{group}:')
            opened.append(group)
        indent = '  ' * (2 + len(opened))
        wrapped = textwrap.wrap(spec.description, _YAML_WIDTH - len(indent) - 2)
        lines += [f'{indent}# {line}' for line in wrapped]
        entry = f'{indent}{leaf}: {_yaml_scalar(spec.default)}'
        note = _yaml_note(spec)
        lines.append(f'{entry.ljust(_YAML_VALUE_COLUMN)} # {note}' if note else entry)
    return lines


def render_parameter_yaml() -> str:
    """config/m2a_perception.yaml: every node parameter at its declared default."""
    from m2a_perception.ros.param_file import flatten_parameters
    from m2a_perception.ros.params import NODE_PARAMETERS, camera_parameters, default_values

    cameras = NODE_PARAMETERS[0].default
    # Per-camera parameters sit under `cameras:` next to `cameras.names`.
    specs = [NODE_PARAMETERS[0]]
    for camera in cameras:  # type: ignore[union-attr]
        specs += camera_parameters(camera)
    specs += NODE_PARAMETERS[1:]
    text = _YAML_HEADER + '\n'.join(_yaml_lines(specs)).lstrip('\n') + '\n'
    loaded = flatten_parameters(yaml.safe_load(text)['/**']['ros__parameters'])
    expected = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in default_values(list(cameras)).items()  # type: ignore[arg-type]
    }
    typed = {name: (type(value), value) for name, value in loaded.items()}
    if typed != {name: (type(value), value) for name, value in expected.items()}:
        raise SystemExit('the rendered parameter YAML does not load back as the declared defaults')
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true', help='fail if a generated file is stale')
    parser.add_argument('--out', type=Path, default=DOC_PATH, help='the interface document')
    parser.add_argument(
        '--params-out', type=Path, default=PARAMS_PATH, help='the node parameter YAML'
    )
    args = parser.parse_args(argv)
    stale = False
    for path, text in ((args.out, render()), (args.params_out, render_parameter_yaml())):
        if args.check:
            if not path.is_file() or path.read_text() != text:
                print(f'{path} is stale: run .venv/bin/python tools/gen_ros_docs.py')
                stale = True
            else:
                print(f'{path} is up to date')
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f'wrote {path}')
    return 1 if stale else 0


if __name__ == '__main__':
    sys.exit(main())
