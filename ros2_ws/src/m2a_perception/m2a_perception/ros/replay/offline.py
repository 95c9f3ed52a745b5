"""Offline replay: a bag through the node's own code paths, outputs into an mcap bag.

No ROS graph: input messages are deserialized with rclpy's serialisation (no `rclpy.init`) into
the very message classes the node receives, converted with `m2a_perception.ros.conversions`,
run through `runtime.frame.process_frame` as `PerceptionNode._process` does, and published by
the node's `CameraOutputs`, whose publishers here write into the output bag. Settings come from
the node's parameter table (`settings_from_parameters`), so a node YAML applies unchanged.
Diagnostics are the node's status functions, emitted every `diagnostics.period_s` of bag time.

Rates:
    as-fast   every frame is processed, as fast as the model allows; no frame is dropped.
    recorded  frames arrive at their recorded times (scaled by `speed`) into the node's
              latest-frame slots (`FrameScheduler`), so a model slower than the camera drops
              frames exactly as the live node would (overwritten / stale counters).

Output bag: every input camera topic, its ground-truth and other topics under the camera's
namespace (all topics with `copy_all_topics`), plus per camera the node's eight outputs and
`/diagnostics`. Outputs are logged at the log time of their input frame, so players show them
together; headers are the input headers, unchanged.

Allowed dependencies: rclpy (serialisation only), message packages, torch, numpy, tqdm, the core,
`m2a_perception.ros` modules.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builtin_interfaces.msg import Time
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from m2a_perception.config import parse_yaml
from m2a_perception.evaluation.streams import EvaluationSettings, GroundTruthEvaluator
from m2a_perception.pipeline import Segmenter
from m2a_perception.preprocess import DegenerateResizeError
from m2a_perception.ros.conversions import (
    AspectRatioError,
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_array,
    image_msg_to_rgb,
)
from m2a_perception.ros.diagnostics import (
    BackendSnapshot,
    BackendState,
    CameraMonitor,
    ProcessingMonitor,
    StageTimes,
    backend_status,
    camera_status,
    diagnostic_array,
    processing_status,
)
from m2a_perception.ros.node import NODE_NAME, OUTPUT_QOS
from m2a_perception.ros.outputs import CameraOutputs, inference_stats_msg, postprocess_for
from m2a_perception.ros.params import CAMERAS_PARAMETER, NodeSettings, settings_from_parameters
from m2a_perception.ros.replay.bag import (
    BagMessage,
    BagReader,
    BagReadError,
    CameraSource,
    OutputBag,
    detect_cameras,
    ground_truth_kinds,
    stamp_ns,
)
from m2a_perception.runtime import loader
from m2a_perception.runtime.frame import process_frame
from m2a_perception.runtime.report import CameraCounters, LatencySummary, ReplayReport
from m2a_perception.runtime.slots import FrameScheduler
from m2a_perception_msgs.msg import InferenceStats

LOGGER = logging.getLogger(__name__)
RATES = ('as-fast', 'recorded')
DIAGNOSTICS_TOPIC = '/diagnostics'


@dataclass(frozen=True)
class ReplayOptions:
    """How to replay.

    Attributes:
        cameras: None for every camera topic of the bag, else items 'NAME', 'TOPIC' or
            'NAME=TOPIC' (see `bag.detect_cameras`).
        rate: 'as-fast' or 'recorded'.
        speed: playback speed factor of the 'recorded' rate (2.0 = twice as fast).
        copy_all_topics: copy every input topic, not only the cameras' own.
        max_frames: stop after this many camera frames (all cameras together).
        progress: show a progress bar on stderr.
        pixel_protocol: pixel metric protocol (see `EvaluationSettings`).
        component_track: 'anomaly' or 'obstacle' component sizes.
        overwrite: replace an existing output bag.
    """

    cameras: tuple[str, ...] | None = None
    rate: str = 'as-fast'
    speed: float = 1.0
    copy_all_topics: bool = False
    max_frames: int | None = None
    progress: bool = True
    pixel_protocol: str = 'smiyc'
    component_track: str = 'anomaly'
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.rate not in RATES:
            raise ValueError(f'rate must be one of {RATES}, got {self.rate!r}')
        if not self.speed > 0.0:
            raise ValueError(f'speed must be positive, got {self.speed}')
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f'max_frames must be at least 1, got {self.max_frames}')


# ------------------------------------------------------------------------------- parameters


def parse_parameter_override(text: str) -> tuple[str, Any]:
    """'name:=value' (ROS `-p` syntax; the value is YAML) -> (name, value).

    Raises:
        ValueError: without ':='.
    """
    name, separator, value = text.partition(':=')
    if not separator or not name:
        raise ValueError(f'parameter override must look like name:=value, got {text!r}')
    return name.strip(), parse_yaml(value, f'-p {name.strip()}')


def node_settings(parameters: Mapping[str, Any], cameras: Sequence[CameraSource]) -> NodeSettings:
    """The node's settings for these parameters, with the cameras of the bag.

    Raises:
        ValueError: from the node's own validation, naming the parameter.
    """
    values = dict(parameters)
    values[CAMERAS_PARAMETER] = [camera.name for camera in cameras]
    for camera in cameras:
        values[f'cameras.{camera.name}.transport'] = camera.transport
        values[f'cameras.{camera.name}.topic'] = camera.topic
    return settings_from_parameters(values)


# ------------------------------------------------------------------------- bag "publishers"


def ros_type_name(msg_type: type) -> str:
    """'sensor_msgs/msg/Image' for the rclpy class `sensor_msgs.msg.Image`."""
    return f'{msg_type.__module__.split(".")[0]}/msg/{msg_type.__name__}'


class _BagPublisher:
    """What `CameraOutputs` sees as a publisher: serialises into the output bag."""

    def __init__(self, bag: OutputBag, topic: str, log_time: Callable[[], int]) -> None:
        self.bag = bag
        self.topic = topic
        self._log_time = log_time

    def get_subscription_count(self) -> int:
        return 1  # every output is recorded

    def publish(self, msg: Any) -> None:
        self.bag.write(self.topic, self._log_time(), serialize_message(msg))


class _BagNode:
    """Stands in for the node towards `CameraOutputs`: publishers write into the bag."""

    def __init__(self, bag: OutputBag, namespace: str, log_time: Callable[[], int]) -> None:
        self.bag = bag
        self.namespace = namespace
        self._log_time = log_time

    def create_publisher(self, msg_type: type, topic: str, qos: QoSProfile) -> _BagPublisher:
        absolute = topic if topic.startswith('/') else f'{self.namespace}/{topic}'
        self.bag.add_topic(absolute, ros_type_name(msg_type))
        return _BagPublisher(self.bag, absolute, self._log_time)

    def destroy_publisher(self, publisher: _BagPublisher) -> None:
        pass


# --------------------------------------------------------------------------------- replayer


@dataclass
class _CameraRun:
    source: CameraSource
    outputs: CameraOutputs
    monitor: CameraMonitor
    counters: CameraCounters
    msg_type: type


@dataclass
class _Pending:
    """A frame read from the bag, with its bag log time and wall-clock arrival."""

    message: Image | CompressedImage
    log_time_ns: int
    arrival_s: float


@dataclass
class _Timings:
    """Per-stage samples in milliseconds: every `StageTimes` field, their total, and (recorded
    rate) end-to-end and queue-wait times."""

    stages: dict[str, list[float]] = field(default_factory=dict)

    def add(self, times: StageTimes, end_to_end_ms: float | None, queue_ms: float | None) -> None:
        for stage, value in stage_values(times).items():
            self.stages.setdefault(stage, []).append(value)
        self.stages.setdefault('total', []).append(times.total_ms)
        if end_to_end_ms is not None:
            self.stages.setdefault('end_to_end', []).append(end_to_end_ms)
        if queue_ms is not None:
            self.stages.setdefault('queue_wait', []).append(queue_ms)


def stage_values(times: StageTimes) -> dict[str, float]:
    """'preprocess' -> milliseconds, for every `*_ms` field of the node's `StageTimes`."""
    return {
        item.name[: -len('_ms')]: float(getattr(times, item.name))
        for item in dataclasses.fields(times)
        if item.name.endswith('_ms')
    }


