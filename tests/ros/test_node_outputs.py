"""One node process serving four cameras: outputs, runtime parameters, bad input, overload.

Cameras: front (raw, the functional and overload tests), rear (raw) and comp (compressed) for
bad input, idle (never published) for diagnostics. Frames come from fake camera processes and
outputs are received here, so every message crosses a process boundary.
"""

from __future__ import annotations

import re
import statistics
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image

from m2a_perception.ros.conversions import image_msg_to_array
from m2a_perception.ros.diagnostics import WARN, status_level
from m2a_perception.ros.outputs import heatmap_lut_bgr, quantize_unit
from m2a_perception.ros.processes import ManagedProcess
from m2a_perception_msgs.msg import InferenceStats, OpenSetPanoptic, OpenSetSegment

from .fake_camera import SYNTHETIC_NSEC, SYNTHETIC_SEC
from .helpers import (
    STARTUP_TIMEOUT_S,
    camera_command,
    latest_status,
    node_command,
    stamp_key,
    start_process,
    status_values,
)

pytestmark = pytest.mark.ros

NAMESPACE = '/m2a'
NODE = f'{NAMESPACE}/m2a_perception'
DIAG = 'm2a/m2a_perception'
HEIGHT, WIDTH = 48, 64
UNKNOWN_ID = 19
IMAGE_OUTPUTS = {
    'anomaly/score': '32FC1',
    'anomaly/heatmap': 'bgr8',
    'anomaly/mask': 'mono8',
    'panoptic/semantic': 'mono8',
    'panoptic/confidence': 'mono8',
    'overlay': 'rgb8',
}
OVERRIDES = (
    'cameras.names:=[front,rear,comp,idle]',
    'cameras.comp.transport:=compressed',
    'diagnostics.period_s:=0.5',
    'viz.overlay_rate_hz:=0.0',
    'max_input_age_ms:=3000.0',
    # Outputs the size of the 48x64 camera frames (the default, model, is the network's size).
    'output_resolution:=source',
)


@pytest.fixture(scope='module')
def diagnostics(probe):
    return probe.record(DiagnosticArray, '/diagnostics')


@pytest.fixture(scope='module')
def node_process(tiny_checkpoint, tmp_path_factory, probe, diagnostics):
    process = start_process(
        'serving_node',
        node_command(tiny_checkpoint, NAMESPACE, *OVERRIDES),
        tmp_path_factory.mktemp('serving'),
    )
    try:
        probe.wait_for(
            lambda: (
                not process.alive()
                or ((s := latest_status(diagnostics, f'{DIAG}: backend')) and 'ready' in s.message)
            ),
            STARTUP_TIMEOUT_S,
            'the node to become ready',
        )
        assert process.alive(), process.log_text()
        yield process
    finally:
        process.stop()
    assert process.process.returncode == 0 or process.process.returncode < 0


