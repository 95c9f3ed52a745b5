"""Live-node replay with real rclpy processes: player (/clock) -> node (sim time) -> recorder."""

from __future__ import annotations

import json
import shutil
import sys
import time

import pytest
from rosbags.rosbag2 import Reader

from m2a_perception.cli.bag_player import build_parser as player_parser
from m2a_perception.cli.bag_recorder import build_parser as recorder_parser
from m2a_perception.evaluation.streams import EvaluationSettings
from m2a_perception.ros.replay.bag import BagReadError
from m2a_perception.ros.replay.live import (
    LiveReplayOptions,
    node_command,
    plan_live_replay,
    player_arguments,
    recorder_arguments,
    run_live_replay,
)
from m2a_perception.ros.replay.offline import ReplayOptions, replay_bag

from .conftest import NUM_ANOMALY_SCENES, live_domain
from .test_offline import OUTPUTS, header_key, read_with_mcap, read_with_rosbags, same

# Node, player and recorder are separate processes: one thread each is plenty for 64x128. They
# run in `live_domain()`: this worker's domain where M2A_TEST_DOMAIN_BASE is set (one per xdist
# worker), else one of this test process's own, so other test runs stay out of the recording.
LIVE_ENV = {'OMP_NUM_THREADS': '1', 'ROS_DOMAIN_ID': live_domain()}


def test_plan_matches_the_bag_and_the_process_command_lines(
    anomaly_bag, node_parameters, tmp_path
):
    plan = plan_live_replay(anomaly_bag, node_parameters)
    assert plan.namespace == ''
    assert plan.play_topics == ('/front/image', '/front/ground_truth/anomaly')
    assert plan.wait_topics == ('/front/image',)
    assert set(plan.record_topics) == {*plan.play_topics, *OUTPUTS, '/diagnostics'}
    assert plan.node_parameters['use_sim_time'] is True
    assert plan.node_parameters['cameras.names'] == ['front']
    assert plan.node_parameters['cameras.front.topic'] == '/front/image'
    assert plan.duration_s == pytest.approx((NUM_ANOMALY_SCENES - 1) / 2.0)
    command = node_command(plan)
    assert '-p' in command and 'use_sim_time:=true' in command
    assert 'cameras.names:=["front"]' in command
    player = player_parser().parse_args(player_arguments(plan, anomaly_bag, 1.0, 60, 1, 2))
    assert player.clock and player.wait_subscribers == 2
    recorder = recorder_parser().parse_args(recorder_arguments(plan, tmp_path / 'out', 3.0))
    assert recorder.topics == list(plan.record_topics)
    with pytest.raises(ValueError, match='no such camera'):
        plan_live_replay(anomaly_bag, node_parameters, ['rear'])


@pytest.mark.ros
def test_live_replay_through_the_running_node(
    anomaly_bag, node_parameters, tiny_checkpoint, tmp_path
):
    evaluation = EvaluationSettings(component_track='obstacle')
    out = tmp_path / 'live'
    options = LiveReplayOptions(
        progress=False,
        evaluation=evaluation,
        idle_timeout_s=3.0,
        startup_timeout_s=120.0,
        log_dir=tmp_path / 'logs',
        env=LIVE_ENV,
    )
    report = run_live_replay(anomaly_bag, out, node_parameters, options)
    logs = '\n'.join(p.read_text() for p in (tmp_path / 'logs').glob('*.log'))
    camera = report.cameras['front']
    # 2 Hz frames and a tiny model: the node keeps up and drops nothing.
    assert camera.received == camera.processed == NUM_ANOMALY_SCENES, logs
    assert report.mode == 'live'
    assert report.latency_ms['end_to_end'].count == NUM_ANOMALY_SCENES

    inputs = read_with_rosbags(anomaly_bag)
    expected = sorted(header_key(msg) for _, msg in inputs['/front/image'])
    recorded = read_with_rosbags(out)
    for topic in OUTPUTS:  # headers survive the middleware too
        assert sorted(header_key(msg) for _, msg in recorded[topic]) == expected, topic
    assert set(read_with_mcap(out)) == set(recorded)
    assert '/diagnostics' in recorded
    with Reader(out) as reader:
        times = [t for c, t, _ in reader.messages() if c.topic == '/front/image']
    # The recorder logged in sim time: the bag's own timeline (within /clock ticks of 10 ms).
    original = [t for t, _ in inputs['/front/image']]
    assert len(times) == len(original)
    assert all(abs(a - b) < 50_000_000 for a, b in zip(times, original, strict=True))

    offline = replay_bag(
        anomaly_bag,
        tmp_path / 'offline',
        parameters=node_parameters,
        options=ReplayOptions(progress=False, component_track='obstacle'),
    )
    assert same(report.metrics, offline.metrics)
    assert json.loads(json.dumps(report.as_dict()))['frames_processed'] == NUM_ANOMALY_SCENES


