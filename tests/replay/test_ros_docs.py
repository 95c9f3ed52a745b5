"""docs/ros_interface.md is generated from the code and must be regenerated when it changes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

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
    assert tool.main(['--check', '--out', str(stale)]) == 1
    assert 'stale' in capsys.readouterr().out
    assert tool.main(['--out', str(stale)]) == 0
    assert tool.main(['--check', '--out', str(stale)]) == 0