class _Replayer:
    def __init__(
        self,
        reader: BagReader,
        bag: OutputBag,
        segmenter: Segmenter,
        settings: NodeSettings,
        cameras: Sequence[CameraSource],
        options: ReplayOptions,
        backend: BackendSnapshot,
    ) -> None:
        self.reader = reader
        self.bag = bag
        self.segmenter = segmenter
        self.settings = settings
        self.options = options
        self.backend = backend
        self.log_time_ns = 0
        self.processing = ProcessingMonitor()
        self.timings = _Timings()
        self.cameras: dict[str, _CameraRun] = {}
        for source in cameras:
            node = _BagNode(bag, source.namespace, lambda: self.log_time_ns)
            self.cameras[source.name] = _CameraRun(
                source=source,
                outputs=CameraOutputs(node, source.name, OUTPUT_QOS),  # type: ignore[arg-type]
                monitor=CameraMonitor(source.name, source.topic, source.transport),
                counters=CameraCounters(topic=source.topic),
                msg_type=Image if source.transport == 'raw' else CompressedImage,
            )
        bag.add_topic(DIAGNOSTICS_TOPIC, 'diagnostic_msgs/msg/DiagnosticArray')
        self._diagnostics_topic = DIAGNOSTICS_TOPIC
        self._next_diagnostics_ns: int | None = None
        self.scheduler: FrameScheduler[_Pending] | None = None
        self._clock_s = 0.0
        self.frames_read = 0
        self.evaluator: GroundTruthEvaluator | None = None

    # -- frames

    def decode(self, run: _CameraRun, message: BagMessage) -> Image | CompressedImage | None:
        try:
            msg = deserialize_message(message.data, run.msg_type)
        except Exception as error:  # bytes that are not a message of the declared type
            self._invalid(run, 'deserialize', f'cannot deserialize {message.topic}: {error}')
            return None
        run.counters.received += 1
        run.monitor.on_frame(stamp_ns(msg.header))
        return msg

    def _invalid(self, run: _CameraRun, reason: str, text: str) -> None:
        count = run.monitor.on_invalid(reason, text)
        run.counters.invalid[reason] = run.counters.invalid.get(reason, 0) + 1
        if count == 1:
            LOGGER.error(
                'camera %s: dropped invalid frame [%s]: %s', run.source.name, reason, text
            )

    def process(
        self,
        run: _CameraRun,
        pending: _Pending,
        now_s: float,
        queue_wait_s: float | None,
    ) -> None:
        """One frame through the node's stages (mirrors `PerceptionNode._process`)."""
        settings = self.settings
        segmenter = self.segmenter
        msg = pending.message
        self.log_time_ns = pending.log_time_ns
        demand = run.outputs.demand(now_s, settings.viz.overlay_rate_hz)
        start = time.perf_counter()
        try:
            if isinstance(msg, CompressedImage):
                rgb = compressed_msg_to_rgb(msg, settings.input.limits, contiguous=True)
            else:
                rgb = image_msg_to_rgb(msg, settings.input.limits, contiguous=True)
            segmenter.preprocessor.record_for(rgb.shape[0], rgb.shape[1])
        except DegenerateResizeError as error:
            self._invalid(run, AspectRatioError.reason, str(error))
            return
        except ImageConversionError as error:
            self._invalid(run, error.reason, str(error))
            return
        converted = time.perf_counter()
        try:
            frame_result = process_frame(
                segmenter, rgb, postprocess_for(settings.postprocess, demand)
            )
            result = frame_result.output
            published_start = time.perf_counter()
            run.outputs.publish(
                msg.header,
                result,
                rgb,
                demand,
                settings.viz,
                settings.anomaly_threshold,
                settings.postprocess,
                now_s,
            )
            published = time.perf_counter()
        except (RuntimeError, ValueError) as error:
            run.counters.failed += 1
            run.monitor.on_error(f'{type(error).__name__}: {error}')
            LOGGER.error('camera %s: processing failed: %s', run.source.name, error)
            return
        times = dataclasses.replace(
            frame_result.times,
            convert_ms=(converted - start) * 1e3,
            publish_ms=(published - published_start) * 1e3,
        )
        self.processing.record(times, settings.diagnostics.max_processing_time_ms)
        run.monitor.on_processed()
        run.counters.processed += 1
        recorded = self.options.rate == 'recorded'
        end_to_end_ms = (time.monotonic() - pending.arrival_s) * 1e3 if recorded else None
        queue_ms = queue_wait_s * 1e3 if queue_wait_s is not None else None
        self.timings.add(times, end_to_end_ms, queue_ms)
        if demand.stats:
            run.outputs.publish_stats(
                self._stats_msg(run, msg, times, end_to_end_ms or times.total_ms, queue_ms or 0.0)
            )
        if self.evaluator is not None:
            self.evaluator.set_num_classes(result.unknown_id)
            semantic = None if result.semantic is None else result.semantic.numpy()
            self.evaluator.add_prediction(
                run.source.name, stamp_ns(msg.header), result.anomaly_map.numpy(), semantic
            )

    def _stats_msg(
        self,
        run: _CameraRun,
        msg: Image | CompressedImage,
        times: StageTimes,
        end_to_end_ms: float,
        queue_ms: float,
    ) -> InferenceStats:
        return inference_stats_msg(
            msg.header,
            run.source.name,
            times,
            queue_wait_ms=queue_ms,
            end_to_end_ms=end_to_end_ms,
            frames_processed=run.monitor.processed,
            frames_invalid=run.monitor.invalid_total,
            counters=self.scheduler.counters(run.source.name) if self.scheduler else None,
        )

    # -- diagnostics

    def maybe_diagnostics(self, log_time_ns: int, now_s: float, final: bool = False) -> None:
        period_ns = int(self.settings.diagnostics.period_s * 1e9)
        if self._next_diagnostics_ns is None:
            self._next_diagnostics_ns = log_time_ns + period_ns
            for run in self.cameras.values():  # start the rate windows
                run.monitor.snapshot(now_s, None, True, 1, self._slot_counters(run))
            self.processing.snapshot()
            return
        if log_time_ns < self._next_diagnostics_ns and not final:
            return
        self._next_diagnostics_ns = log_time_ns + period_ns
        name = NODE_NAME
        statuses = [
            backend_status(name, self.backend),
            processing_status(name, self.processing.snapshot(), self.settings.diagnostics),
        ]
        for run in self.cameras.values():
            snapshot = run.monitor.snapshot(now_s, log_time_ns, True, 1, self._slot_counters(run))
            statuses.append(camera_status(name, snapshot, self.settings.diagnostics))
        stamp = Time(sec=log_time_ns // 1_000_000_000, nanosec=log_time_ns % 1_000_000_000)
        self.bag.write(
            self._diagnostics_topic,
            log_time_ns,
            serialize_message(diagnostic_array(stamp, statuses)),
        )

    def _slot_counters(self, run: _CameraRun) -> Any:
        from m2a_perception.runtime.slots import SlotCounters

        if self.scheduler is not None:
            return self.scheduler.counters(run.source.name)
        received = run.counters.received
        return SlotCounters(received=received, taken=received)

    # -- loops

    def run(
        self,
        routes: Mapping[str, tuple[str, str]],
        copy_topics: set[str],
        progress: Any,
    ) -> None:
        messages = self.reader.messages(set(routes) | copy_topics)
        if self.options.rate == 'as-fast':
            self._run_as_fast(messages, routes, copy_topics, progress)
        else:
            self._run_recorded(messages, routes, copy_topics, progress)

    def _route(
        self,
        message: BagMessage,
        routes: Mapping[str, tuple[str, str]],
        copy_topics: set[str],
    ) -> tuple[_CameraRun, Image | CompressedImage] | None:
        """Copy, feed ground truth; returns the decoded camera frame if it is one."""
        if message.topic in copy_topics:
            self.bag.write(message.topic, message.log_time_ns, message.data)
        route = routes.get(message.topic)
        if route is None:
            return None
        camera, kind = route
        run = self.cameras[camera]
        if kind == 'image':
            msg = self.decode(run, message)
            return None if msg is None else (run, msg)
        if self.evaluator is not None:
            try:
                label = deserialize_message(message.data, Image)
                pixels = image_msg_to_array(label)
            except Exception as error:
                raise ValueError(
                    f'ground truth on {message.topic} is not an image: {error}'
                ) from error
            self.evaluator.add_ground_truth(camera, stamp_ns(label.header), kind, pixels)
        return None

    def _limit_reached(self) -> bool:
        limit = self.options.max_frames
        return limit is not None and self.frames_read >= limit

    def _run_as_fast(
        self, messages: Any, routes: Any, copy_topics: set[str], progress: Any
    ) -> None:
        for message in messages:
            if (
                self._limit_reached()
                and message.topic in routes
                and routes[message.topic][1] == 'image'
            ):
                break
            frame = self._route(message, routes, copy_topics)
            now_s = message.log_time_ns / 1e9
            self.maybe_diagnostics(message.log_time_ns, now_s)
            if frame is None:
                continue
            run, msg = frame
            self.frames_read += 1
            self.process(run, _Pending(msg, message.log_time_ns, time.monotonic()), now_s, None)
            progress.update(1)
            self.maybe_diagnostics(message.log_time_ns, now_s)

    def _run_recorded(
        self, messages: Any, routes: Any, copy_topics: set[str], progress: Any
    ) -> None:
        scheduler: FrameScheduler[_Pending] = FrameScheduler(
            list(self.cameras), self.settings.input.max_input_age_s, clock=lambda: self._clock_s
        )
        self.scheduler = scheduler
        start_wall: float | None = None
        first_log = 0
        for message in messages:
            if (
                self._limit_reached()
                and message.topic in routes
                and routes[message.topic][1] == 'image'
            ):
                break
            if start_wall is None:
                start_wall, first_log = time.monotonic(), message.log_time_ns
            due = start_wall + (message.log_time_ns - first_log) / 1e9 / self.options.speed
            self._serve_until(due, progress)
            self._clock_s = due
            frame = self._route(message, routes, copy_topics)
            self.maybe_diagnostics(message.log_time_ns, time.monotonic())
            if frame is not None:
                run, msg = frame
                self.frames_read += 1
                scheduler.put(run.source.name, _Pending(msg, message.log_time_ns, due))
        self._serve_until(None, progress)

    def _serve_until(self, due: float | None, progress: Any) -> None:
        """Process slot frames until the wall clock reaches `due` (None: until slots are empty)."""
        assert self.scheduler is not None
        while True:
            now = time.monotonic()
            if due is not None and now >= due:
                return
            self._clock_s = now
            frame = self.scheduler.next_frame(0.0)
            if frame is None:
                if due is None:
                    return
                time.sleep(max(0.0, due - now))
                return
            run = self.cameras[frame.camera]
            self.process(run, frame.item, now, frame.queue_wait_s)
            progress.update(1)


def replay_bag(
    bag: str | Path,
    out_bag: str | Path,
    segmenter: Segmenter | None = None,
    *,
    parameters: Mapping[str, Any] | None = None,
    options: ReplayOptions | None = None,
) -> ReplayReport:
    """Replay a bag through the node's pipeline into an mcap bag; statistics and metrics.

    Args:
        bag: input rosbag2 (folder or .mcap/.db3 file).
        out_bag: output bag folder (created; must not exist unless `options.overwrite`).
        segmenter: a loaded pipeline (e.g. the demo's); its post-processing config is replaced
            per frame by the node's, from `parameters`. None loads `model.checkpoint` (and
            `model.engine_path` for the tensorrt backend) from `parameters` as the node does.
        parameters: node parameter values by dotted name (`param_file.read_parameter_file` +
            overrides); missing ones take the node's defaults. Camera parameters come from the
            bag.
        options: cameras, rate, evaluation protocol, progress bar.

    Returns:
        The report; `report.metrics` is set when ground-truth topics are present.

    Raises:
        BagReadError: the input is missing or damaged. The output bag is closed and readable
            with everything processed before the damage; `error.report` is the partial report.
        ValueError: invalid parameters, cameras or options.
        loader.BackendError: the model cannot be loaded.
    """
    options = options or ReplayOptions()
    parameters = dict(parameters or {})
    out_path = Path(out_bag)
    with BagReader(bag) as reader:
        cameras = detect_cameras(reader.topics, options.cameras)
        settings = node_settings(parameters, cameras)
        backend = BackendSnapshot(
            state=BackendState.READY,
            lifecycle='active',
            backend=settings.engine.backend,
            device=settings.engine.device,
            precision=settings.engine.precision,
            checkpoint=settings.engine.checkpoint,
        )
        if segmenter is None:
            load_start = time.monotonic()
            segmenter, model_config = loader.build_segmenter(
                settings.engine.spec(), settings.postprocess
            )
            loader.warm_up(segmenter, model_config, settings.engine.warmup_iterations)
            backend = dataclasses.replace(
                backend, model=model_config.name, load_time_s=time.monotonic() - load_start
            )
        routes: dict[str, tuple[str, str]] = {}
        expected: dict[str, tuple[str, ...]] = {}
        for camera in cameras:
            routes[camera.topic] = (camera.name, 'image')
            expected[camera.name] = ground_truth_kinds(camera, reader.topics)
            for kind in expected[camera.name]:
                routes[camera.ground_truth_topic(kind)] = (camera.name, kind)
        report = ReplayReport(mode=options.rate, input_bag=str(bag), output_bag=str(out_path))
        with OutputBag(out_path, overwrite=options.overwrite) as output:
            replayer = _Replayer(reader, output, segmenter, settings, cameras, options, backend)
            copy_topics = _copy_topics(reader, cameras, options, set(output.types), report)
            for topic in sorted(copy_topics):
                info = reader.topics[topic]
                output.add_topic(topic, info.msgtype, info.msgdef)
            evaluation = EvaluationSettings(
                pixel_protocol=options.pixel_protocol,
                component_track=options.component_track,
                node_threshold=settings.anomaly_threshold,
            )
            evaluator = GroundTruthEvaluator(evaluation, expected)
            replayer.evaluator = evaluator if evaluator.active else None
            total = reader.count([c.topic for c in cameras])
            if options.max_frames is not None and total is not None:
                total = min(total, options.max_frames)
            progress = _progress_bar(total, options.progress)
            start = time.monotonic()
            try:
                replayer.run(routes, copy_topics, progress)
                if replayer.log_time_ns:
                    replayer.maybe_diagnostics(replayer.log_time_ns, time.monotonic(), final=True)
            except BagReadError as error:
                report.input_error = str(error)
                LOGGER.error('%s', error)
            except BaseException:
                evaluator.discard()
                raise
            finally:
                progress.close()
                wall = time.monotonic() - start
        report.wall_time_s = wall
        report.output_counts = dict(output.counts)
        report.cameras = {name: run.counters for name, run in replayer.cameras.items()}
        if replayer.scheduler is not None:
            for name, run in replayer.cameras.items():
                slots = replayer.scheduler.counters(name)
                run.counters.dropped_overwritten = slots.overwritten
                run.counters.dropped_stale = slots.stale
        report.throughput_fps = report.frames_processed / wall if wall > 0 else 0.0
        report.latency_ms = {
            stage: LatencySummary.of(values) for stage, values in replayer.timings.stages.items()
        }
        report.metrics = evaluator.compute()
        report.add_skipped(reader.skipped)
        if options.max_frames is not None and replayer.frames_read >= options.max_frames:
            report.notes.append(f'stopped after max_frames={options.max_frames} frame(s)')
        if report.input_error is not None:
            error = BagReadError(Path(bag), report.input_error)
            error.report = report
            raise error
    return report


def _copy_topics(
    reader: BagReader,
    cameras: Sequence[CameraSource],
    options: ReplayOptions,
    outputs: set[str],
    report: ReplayReport,
) -> set[str]:
    """Input topics to copy: cameras, their ground truth and siblings (or all)."""
    selected = set()
    for topic in reader.topics:
        if options.copy_all_topics or any(
            topic == c.topic or topic.startswith(f'{c.prefix}/') for c in cameras
        ):
            selected.add(topic)
    clashing = sorted(selected & outputs)
    if clashing:
        report.notes.append(
            'input topics named like node outputs were not copied (the replay writes them): '
            + ', '.join(clashing)
        )
    return selected - outputs


class _NoProgress:
    def update(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(total=total, unit='frame', desc='replay', file=sys.stderr, dynamic_ncols=True)