@pytest.mark.ros
# Once in two full runs (CI check of 2026-12-02) the player waited 180 s for its second
# subscriber although the node had subscribed; it passed on rerun. One cause is fixed (the
# recorder's idle clock, see test_the_recorder_idle_clock_starts_with_the_first_camera_frame).
# Still open, reproduced 1 in 5 runs on a loaded machine with the recorder alive: the player and
# the recorder, started first, never discovered the node's endpoints (no match, the node's
# outputs never recorded) although Fast DDS had TCP connections between all three and a fresh
# participant saw every endpoint. A middleware discovery failure (LARGE_DATA); one rerun.
@pytest.mark.flaky(reruns=1)
def test_live_replay_of_a_truncated_bag(truncated_live_bag, node_parameters, tmp_path):
    options = LiveReplayOptions(
        progress=False, idle_timeout_s=3.0, log_dir=tmp_path / 'logs', env=LIVE_ENV
    )
    with pytest.raises(BagReadError, match='truncated or corrupt') as info:
        run_live_replay(truncated_live_bag, tmp_path / 'out', node_parameters, options)
    report = info.value.report
    assert 0 < report.frames_received < 6
    with Reader(tmp_path / 'out') as reader:
        assert reader.message_count > 0


@pytest.fixture
def truncated_live_bag(tmp_path):
    import shutil

    from m2a_perception.ros.replay.pack import PackOptions, pack_images

    from .conftest import write_pngs

    write_pngs(tmp_path / 'frames', 6, (256, 512))
    pack_images(tmp_path / 'frames', tmp_path / 'complete', options=PackOptions(rate_hz=4.0))
    bag = tmp_path / 'bag'
    shutil.copytree(tmp_path / 'complete', bag)
    (storage,) = bag.glob('*.mcap')
    data = storage.read_bytes()
    storage.write_bytes(data[: int(len(data) * 0.7)])
    return bag


@pytest.mark.ros
def test_live_overwrite_keeps_the_previous_bag_when_the_replay_fails(
    anomaly_bag, node_parameters, tmp_path
):
    out = tmp_path / 'out'
    shutil.copytree(anomaly_bag, out)
    before = {t: len(m) for t, m in read_with_rosbags(out).items()}
    # No model: the node never subscribes, the player gives up after its start-up timeout.
    parameters = {**node_parameters, 'model.checkpoint': str(tmp_path / 'missing.safetensors')}
    options = LiveReplayOptions(
        progress=False,
        overwrite=True,
        startup_timeout_s=5.0,
        log_dir=tmp_path / 'logs',
        env=LIVE_ENV,
    )
    with pytest.raises(RuntimeError) as info:
        run_live_replay(anomaly_bag, out, parameters, options)
    assert {t: len(m) for t, m in read_with_rosbags(out).items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['logs', 'out']
    assert (
        'waited 5 s for 2 subscriber(s) on each of /front/image; still short: /front/image has 1 '
        '(the ROS graph shows 1)' in str(info.value)
    )


@pytest.mark.ros
def test_the_recorder_idle_clock_starts_with_the_first_camera_frame(anomaly_bag, tmp_path):
    """The cause of the truncated-bag replay's 180 s wait: a /diagnostics message before the
    playback (the node's start-up one, or another node's) started the recorder's idle clock,
    the recorder stopped while the player still waited, and the player then waited for its
    second subscriber until its timeout. With --idle-after the camera topic it keeps recording.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image

    from ..ros.helpers import RosProbe, ros_env, start_process

    out = tmp_path / 'recorded'
    shutil.copytree(anomaly_bag, out)  # replaced with --overwrite once the recording is closed
    command = [sys.executable, '-m', 'm2a_perception.cli.bag_recorder', str(out)]
    command += ['--topics', '/diagnostics', '/front/image', '--idle-timeout', '1.5']
    command += ['--idle-after', '/front/image', '--overwrite']
    recorder = start_process('recorder', command, tmp_path, env={**ros_env(), **LIVE_ENV})
    probe = RosProbe('m2a_test_idle_probe', domain_id=int(LIVE_ENV['ROS_DOMAIN_ID']))
    try:
        diagnostics = probe.node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        probe.wait_for(lambda: diagnostics.get_subscription_count() > 0, what='the recorder')
        for _ in range(3):
            diagnostics.publish(DiagnosticArray())
        probe.spin_for(4.0)  # well past the idle timeout: the player would still be waiting
        assert recorder.alive(), recorder.log_text()
        images = probe.node.create_publisher(Image, '/front/image', 10)
        probe.wait_for(lambda: images.get_subscription_count() > 0, what='the recorder')
        for index in range(3):
            images.publish(Image(height=1, width=1, encoding='mono8', step=1, data=[index]))
        deadline = time.monotonic() + 30.0
        while recorder.alive() and time.monotonic() < deadline:
            probe.spin_for(0.1)
    finally:
        probe.close()
        status = recorder.stop()
    log = recorder.log_text()
    assert status == 0, log
    assert log.strip().splitlines()[-1] == (
        f'recorder: no message for 1.5 s; wrote 6 message(s) on 2 topic(s) to {out}'
    )
    recorded = read_with_rosbags(out)
    assert {t: len(m) for t, m in recorded.items()} == {'/diagnostics': 3, '/front/image': 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ['recorded', 'recorder.log']
