"""Parameter specs, validation, the shipped YAML, and runtime changes on a real rclpy node."""

from __future__ import annotations

from typing import Any

import pytest
import rclpy
import yaml
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from m2a_perception.ros.param_file import flatten_parameters
from m2a_perception.ros.params import (
    CAMERAS_PARAMETER,
    NODE_PARAMETERS,
    ParameterManager,
    all_specs,
    descriptor_for,
    settings_from_parameters,
)

from .helpers import PARAMS_FILE

pytestmark = pytest.mark.ros


def yaml_parameters() -> dict[str, Any]:
    data = yaml.safe_load(PARAMS_FILE.read_text())
    assert list(data) == ['/**'], 'the YAML must be keyed /** to work in any namespace'
    return flatten_parameters(data['/**']['ros__parameters'])


def test_every_parameter_has_a_description_and_a_range_or_choices():
    for spec in all_specs(['front', 'rear']).values():
        assert len(spec.description) > 15, spec.name
        descriptor = descriptor_for(spec)
        assert descriptor.description == spec.description
        if descriptor.type == ParameterType.PARAMETER_DOUBLE:
            assert descriptor.floating_point_range, spec.name
        if descriptor.type == ParameterType.PARAMETER_INTEGER:
            assert descriptor.integer_range, spec.name
        if spec.engine:
            assert 'unconfigured' in descriptor.additional_constraints


def test_defaults_and_yaml_give_valid_settings():
    settings = settings_from_parameters(yaml_parameters())
    assert [c.name for c in settings.cameras] == ['front']
    assert settings.cameras[0].topic == 'front/image'
    assert settings.postprocess.anomaly_threshold == settings.anomaly_threshold == 0.5
    assert settings.postprocess.mining_max_instances is None
    assert settings.input.max_input_age_s == pytest.approx(0.5)


def test_camera_topics_follow_the_transport():
    settings = settings_from_parameters(
        {
            CAMERAS_PARAMETER: ['a', 'b', 'c'],
            'cameras.b.transport': 'compressed',
            'cameras.c.topic': '/elsewhere/image_raw',
        }
    )
    assert [c.topic for c in settings.cameras] == [
        'a/image',
        'b/image/compressed',
        '/elsewhere/image_raw',
    ]


@pytest.mark.parametrize(
    ('changes', 'message'),
    [
        ({'anomaly.threshold': 1.5}, r'anomaly.threshold must be in \[0.0, 1.0\]'),
        ({'anomaly.threshold': float('nan')}, 'anomaly.threshold must be in'),
        ({'panoptic.mining_min_area': 0}, 'panoptic.mining_min_area must be in'),
        ({'anomaly.scorer': 'energy'}, 'anomaly.scorer must be one of'),
        ({'model.precision': 'int4'}, 'model.precision must be one of'),
        ({'model.device': 'gpu0'}, 'model.device must be cpu, cuda'),
        ({'model.precision': 'fp16'}, 'fp16 needs a CUDA'),
        ({'viz.score_min': 1.0, 'viz.score_max': 0.5}, 'must exceed viz.score_min'),
        ({'anomaly.flip': 'yes'}, 'anomaly.flip must be of type bool'),
        ({'input.max_width': 2.5}, 'input.max_width must be of type int'),
        ({CAMERAS_PARAMETER: []}, 'at least one camera'),
        ({CAMERAS_PARAMETER: ['front', 'front']}, 'duplicates'),
        ({CAMERAS_PARAMETER: ['front/left']}, "camera name 'front/left' is invalid"),
        ({CAMERAS_PARAMETER: ['names']}, 'invalid'),
        ({'cameras.front.transport': 'ffmpeg'}, 'cameras.front.transport must be one of'),
    ],
)
def test_invalid_values_are_rejected_with_a_precise_message(changes, message):
    with pytest.raises(ValueError, match=message):
        settings_from_parameters(changes)


def test_spec_table_is_consistent():
    names = [spec.name for spec in NODE_PARAMETERS]
    assert len(names) == len(set(names))
    assert NODE_PARAMETERS[0].name == CAMERAS_PARAMETER


@pytest.fixture
def ros_node():
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(
        'params_test',
        context=context,
        parameter_overrides=[
            Parameter(CAMERAS_PARAMETER, value=['left', 'right']),
            Parameter('cameras.right.transport', value='compressed'),
        ],
    )
    yield node
    node.destroy_node()
    rclpy.shutdown(context=context)


def test_manager_declares_validates_and_locks_engine_parameters(ros_node):
    configured = {'value': False}
    changes = []
    manager = ParameterManager(ros_node, lambda: configured['value'], changes.append)
    assert ros_node.get_parameter('cameras.right.transport').value == 'compressed'
    assert ros_node.get_parameter('cameras.left.topic').value == ''
    descriptor = ros_node.describe_parameter('anomaly.threshold')
    assert descriptor.floating_point_range[0].to_value == 1.0

    # Runtime change accepted, the new settings are pushed.
    result = ros_node.set_parameters([Parameter('anomaly.threshold', value=0.25)])[0]
    assert result.successful
    assert changes[-1].anomaly_threshold == 0.25

    # Out of range: rclpy's descriptor range and our validation both refuse it.
    result = ros_node.set_parameters([Parameter('anomaly.threshold', value=1.5)])[0]
    assert not result.successful
    assert ros_node.get_parameter('anomaly.threshold').value == 0.25

    # Cross-field validation lives in the callback.
    result = ros_node.set_parameters([Parameter('viz.score_max', value=-1.0)])[0]
    assert not result.successful and 'viz.score_max' in result.reason

    # Engine parameters change while unconfigured, not while configured.
    assert ros_node.set_parameters([Parameter('model.device', value='cuda:1')])[0].successful
    configured['value'] = True
    result = ros_node.set_parameters([Parameter('model.device', value='cpu')])[0]
    assert not result.successful and 'cleanup' in result.reason
    assert ros_node.get_parameter('model.device').value == 'cuda:1'

    # Read-only parameters never change.
    assert not ros_node.set_parameters([Parameter('autostart', value=False)])[0].successful

    # New cameras (changed while unconfigured) get their parameters before configure.
    configured['value'] = False
    names = Parameter(CAMERAS_PARAMETER, value=['left', 'right', 'rear'])
    assert ros_node.set_parameters([names])[0].successful
    manager.declare_cameras()
    assert ros_node.get_parameter('cameras.rear.transport').value == 'raw'
    assert [c.name for c in manager.settings().cameras] == ['left', 'right', 'rear']
