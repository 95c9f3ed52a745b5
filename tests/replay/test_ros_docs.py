"""docs/ros_interface.md and config/m2a_perception.yaml are generated from the code and must be
regenerated when it changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import yaml

from m2a_perception.ros.param_file import flatten_parameters

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'gen_ros_docs.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('gen_ros_docs', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ros_interface_doc_is_up_to_date():
    tool = load_tool()
    committed = tool.DOC_PATH.read_text() if tool.DOC_PATH.is_file() else ''
    assert committed == tool.render(), (
        'docs/ros_interface.md is stale: run .venv/bin/python tools/gen_ros_docs.py'
    )


def test_parameter_yaml_is_generated_from_the_declarations():
    tool = load_tool()
    committed = tool.PARAMS_PATH.read_text()
    assert committed == tool.render_parameter_yaml(), (
        'config/m2a_perception.yaml is stale: run .venv/bin/python tools/gen_ros_docs.py'
    )


def test_parameter_yaml_loads_back_as_the_declared_defaults():
    from m2a_perception.ros.params import default_values

    data = yaml.safe_load(load_tool().render_parameter_yaml())
    assert list(data) == ['/**'], 'the YAML must be keyed /** to work in any namespace'
    assert data['/**']['ros__parameters']['model']['precision'] == 'fp32'
    assert data['/**']['ros__parameters']['cameras']['front']['topic'] == ''
    flat = flatten_parameters(data['/**']['ros__parameters'])
    declared = {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in default_values(['front']).items()
    }
    assert {name: (type(v), v) for name, v in flat.items()} == {
        name: (type(v), v) for name, v in declared.items()
    }


def test_doc_covers_every_parameter_output_and_message():
    from m2a_perception.ros.params import NODE_PARAMETERS
    from m2a_perception.ros.topics import OUTPUT_TOPICS

    text = load_tool().render()
    for spec in NODE_PARAMETERS:
        assert f'| `{spec.name}` |' in text
    for topic in OUTPUT_TOPICS.values():
        assert f'`<camera>/{topic}`' in text
    for name in ('InferenceStats', 'OpenSetPanoptic', 'OpenSetSegment'):
        assert f'### {name}' in text


def test_check_mode_reports_a_stale_file(tmp_path, capsys):
    tool = load_tool()
    stale = tmp_path / 'ros_interface.md'
    stale.write_text('old\n')
    paths = ['--out', str(stale), '--params-out', str(tmp_path / 'params.yaml')]
    assert tool.main(['--check', *paths]) == 1
    assert 'stale' in capsys.readouterr().out
    assert tool.main(paths) == 0
    assert tool.main(['--check', *paths]) == 0
