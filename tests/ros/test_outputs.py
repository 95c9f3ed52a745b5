"""The node's output fast paths give exactly what the straightforward code gives.

`CameraOutputs` writes into reused message buffers with OpenCV lookups and in-place numpy; each
output is checked against a reference computed the plain way (numpy expressions, fancy
indexing, copies), on messages serialized at publish time as a subscriber would get them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from m2a_perception.classes import semantic_palette
from m2a_perception.postprocess.config import PostprocessConfig
from m2a_perception.ros import allocator
from m2a_perception.ros.conversions import (
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_array,
    image_msg_to_rgb,
    rgb_to_compressed_msg,
)
from m2a_perception.ros.outputs import (
    CameraOutputs,
    OutputDemand,
    colorize_semantic,
    heatmap_lut_bgr,
    quantize_unit,
)
from m2a_perception.ros.params import default_values, settings_from_parameters
from m2a_perception.types import Segment, SegmentationOutput, SegmentKind
from m2a_perception.visualize import blend, draw_unknown_boxes, resize_to
from m2a_perception_msgs.msg import OpenSetPanoptic, OpenSetSegment

pytestmark = pytest.mark.ros


def reference_quantize(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """The expression `quantize_unit` evaluates in place."""
    scaled = (values - np.float32(low)) * np.float32(255.0 / (high - low)) + np.float32(0.5)
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
@pytest.mark.parametrize(('low', 'high'), [(0.0, 1.0), (-0.3, 0.7), (0.2, 5.0)])
def test_quantize_unit_in_place_equals_the_expression(dtype, low, high):
    values = np.random.default_rng(1).normal(0.5, 0.6, (37, 53)).astype(dtype)
    values[0, :5] = [low, high, np.nextafter(low, -1), 0.5, -1.0]
    out = np.empty(values.shape, np.uint8)
    np.testing.assert_array_equal(
        quantize_unit(values, low, high, out), reference_quantize(values, low, high)
    )
    scratch = np.empty(values.shape, np.result_type(dtype, np.float32))
    again = quantize_unit(values, low, high, np.empty_like(out), scratch)
    np.testing.assert_array_equal(again, out)


def test_colorize_semantic_equals_palette_indexing():
    labels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    labels = np.concatenate([labels, np.random.default_rng(2).integers(0, 256, (5, 16))])
    labels = labels.astype(np.uint8)
    out = np.empty((*labels.shape, 3), np.uint8)
    scratch = np.empty_like(out)
    expected = semantic_palette()[labels]
    np.testing.assert_array_equal(colorize_semantic(labels, out, scratch), expected)
    wide = labels.astype(np.int32)  # not uint8: the numpy fallback
    np.testing.assert_array_equal(colorize_semantic(wide, np.empty_like(out), scratch), expected)


def raw_image(encoding: str, pixels: np.ndarray, padding: int) -> Image:
    """An Image of `pixels` (uint8 samples, (H, W) or (H, W, C)) with padded rows."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.zeros((height, rows.shape[1] + padding), np.uint8)
    padded[:, : rows.shape[1]] = rows
    msg = Image(encoding=encoding, height=height, width=width, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


SAMPLE_SHAPES = {
    'rgb8': (3,),
    'bgr8': (3,),
    'rgba8': (4,),
    'bgra8': (4,),
    'mono8': (),
    'yuv422': (2,),
    'mono16': (2,),  # two bytes per pixel
}


@pytest.mark.parametrize('encoding', list(SAMPLE_SHAPES))
@pytest.mark.parametrize('padding', [0, 8])
def test_contiguous_rgb_equals_the_view(encoding, padding):
    height, width = 6, 10
    pixels = np.random.default_rng(3).integers(0, 256, (height, width, *SAMPLE_SHAPES[encoding]))
    msg = raw_image(encoding, pixels.astype(np.uint8), padding)
    view = image_msg_to_rgb(msg)
    contiguous = image_msg_to_rgb(msg, contiguous=True)
    assert contiguous.flags.c_contiguous and contiguous.shape == (height, width, 3)
    np.testing.assert_array_equal(contiguous, np.ascontiguousarray(view))


def test_contiguous_rgb_of_rgb8_is_still_a_view():
    rgb = np.random.default_rng(4).integers(0, 256, (4, 6, 3)).astype(np.uint8)
    msg = array_to_image_msg(rgb, 'rgb8')
    contiguous = image_msg_to_rgb(msg, contiguous=True)
    assert np.shares_memory(contiguous, np.frombuffer(msg.data, np.uint8))


@pytest.mark.parametrize('image_format', ['jpeg', 'png'])
def test_contiguous_compressed_equals_the_view(image_format):
    rgb = np.random.default_rng(5).integers(0, 256, (16, 24, 3)).astype(np.uint8)
    msg: CompressedImage = rgb_to_compressed_msg(rgb, image_format)
    contiguous = compressed_msg_to_rgb(msg, contiguous=True)
    assert contiguous.flags.c_contiguous
    np.testing.assert_array_equal(contiguous, compressed_msg_to_rgb(msg))


class RecordingPublisher:
    """Serializes every published message, as the middleware does during `publish`."""

    def __init__(self, msg_type: type) -> None:
        self.msg_type = msg_type
        self.sent: list[bytes] = []
        self.objects: list[object] = []

    def get_subscription_count(self) -> int:
        return 1

    def publish(self, msg: object) -> None:
        self.sent.append(serialize_message(msg))
        self.objects.append(msg)

    def last(self):  # type: ignore[no-untyped-def]
        return deserialize_message(self.sent[-1], self.msg_type)


class RecordingNode:
    def __init__(self) -> None:
        self.publishers: dict[str, RecordingPublisher] = {}

    def create_publisher(self, msg_type: type, topic: str, qos: object) -> RecordingPublisher:
        self.publishers[topic] = RecordingPublisher(msg_type)
        return self.publishers[topic]

    def destroy_publisher(self, publisher: RecordingPublisher) -> None:
        pass


def synthetic_result(source: tuple[int, int], output: tuple[int, int]) -> SegmentationOutput:
    rng = np.random.default_rng(6)
    height, width = output
    anomaly = rng.uniform(-0.1, 1.1, output).astype(np.float32)
    semantic = rng.integers(0, 20, output).astype(np.uint8)
    panoptic = np.zeros(output, np.int32)
    panoptic[: height // 2, : width // 3] = 1
    panoptic[height // 2 :, width // 2 :] = 2
    segments = (
        Segment(1, SegmentKind.STUFF, 0, 0.9, 0.1, 0.4, int((panoptic == 1).sum()), (0, 0, 1, 1)),
        Segment(
            2,
            SegmentKind.UNKNOWN_THING,
            19,
            0.7,
            0.8,
            0.95,
            int((panoptic == 2).sum()),
            (source[1] // 2, source[0] // 2, source[1], source[0]),
        ),
    )
    return SegmentationOutput(
        anomaly_map=torch.from_numpy(anomaly),
        semantic=torch.from_numpy(semantic),
        confidence=torch.from_numpy(rng.uniform(0, 1, output).astype(np.float32)),
        panoptic=torch.from_numpy(panoptic),
        segments=segments,
        source_size=source,
        output_size=output,
        unknown_id=19,
        anomaly_threshold=0.5,
    )


@pytest.mark.parametrize(
    ('source', 'output', 'bgr_view'),
    [((30, 40), (30, 40), False), ((60, 80), (30, 40), True), ((60, 80), (30, 40), False)],
)
def test_camera_outputs_match_the_plain_computation(source, output, bgr_view):
    settings = settings_from_parameters(default_values(('front',)))
    viz = settings.viz
    node = RecordingNode()
    outputs = CameraOutputs(node, 'front', None)  # type: ignore[arg-type]
    result = synthetic_result(source, output)
    rgb = np.random.default_rng(7).integers(0, 256, (*source, 3)).astype(np.uint8)
    frame = np.ascontiguousarray(rgb[..., ::-1])[..., ::-1] if bgr_view else rgb
    header = Header(frame_id='cam')
    header.stamp.sec = 12
    demand = OutputDemand(**dict.fromkeys(OutputDemand.__dataclass_fields__, True))
    config = PostprocessConfig()
    for _ in range(2):  # the second frame reuses every buffer and message
        outputs.publish(header, result, frame, demand, viz, 0.5, config, 0.0)

    def image(topic: str) -> np.ndarray:
        msg = node.publishers[f'front/{topic}'].last()
        assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 12
        assert (msg.height, msg.width) == output
        return image_msg_to_array(msg)

    score = result.anomaly_map.numpy()
    np.testing.assert_array_equal(image('anomaly/score'), score)
    indices = reference_quantize(score, viz.score_min, viz.score_max)
    np.testing.assert_array_equal(image('anomaly/heatmap'), heatmap_lut_bgr(viz.colormap)[indices])
    np.testing.assert_array_equal(image('anomaly/mask'), np.where(score >= 0.5, 255, 0))
    np.testing.assert_array_equal(image('panoptic/semantic'), result.semantic.numpy())
    np.testing.assert_array_equal(
        image('panoptic/confidence'), reference_quantize(result.confidence.numpy(), 0.0, 1.0)
    )
    semantic = result.semantic.numpy()
    expected_overlay = blend(
        resize_to(np.ascontiguousarray(frame), output), semantic_palette()[semantic], viz.alpha
    )
    expected_overlay = draw_unknown_boxes(expected_overlay, result.segments, source)
    np.testing.assert_array_equal(image('overlay'), expected_overlay)

    segments_publisher = node.publishers['front/panoptic/segments']
    panoptic: OpenSetPanoptic = segments_publisher.last()
    assert segments_publisher.objects[0] is segments_publisher.objects[1], 'message reused'
    assert panoptic.unknown_id == 19
    assert (panoptic.source_height, panoptic.source_width) == source
    np.testing.assert_array_equal(image_msg_to_array(panoptic.segment_ids), result.panoptic)
    kinds = [s.kind for s in panoptic.segments]
    assert kinds == [OpenSetSegment.KIND_STUFF, OpenSetSegment.KIND_UNKNOWN_THING]
    assert [s.class_id for s in panoptic.segments] == [0, -1]
    overlay_publisher = node.publishers['front/overlay']
    assert overlay_publisher.objects[0] is overlay_publisher.objects[1]


def test_allocator_respects_user_settings():
    assert allocator.tune_allocator({'M2A_MALLOC_TUNING': '0'}).startswith('left alone')
    assert 'MALLOC_MMAP_THRESHOLD_' in allocator.tune_allocator({'MALLOC_MMAP_THRESHOLD_': '1'})
    assert 'MALLOC_ARENA_MAX' in allocator.tune_allocator({'MALLOC_ARENA_MAX': '4'})
    tunables = {'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1'}
    assert 'GLIBC_TUNABLES' in allocator.tune_allocator(tunables)


def test_allocator_tunes_glibc_in_a_fresh_process():
    code = 'from m2a_perception.ros.allocator import tune_allocator; print(tune_allocator({}))'
    done = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=True
    )
    expected = 'tuned' if _glibc() else 'left alone (not glibc)'
    assert done.stdout.strip() == expected, done.stdout


def _glibc() -> bool:
    try:
        return os.confstr('CS_GNU_LIBC_VERSION') is not None
    except (ValueError, OSError, AttributeError):
        return False


def _overlays_published(camera_hz: float, overlay_hz: float, frames: int) -> int:
    """Drives the overlay limit as the node's worker does: one start time per frame, given to
    `demand` and `publish`; frames arrive with +-2 ms of jitter and take 30 ms to process."""
    settings = settings_from_parameters(default_values(('front',)))
    node = RecordingNode()
    outputs = CameraOutputs(node, 'front', None)  # type: ignore[arg-type]
    result = synthetic_result((6, 8), (6, 8))
    rgb = np.zeros((6, 8, 3), np.uint8)
    jitter = np.random.default_rng(3).uniform(-0.002, 0.002, frames)
    for index in range(frames):
        start_s = 100.0 + index / camera_hz + jitter[index]
        demand = outputs.demand(start_s, overlay_hz)
        outputs.publish(
            Header(), result, rgb, demand, settings.viz, 0.5, PostprocessConfig(), start_s
        )
    return len(node.publishers['front/overlay'].sent)


def test_overlay_limit_keeps_the_camera_rate_when_it_equals_the_limit():
    assert _overlays_published(24.0, 24.0, 24) == 24


def test_overlay_limit_halves_a_camera_at_twice_the_limit():
    assert _overlays_published(48.0, 24.0, 48) == 24
