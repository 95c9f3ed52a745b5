"""Per-camera output topics: which outputs are wanted, and filling and publishing them.

Each output is computed and published only when it has subscribers (the overlay also only when
its rate limit allows). Image messages and their buffers are allocated once and rewritten per
frame (`ImageMessageBuffer`); every message carries the input header object unchanged.

Allowed dependencies: numpy, OpenCV, rclpy, sensor_msgs, m2a_perception_msgs, the core
(`types`, `classes`, `visualize`), `m2a_perception.ros.conversions`, `m2a_perception.ros.topics`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header

from m2a_perception.classes import class_names, semantic_palette
from m2a_perception.postprocess.config import PostprocessConfig
from m2a_perception.ros.conversions import ImageMessageBuffer
from m2a_perception.ros.params import VizSettings
from m2a_perception.ros.topics import OUTPUT_MESSAGE_TYPES, OUTPUT_TOPICS
from m2a_perception.runtime.frame import StageTimes
from m2a_perception.runtime.slots import SlotCounters
from m2a_perception.types import Segment, SegmentationOutput, SegmentKind
from m2a_perception.visualize import (
    COLORMAP_IDS,
    blend,
    colormap_lut,
    draw_unknown_boxes,
    resize_to,
)
from m2a_perception_msgs.msg import InferenceStats, OpenSetPanoptic, OpenSetSegment

OUTPUT_ENCODINGS: dict[str, str] = {
    'score': '32FC1',
    'heatmap': 'bgr8',
    'mask': 'mono8',
    'semantic': 'mono8',
    'confidence': 'mono8',
    'overlay': 'rgb8',
}
_SEGMENT_KINDS = {
    SegmentKind.STUFF: OpenSetSegment.KIND_STUFF,
    SegmentKind.THING: OpenSetSegment.KIND_THING,
    SegmentKind.UNKNOWN_THING: OpenSetSegment.KIND_UNKNOWN_THING,
}
# OpenSetSegment.class_id of unknown things (the message's convention).
UNKNOWN_SEGMENT_CLASS_ID = -1
# Share of the overlay period by which a frame may come early and still get an overlay.
OVERLAY_RATE_TOLERANCE = 0.1


@dataclass(frozen=True)
class OutputDemand:
    """Which outputs this frame must produce (subscribed, and for the overlay also due)."""

    score: bool = False
    heatmap: bool = False
    mask: bool = False
    semantic: bool = False
    confidence: bool = False
    segments: bool = False
    overlay: bool = False
    stats: bool = False

    @property
    def any(self) -> bool:
        return any(vars(self).values())

    @property
    def needs_semantic(self) -> bool:
        return self.semantic or self.confidence or self.overlay

    @property
    def needs_panoptic(self) -> bool:
        return self.segments or self.overlay


def inference_stats_msg(
    header: Header,
    camera: str,
    times: StageTimes,
    *,
    queue_wait_ms: float,
    end_to_end_ms: float,
    frames_processed: int,
    frames_invalid: int,
    counters: SlotCounters | None,
) -> InferenceStats:
    """The `<camera>/stats` message of one frame (node and replay); numbers from the core."""
    msg = InferenceStats()
    msg.header = header
    msg.camera = camera
    msg.convert_ms = times.convert_ms
    msg.preprocess_ms = times.preprocess_ms
    msg.model_ms = times.model_ms
    msg.postprocess_ms = times.postprocess_ms
    msg.handoff_ms = times.handoff_ms
    msg.publish_ms = times.publish_ms
    msg.queue_wait_ms = queue_wait_ms
    msg.end_to_end_ms = end_to_end_ms
    msg.frames_processed = frames_processed
    msg.frames_dropped_overwritten = counters.overwritten if counters else 0
    msg.frames_dropped_stale = counters.stale if counters else 0
    msg.frames_dropped_invalid = frames_invalid
    return msg


def postprocess_for(base: PostprocessConfig, demand: OutputDemand) -> PostprocessConfig:
    """`base` with the semantic and panoptic stages switched off when nobody needs them."""
    return _variant(base, demand.needs_semantic, demand.needs_panoptic)


@functools.lru_cache(maxsize=16)
def _variant(base: PostprocessConfig, semantic: bool, panoptic: bool) -> PostprocessConfig:
    if base.semantic == semantic and base.panoptic == panoptic:
        return base
    return dataclasses.replace(base, semantic=semantic, panoptic=panoptic)


@functools.lru_cache(maxsize=len(COLORMAP_IDS))
def heatmap_lut_bgr(colormap: str) -> np.ndarray:
    """(256, 3) uint8 BGR lookup table of a named colour map."""
    return np.ascontiguousarray(colormap_lut(COLORMAP_IDS[colormap])[:, ::-1])


@functools.lru_cache(maxsize=1)
def _palette() -> np.ndarray:
    return semantic_palette()


@functools.lru_cache(maxsize=1)
def _names() -> tuple[str, ...]:
    return class_names()


@functools.lru_cache(maxsize=1)
def _palette_lut() -> np.ndarray:
    """The semantic palette as a 3-channel OpenCV lookup table, (256, 1, 3) uint8 RGB."""
    return np.ascontiguousarray(_palette().reshape(256, 1, 3))


def quantize_unit(
    values: np.ndarray,
    low: float,
    high: float,
    out: np.ndarray,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Map [low, high] linearly to 0..255 (rounded, clipped) into the uint8 array `out`.

    `scratch`, an array of `values`' shape in `quantize_dtype(values)`, holds the intermediate
    values, so a caller that keeps one allocates nothing per frame.
    """
    if scratch is None:
        scratch = np.empty(values.shape, quantize_dtype(values))
    # (values - low) * scale + 0.5, one operation at a time in place: the same roundings as the
    # expression, without its three temporaries.
    np.subtract(values, np.float32(low), out=scratch)
    np.multiply(scratch, np.float32(255.0 / (high - low)), out=scratch)
    np.add(scratch, np.float32(0.5), out=scratch)
    np.clip(scratch, 0.0, 255.0, out=scratch)
    np.copyto(out, scratch, casting='unsafe')
    return out


