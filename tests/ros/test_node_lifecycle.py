"""The node process started with the shipped YAML: parameters, lifecycle, checkpoint, QoS.

One node process (namespace /lc, autostart off) serves the whole module; each test first drives
it to the lifecycle state it needs.
"""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticArray
from lifecycle_msgs.msg import Transition
from sensor_msgs.msg import Image

from m2a_perception.ros.diagnostics import ERROR, OK, status_level
from m2a_perception.ros.param_file import read_parameter_file

from .helpers import (
    PARAMS_FILE,
    STARTUP_TIMEOUT_S,
    latest_status,
    node_command,
    start_process,
    status_values,
)

pytestmark = pytest.mark.ros

NAMESPACE = '/lc'
NODE = f'{NAMESPACE}/m2a_perception'
DIAG_PREFIX = 'lc/m2a_perception'
OVERRIDES = ('autostart:=false', 'diagnostics.period_s:=0.5')


@pytest.fixture(scope='module')
def node_process(tiny_checkpoint, tmp_path_factory, probe):
    process = start_process(
        'lifecycle_node',
        node_command(tiny_checkpoint, NAMESPACE, *OVERRIDES),
        tmp_path_factory.mktemp('lifecycle'),
    )
    try:
        assert probe.lifecycle_state(NODE, STARTUP_TIMEOUT_S) == 'unconfigured'
        assert process.alive(), process.log_text()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope='module')
def diagnostics(probe):
    return probe.record(DiagnosticArray, '/diagnostics')


def go_to(probe, state: str) -> None:
    """Drive the node to 'unconfigured', 'inactive' or 'active' along the shortest path."""
    order = ['unconfigured', 'inactive', 'active']
    current = probe.lifecycle_state(NODE)
    while current != state:
        if order.index(current) < order.index(state):
            transition = (
                Transition.TRANSITION_CONFIGURE
                if current == 'unconfigured'
                else Transition.TRANSITION_ACTIVATE
            )
        else:
            transition = (
                Transition.TRANSITION_DEACTIVATE
                if current == 'active'
                else Transition.TRANSITION_CLEANUP
            )
        assert probe.transition(NODE, transition), f'transition {transition} from {current}'
        current = probe.lifecycle_state(NODE)


def backend(diagnostics):
    return latest_status(diagnostics, f'{DIAG_PREFIX}: backend')


def test_every_yaml_parameter_is_accepted_through_params_file(
    node_process, probe, tiny_checkpoint
):
    from_yaml = read_parameter_file(PARAMS_FILE)
    declared = set(probe.parameter_names(NODE))
    assert not set(from_yaml) - declared, 'YAML parameters the node does not declare'
    values = probe.parameter_values(NODE, sorted(from_yaml))
    overridden = {'model.checkpoint', 'autostart', 'diagnostics.period_s'}
    for name, value in from_yaml.items():
        if name not in overridden:
            assert values[name] == value, name
    assert values['model.checkpoint'] == str(tiny_checkpoint)
    assert values['autostart'] is False


def test_lifecycle_transitions(node_process, probe, diagnostics, cameras, tiny_checkpoint):
    go_to(probe, 'unconfigured')
    outputs = probe.record(Image, f'{NAMESPACE}/front/anomaly/score')

    # A missing checkpoint keeps the node unconfigured with one clear error.
    missing = str(tiny_checkpoint.with_name('missing.safetensors'))
    assert probe.set_parameter(NODE, 'model.checkpoint', missing)[0]
    assert not probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
    assert probe.lifecycle_state(NODE) == 'unconfigured'
    failed = probe.wait_for(
        lambda: (s := backend(diagnostics)) and status_level(s) == ERROR and s,
        what='backend failure in diagnostics',
    )
    assert 'checkpoint file not found' in failed.message
    assert status_values(failed)['state'] == 'failed'
    errors = [line for line in node_process.log_text().splitlines() if 'configure failed' in line]
    assert len(errors) == 1 and missing in errors[0], errors
    # An empty checkpoint is named as such (it logged "loading  (torch, cpu, fp32)").
    assert probe.set_parameter(NODE, 'model.checkpoint', '')[0]
    assert not probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
    log = node_process.log_text()
    assert 'loading (model.checkpoint is empty) (torch, cpu, fp32)' in log, log[-2000:]
    assert 'loading  (' not in log

    # A valid checkpoint configures; engine parameters are then locked.
    assert probe.set_parameter(NODE, 'model.checkpoint', str(tiny_checkpoint))[0]
    assert probe.transition(NODE, Transition.TRANSITION_CONFIGURE)
    assert probe.lifecycle_state(NODE) == 'inactive'
    probe.wait_for(
        lambda: (s := backend(diagnostics)) and status_values(s)['state'] == 'ready',
        what='backend ready',
    )
    accepted, reason = probe.set_parameter(NODE, 'model.device', 'cuda')
    assert not accepted and 'cleanup' in reason

    # Inactive: no subscriptions, so no outputs even with a camera running.
    cameras('--topic', f'{NAMESPACE}/front/image', '--rate', '5')
    probe.spin_for(2.0)
    assert not outputs.messages

    assert probe.transition(NODE, Transition.TRANSITION_ACTIVATE)
    assert probe.lifecycle_state(NODE) == 'active'
    probe.wait_for(lambda: outputs.messages, what='outputs after activate')

    assert probe.transition(NODE, Transition.TRANSITION_DEACTIVATE)
    assert probe.lifecycle_state(NODE) == 'inactive'
    probe.spin_for(1.0)  # a frame in flight may still be published
    outputs.clear()
    probe.spin_for(2.0)
    assert not outputs.messages, 'a deactivated node must not publish'

    assert probe.transition(NODE, Transition.TRANSITION_CLEANUP)
    assert probe.lifecycle_state(NODE) == 'unconfigured'
    probe.wait_for(
        lambda: (s := backend(diagnostics)) and status_values(s)['state'] == 'unconfigured',
        what='backend unconfigured after cleanup',
    )

    # The whole cycle works again.
    go_to(probe, 'active')
    probe.wait_for(lambda: outputs.messages, what='outputs after re-activation')
    assert node_process.alive()


def test_incompatible_qos_is_reported(node_process, probe, diagnostics, cameras):
    go_to(probe, 'unconfigured')
    assert probe.set_parameter(NODE, 'input.reliability', 'reliable')[0]
    try:
        go_to(probe, 'active')
        cameras('--topic', f'{NAMESPACE}/front/image', '--reliability', 'best_effort')
        status = probe.wait_for(
            lambda: (
                (s := latest_status(diagnostics, f'{DIAG_PREFIX}: camera front'))
                and status_level(s) == ERROR
                and s
            ),
            what='incompatible QoS in diagnostics',
        )
        assert 'incompatible QoS (RELIABILITY)' in status.message
        assert int(status_values(status)['incompatible_qos_events']) >= 1
    finally:
        go_to(probe, 'unconfigured')
        assert probe.set_parameter(NODE, 'input.reliability', 'best_effort')[0]
    go_to(probe, 'active')
    status = probe.wait_for(
        lambda: (
            (s := backend(diagnostics)) and status_values(s)['lifecycle_state'] == 'active' and s
        ),
        what='backend reported active',
    )
    assert status_level(status) == OK