@pytest.fixture
def cameras(tmp_path):
    started: list[ManagedProcess] = []

    def start(*args: str) -> ManagedProcess:
        process = start_process(f'camera{len(started)}', camera_command(*args), tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def by_stamp(recorder) -> dict[tuple[int, int], object]:
    return {stamp_key(m.header): m for m in recorder.messages}


def common_stamps(recorders) -> set[tuple[int, int]]:
    keys = [set(by_stamp(r)) for r in recorders]
    return set.intersection(*keys) if keys else set()


def camera_status(diagnostics, camera):
    return latest_status(diagnostics, f'{DIAG}: camera {camera}')


def test_every_output_arrives_with_the_input_header(node_process, probe, cameras):
    recorders = {
        topic: probe.record(Image, f'{NAMESPACE}/front/{topic}') for topic in IMAGE_OUTPUTS
    }
    segments = probe.record(OpenSetPanoptic, f'{NAMESPACE}/front/panoptic/segments')
    stats = probe.record(InferenceStats, f'{NAMESPACE}/front/stats')
    everything = [*recorders.values(), segments, stats]
    cameras('--topic', f'{NAMESPACE}/front/image', '--encoding', 'bgr8', '--frame-id', 'cam_f')
    stamps = probe.wait_for(lambda: common_stamps(everything), what='a frame on every output')
    stamp = min(stamps)
    assert stamp[0] >= SYNTHETIC_SEC and stamp[1] == SYNTHETIC_NSEC

    images = {topic: by_stamp(r)[stamp] for topic, r in recorders.items()}
    for topic, msg in images.items():
        assert msg.header.frame_id == 'cam_f', topic
        assert msg.encoding == IMAGE_OUTPUTS[topic], topic
        assert (msg.height, msg.width) == (HEIGHT, WIDTH), topic

    score = image_msg_to_array(images['anomaly/score'])
    assert np.isfinite(score).all() and score.min() >= -0.05 and score.max() <= 1.05
    anomalous = score >= np.float32(0.5)
    mask = image_msg_to_array(images['anomaly/mask'])
    np.testing.assert_array_equal(mask, np.where(anomalous, 255, 0))
    semantic = image_msg_to_array(images['panoptic/semantic'])
    assert semantic.max() <= UNKNOWN_ID
    assert (semantic[anomalous] == UNKNOWN_ID).all() and (semantic[~anomalous] < UNKNOWN_ID).all()
    heatmap = image_msg_to_array(images['anomaly/heatmap'])
    indices = quantize_unit(score, 0.0, 1.0, np.empty(score.shape, np.uint8))
    np.testing.assert_array_equal(heatmap, heatmap_lut_bgr('inferno')[indices])
    assert image_msg_to_array(images['overlay']).shape == (HEIGHT, WIDTH, 3)

    panoptic = by_stamp(segments)[stamp]
    assert panoptic.header.frame_id == 'cam_f'
    assert (panoptic.source_height, panoptic.source_width) == (HEIGHT, WIDTH)
    assert panoptic.anomaly_threshold == pytest.approx(0.5)
    # Relates the semantic image's unknown label to the segments' class_id -1.
    assert panoptic.unknown_id == UNKNOWN_ID
    ids = image_msg_to_array(panoptic.segment_ids)
    assert panoptic.segment_ids.encoding == 'mono16' and ids.shape == (HEIGHT, WIDTH)
    assert stamp_key(panoptic.segment_ids.header) == stamp
    check_segments_match_id_image(ids, panoptic.segments)

    stat = by_stamp(stats)[stamp]
    assert stat.camera == 'front' and stat.model_ms > 0 and stat.frames_processed >= 1
    stages = ('convert', 'preprocess', 'model', 'postprocess', 'handoff', 'publish')
    assert all(getattr(stat, f'{stage}_ms') >= 0.0 for stage in stages)


def check_segments_match_id_image(ids: np.ndarray, segments: list[OpenSetSegment]) -> None:
    present = set(np.unique(ids).tolist()) - {0}
    assert present == {s.id for s in segments}
    for segment in segments:
        pixels = ids == segment.id
        assert segment.area == int(pixels.sum())
        rows, cols = np.nonzero(pixels)
        roi = segment.roi
        assert roi.x_offset <= cols.min() and cols.max() < roi.x_offset + roi.width
        assert roi.y_offset <= rows.min() and rows.max() < roi.y_offset + roi.height
        unknown = segment.kind == OpenSetSegment.KIND_UNKNOWN_THING
        assert (segment.class_id == -1) == unknown
        assert 0.0 <= segment.class_score <= 1.0
        assert segment.anomaly_mean <= segment.anomaly_max + 1e-6


def test_runtime_threshold_change(node_process, probe, cameras):
    score = probe.record(Image, f'{NAMESPACE}/front/anomaly/score')
    mask = probe.record(Image, f'{NAMESPACE}/front/anomaly/mask')
    segments = probe.record(OpenSetPanoptic, f'{NAMESPACE}/front/panoptic/segments')
    cameras('--topic', f'{NAMESPACE}/front/image', '--rate', '5')
    probe.wait_for(lambda: segments.messages, what='segments before the change')
    try:
        accepted, reason = probe.set_parameter(NODE, 'anomaly.threshold', 0.3)
        assert accepted, reason
        changed = probe.wait_for(
            lambda: [m for m in segments.messages if abs(m.anomaly_threshold - 0.3) < 1e-6],
            what='segments with the new threshold',
        )
        after = {stamp_key(m.header) for m in changed}
        stamp = probe.wait_for(
            lambda: min(after & common_stamps([score, mask]), default=None),
            what='score and mask of one frame after the change',
        )
        values = image_msg_to_array(by_stamp(score)[stamp])
        expected = np.where(values >= np.float32(0.3), 255, 0)
        np.testing.assert_array_equal(image_msg_to_array(by_stamp(mask)[stamp]), expected)

        accepted, reason = probe.set_parameter(NODE, 'anomaly.threshold', 1.5)
        assert not accepted and reason
        assert probe.parameter_values(NODE, ['anomaly.threshold'])['anomaly.threshold'] == 0.3
        accepted, reason = probe.set_parameter(NODE, 'model.checkpoint', '/elsewhere.safetensors')
        assert not accepted and 'cleanup' in reason
    finally:
        assert probe.set_parameter(NODE, 'anomaly.threshold', 0.5)[0]


def test_diagnostics_report_a_camera_without_publisher(node_process, probe, diagnostics):
    status = probe.wait_for(
        lambda: (s := camera_status(diagnostics, 'idle')) and status_level(s) == WARN and s,
        what='idle camera status',
    )
    assert f'no publisher on {NAMESPACE}/idle/image' in status.message
    values = status_values(status)
    assert values['publishers'] == '0' and values['frames_received'] == '0'


def test_bad_inputs_are_survived(node_process, probe, diagnostics, cameras):
    rear_score = probe.record(Image, f'{NAMESPACE}/rear/anomaly/score')
    comp_score = probe.record(Image, f'{NAMESPACE}/comp/anomaly/score')
    started = time.monotonic()
    cameras(
        '--topic',
        f'{NAMESPACE}/rear/image',
        '--compressed-topic',
        f'{NAMESPACE}/comp/image/compressed',
        '--scenario',
        'bad',
        '--rate',
        '8',
    )
    reasons = ('encoding', 'step', 'data_size', 'zero_size', 'too_large', 'non_finite', 'aspect')

    def all_rejected() -> bool:
        rear, comp = camera_status(diagnostics, 'rear'), camera_status(diagnostics, 'comp')
        if rear is None or comp is None:
            return False
        rear_values, comp_values = status_values(rear), status_values(comp)
        return (
            int(rear_values.get('invalid_aspect', 0)) >= 2
            and all(int(rear_values.get(f'invalid_{r}', 0)) >= 1 for r in reasons)
            and (int(comp_values.get('invalid_corrupt', 0)) >= 2)
        )

    probe.wait_for(all_rejected, 90.0, 'every kind of bad input counted in diagnostics')
    # Good frames between the bad ones are still served, on both cameras.
    probe.wait_for(lambda: rear_score.messages and comp_score.messages, what='good frames')
    assert node_process.alive()
    assert all(m.header.stamp.nanosec == SYNTHETIC_NSEC for m in rear_score.messages)

    # Errors are precise and throttled per camera and reason.
    log = node_process.log_text()
    elapsed = time.monotonic() - started
    for reason in reasons:
        lines = re.findall(rf'camera rear: dropped invalid frame \[{reason},', log)
        assert 1 <= len(lines) <= elapsed / 5.0 + 2, (reason, len(lines))
    assert re.search(r'camera comp: dropped invalid frame \[corrupt, \d+ so far\]: .*JPEG', log)
    assert "unsupported encoding 'bayer_rggb8'" in log
    assert '5000x2 frame exceeds the limit 4096x4096' in log
    # Extreme aspect ratios inside the limits are rejected before inference, never a crash.
    assert 'a 4096x1 frame would be resized to 512x0 pixels' in log
    assert 'processing failed' not in log


def test_overload_keeps_latency_bounded_and_counts_drops(node_process, probe, cameras):
    stats = probe.record(InferenceStats, f'{NAMESPACE}/front/stats')
    probe.spin_for(1.0)
    camera = cameras('--topic', f'{NAMESPACE}/front/image', '--rate', '60', '--stamp', 'now')
    probe.wait_for(lambda: len(stats.messages) >= 3, what='first processed frames')
    stats.clear()
    probe.spin_for(8.0)
    assert camera.alive()
    messages = list(stats.messages)
    assert len(messages) >= 5, f'only {len(messages)} frames processed in 8 s'
    latencies = [m.end_to_end_ms for m in messages]
    third = max(1, len(latencies) // 3)
    early, late = statistics.median(latencies[:third]), statistics.median(latencies[-third:])
    # Bounded: no frame waits behind a queue, so late frames are not slower than early ones.
    assert max(latencies) < 3000.0, latencies
    assert late < early + 500.0, (early, late)
    assert max(m.queue_wait_ms for m in messages) < 2000.0
    dropped = messages[-1].frames_dropped_overwritten - messages[0].frames_dropped_overwritten
    processed = messages[-1].frames_processed - messages[0].frames_processed
    assert dropped > 0, 'a camera faster than the model must cause counted drops'
    assert processed >= len(messages) - 1