def quantize_dtype(values: np.ndarray) -> np.dtype:
    """Working type of `quantize_unit`: float32, or wider if `values` are."""
    return np.result_type(values.dtype, np.float32)


def colorize_semantic(semantic: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """`semantic_palette()[semantic]` written into `out`, (H, W, 3) uint8 RGB.

    OpenCV's lookup table replaces numpy's fancy indexing (about ten times faster); `scratch`
    is an (H, W, 3) uint8 array for the label replicated into three channels.
    """
    if semantic.dtype != np.uint8:
        np.copyto(out, _palette()[semantic])
        return out
    cv2.cvtColor(semantic, cv2.COLOR_GRAY2RGB, dst=scratch)
    return cv2.LUT(scratch, _palette_lut(), dst=out)


def segment_msg(segment: Segment, unknown_id: int) -> OpenSetSegment:
    """One core `Segment` as an `OpenSetSegment` (box converted to a RegionOfInterest)."""
    msg = OpenSetSegment()
    msg.id = int(segment.id)
    msg.kind = _SEGMENT_KINDS[segment.kind]
    unknown = segment.kind is SegmentKind.UNKNOWN_THING or segment.class_id == unknown_id
    names = _names()
    if unknown:
        msg.class_id, msg.class_name = UNKNOWN_SEGMENT_CLASS_ID, 'unknown'
    else:
        msg.class_id = int(segment.class_id)
        msg.class_name = names[segment.class_id] if segment.class_id < len(names) else ''
    msg.class_score = float(segment.class_score)
    msg.anomaly_mean = float(segment.anomaly_score_mean)
    msg.anomaly_max = float(segment.anomaly_score_max)
    msg.area = int(segment.area)
    x_min, y_min, x_max, y_max = (int(v) for v in segment.bbox)
    msg.roi = RegionOfInterest(
        x_offset=x_min, y_offset=y_min, width=x_max - x_min, height=y_max - y_min
    )
    return msg


class CameraOutputs:
    """Publishers and reusable messages of one camera.

    Args:
        node: the node that owns the publishers.
        camera: camera name; topics are `<camera>/<output>`.
        qos: QoS of every output publisher.
    """

    def __init__(self, node: Node, camera: str, qos: QoSProfile) -> None:
        self.camera = camera
        self.publishers: dict[str, Publisher] = {}
        types = {
            'Image': Image,
            'OpenSetPanoptic': OpenSetPanoptic,
            'InferenceStats': InferenceStats,
        }
        for key, topic in OUTPUT_TOPICS.items():
            msg_type = types[OUTPUT_MESSAGE_TYPES[key].rpartition('/')[2]]
            self.publishers[key] = node.create_publisher(msg_type, f'{camera}/{topic}', qos)
        self._buffers = {key: ImageMessageBuffer(enc) for key, enc in OUTPUT_ENCODINGS.items()}
        self._segment_ids = ImageMessageBuffer('mono16')
        self._panoptic = OpenSetPanoptic()
        # Intermediate arrays, reused while the output size stays the same.
        self._scratch: dict[str, np.ndarray] = {}
        self._last_overlay_s = -math.inf

    def demand(self, now_s: float, overlay_rate_hz: float) -> OutputDemand:
        """Outputs with subscribers; the overlay only if its rate limit allows one now."""
        wanted = {key: pub.get_subscription_count() > 0 for key, pub in self.publishers.items()}
        if wanted['overlay'] and overlay_rate_hz > 0.0:
            elapsed_s = now_s - self._last_overlay_s
            # Frames of a camera running at exactly the limit arrive a little early or late;
            # without the tolerance every other one would be skipped (half the rate).
            period_s = (1.0 - OVERLAY_RATE_TOLERANCE) / overlay_rate_hz
            wanted['overlay'] = elapsed_s >= period_s or elapsed_s < 0.0
        return OutputDemand(**wanted)

    def publish(
        self,
        header: Header,
        result: SegmentationOutput,
        rgb: np.ndarray,
        demand: OutputDemand,
        viz: VizSettings,
        anomaly_threshold: float,
        postprocess: PostprocessConfig,
        now_s: float,
    ) -> None:
        """Fill and publish the demanded outputs of one frame.

        Args:
            header: the input header, passed on unchanged.
            result: post-processed output with host (CPU) maps.
            rgb: the source frame, (H, W, 3) uint8 RGB (for the overlay).
            demand: outputs to produce.
            viz: heatmap and overlay settings.
            anomaly_threshold: threshold of anomaly/mask.
            postprocess: thresholds reported in panoptic/segments.
            now_s: the time given to `demand` for this frame (overlay rate limit); the same
                clock and instant, so the limit compares frame starts with frame starts.
        """
        score = result.anomaly_map.numpy()
        height, width = result.output_size
        if demand.score:
            self._publish_buffer('score', header, score)
        if demand.heatmap:
            msg, view = self._buffers['heatmap'].prepare(header, height, width)
            indices = quantize_unit(
                score,
                viz.score_min,
                viz.score_max,
                self._scratch_array('indices', score.shape, np.dtype(np.uint8)),
                self._scratch_array('quantize', score.shape, quantize_dtype(score)),
            )
            # OpenCV's colour map writes BGR straight into the message buffer (twice as fast
            # as a numpy lookup); `heatmap_lut_bgr` is the same table for legends and tests.
            cv2.applyColorMap(indices, COLORMAP_IDS[viz.colormap], dst=view)
            self.publishers['heatmap'].publish(msg)
        if demand.mask:
            msg, view = self._buffers['mask'].prepare(header, height, width)
            np.greater_equal(score, np.float32(anomaly_threshold), out=view.view(np.bool_))
            np.multiply(view, np.uint8(255), out=view)
            self.publishers['mask'].publish(msg)
        semantic = None if result.semantic is None else result.semantic.numpy()
        if demand.semantic and semantic is not None:
            self._publish_buffer('semantic', header, semantic)
        if demand.confidence and result.confidence is not None:
            msg, view = self._buffers['confidence'].prepare(header, height, width)
            confidence = result.confidence.numpy()
            scratch = self._scratch_array('quantize', confidence.shape, quantize_dtype(confidence))
            quantize_unit(confidence, 0.0, 1.0, view, scratch)
            self.publishers['confidence'].publish(msg)
        if demand.segments and result.panoptic is not None:
            self.publishers['segments'].publish(
                self._panoptic_msg(header, result, anomaly_threshold, postprocess)
            )
        if demand.overlay and semantic is not None:
            self._publish_overlay(header, result, rgb, semantic, viz)
            self._last_overlay_s = now_s

    def publish_stats(self, stats: InferenceStats) -> None:
        self.publishers['stats'].publish(stats)

    def destroy(self, node: Node) -> None:
        for publisher in self.publishers.values():
            node.destroy_publisher(publisher)
        self.publishers.clear()

    def _publish_buffer(self, key: str, header: Header, pixels: np.ndarray) -> None:
        self.publishers[key].publish(self._buffers[key].fill(header, pixels))

    def _scratch_array(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A reusable work array; reallocated only when the shape or type changes."""
        array = self._scratch.get(name)
        if array is None or array.shape != shape or array.dtype != dtype:
            array = self._scratch[name] = np.empty(shape, dtype)
        return array

    def _panoptic_msg(
        self,
        header: Header,
        result: SegmentationOutput,
        anomaly_threshold: float,
        postprocess: PostprocessConfig,
    ) -> OpenSetPanoptic:
        assert result.panoptic is not None
        ids = result.panoptic.numpy()
        if ids.size and int(ids.max()) > np.iinfo(np.uint16).max:
            raise ValueError(f'segment id {int(ids.max())} does not fit the mono16 id image')
        height, width = ids.shape
        id_image, view = self._segment_ids.prepare(header, height, width)
        np.copyto(view, ids, casting='unsafe')
        msg = self._panoptic  # created once, refilled every frame
        msg.header = header
        msg.source_height, msg.source_width = (int(v) for v in result.source_size)
        msg.segment_ids = id_image
        msg.segments = [segment_msg(s, result.unknown_id) for s in result.segments]
        msg.unknown_id = int(result.unknown_id)
        msg.anomaly_threshold = float(anomaly_threshold)
        msg.object_mask_threshold = float(postprocess.object_mask_threshold)
        msg.overlap_threshold = float(postprocess.overlap_threshold)
        return msg

    def _publish_overlay(
        self,
        header: Header,
        result: SegmentationOutput,
        rgb: np.ndarray,
        semantic: np.ndarray,
        viz: VizSettings,
    ) -> None:
        # OpenCV needs positive strides and real channels: the node passes contiguous RGB, other
        # callers may pass bgr or mono views.
        image = resize_to(np.ascontiguousarray(rgb), result.output_size)
        shape = (*semantic.shape, 3)
        colors = colorize_semantic(
            semantic,
            self._scratch_array('colors', shape, np.dtype(np.uint8)),
            self._scratch_array('labels3', shape, np.dtype(np.uint8)),
        )
        msg, view = self._buffers['overlay'].prepare(header, *semantic.shape)
        # Blended and boxed straight into the message buffer.
        blend(image, colors, viz.alpha, out=view)
        if result.panoptic is not None:
            draw_unknown_boxes(view, result.segments, result.source_size, out=view)
        self.publishers['overlay'].publish(msg)
