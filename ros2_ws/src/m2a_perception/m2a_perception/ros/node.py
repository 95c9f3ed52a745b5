"""The `m2a_perception` lifecycle node: N cameras, one model, anomaly and open-set outputs.

Lifecycle:
    configure  validates parameters, loads the checkpoint, warms up, creates publishers; a bad
               checkpoint keeps the node unconfigured with one error (never random weights);
    activate   subscribes to the cameras and starts the inference worker;
    deactivate unsubscribes and stops the worker (the model stays loaded);
    cleanup    destroys publishers and frees the model and GPU memory.

Threads: the executor thread runs subscriptions (which only drop the message into the camera's
latest-frame slot), parameter changes and the diagnostics timer; one worker thread converts,
infers, post-processes and publishes, so a slow model never blocks reception and frames never
queue up.

Allowed dependencies: rclpy and message packages, the core, the other `m2a_perception.ros`
modules.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.subscription import Subscription
from rclpy.task import Future
from sensor_msgs.msg import CompressedImage, Image

from m2a_perception.deploy.cache import NODE_STATES
from m2a_perception.pipeline import Segmenter
from m2a_perception.preprocess import DegenerateResizeError
from m2a_perception.ros.conversions import (
    AspectRatioError,
    ImageConversionError,
    compressed_msg_to_rgb,
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
from m2a_perception.ros.outputs import CameraOutputs, inference_stats_msg, postprocess_for
from m2a_perception.ros.params import CameraSettings, NodeSettings, ParameterManager
from m2a_perception.ros.topics import NODE_NAME
from m2a_perception.runtime import loader
from m2a_perception.runtime.frame import process_frame
from m2a_perception.runtime.slots import Frame, FrameScheduler
from m2a_perception.runtime.throttle import KeyedThrottle
from m2a_perception_msgs.msg import InferenceStats

try:  # Jazzy and newer
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks

ERROR_THROTTLE_S = 5.0
WORKER_POLL_S = 0.25
# Reliable depth 1: both reliable and best-effort subscribers (RViz, rosbag) connect, and a slow
# subscriber cannot make outputs pile up.
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


@dataclass
class CameraRuntime:
    """Everything the node holds per camera while configured."""

    settings: CameraSettings
    monitor: CameraMonitor
    outputs: CameraOutputs
    subscription: Subscription | None = None


class PerceptionNode(LifecycleNode):
    """Lifecycle node serving N cameras with one Mask2Anomaly model.

    Args:
        **kwargs: passed to `LifecycleNode` (e.g. `context`, `parameter_overrides`).
    """

    def __init__(self, **kwargs: object) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._configured = False
        self._active = False
        self._lifecycle_label = 'unconfigured'
        self._throttle = KeyedThrottle(ERROR_THROTTLE_S)
        self._processing = ProcessingMonitor()
        self._segmenter: Segmenter | None = None
        self._cameras: dict[str, CameraRuntime] = {}
        self._scheduler: FrameScheduler[Image | CompressedImage] | None = None
        self._worker: threading.Thread | None = None
        self._loader_thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._params = ParameterManager(self, lambda: self._configured, self._on_settings)
        self._settings: NodeSettings | None = None
        self._backend = self._backend_snapshot(BackendState.UNCONFIGURED)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, '/diagnostics', 10)
        # Done after the lifecycle shutdown transition (finalized): the process should end.
        self.finalized: Future = Future()
        period = float(self.get_parameter('diagnostics.period_s').value)
        self._diagnostics_timer = self.create_timer(period, self.publish_diagnostics)

    # ----------------------------------------------------------------------------- lifecycle

    def run_autostart(self) -> None:
        """Configure and activate if the `autostart` parameter is set."""
        if not self.get_parameter('autostart').value:
            self.get_logger().info('autostart is off: waiting for lifecycle transitions')
            return
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded('configure', self._configure)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded('activate', self._activate)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded('deactivate', self._deactivate)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        return self._guarded('cleanup', self._cleanup)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = self._guarded('shutdown', self._shutdown)
        # Finalized is terminal: the process ends (see main.py), diagnostics say so meanwhile.
        self.publish_diagnostics()
        if not self.finalized.done():
            self.finalized.set_result(True)
        return result

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # Back to unconfigured with everything released, so configure can be retried.
        self._shutdown()
        self._lifecycle_label = 'unconfigured'
        return TransitionCallbackReturn.SUCCESS

    def _guarded(
        self, name: str, step: Callable[[], TransitionCallbackReturn]
    ) -> TransitionCallbackReturn:
        # rclpy turns an exception in a transition into ERROR without logging it.
        try:
            return step()
        except Exception as error:
            self.get_logger().error(f'{name} failed: {type(error).__name__}: {error}')
            return TransitionCallbackReturn.ERROR

    def _configure(self) -> TransitionCallbackReturn:
        self._params.declare_cameras()
        try:
            settings = self._params.settings()
        except ValueError as error:
            return self._configure_failed(f'invalid parameters: {error}')
        self._settings = settings
        try:
            spec = settings.engine.spec()
        except loader.BackendError as error:
            return self._configure_failed(str(error))
        self._backend = self._backend_snapshot(BackendState.LOADING)
        # Loading blocks the executor; report the state first so it is never a silent wait.
        self.publish_diagnostics()
        self.get_logger().info(
            f'loading {spec.checkpoint or "(model.checkpoint is empty)"} '
            f'({spec.kind}, {spec.device}, {spec.precision}'
            + (f', engine {spec.engine_path}, {spec.engine_policy})' if spec.is_engine else ')')
        )
        if spec.is_engine and spec.engine_policy == loader.BUILD_IF_MISSING:
            # A build takes minutes on the target GPU: build in the background so diagnostics
            # report 'building' while it runs; frames are skipped until the engine is ready.
            self._loader_thread = threading.Thread(
                target=self._load_in_background,
                args=(spec, settings),
                name='m2a-engine-build',
                daemon=True,
            )
            self._loader_thread.start()
        else:
            failure = self._load(spec, settings)
            if failure:
                return self._configure_failed(failure)
        self._scheduler = FrameScheduler(
            [camera.name for camera in settings.cameras], settings.input.max_input_age_s
        )
        for camera in settings.cameras:
            self._cameras[camera.name] = CameraRuntime(
                settings=camera,
                monitor=CameraMonitor(camera.name, camera.topic, camera.transport),
                outputs=CameraOutputs(self, camera.name, OUTPUT_QOS),
            )
        self._configured = True
        self._lifecycle_label = 'inactive'
        self.get_logger().info(
            f'configured: cameras {", ".join(c.name for c in settings.cameras)}, backend '
            f'{self._backend.state.value}'
        )
        return TransitionCallbackReturn.SUCCESS

    def _load(self, spec: loader.BackendSpec, settings: NodeSettings) -> str:
        """Load and warm up the model; '' on success, else why it failed (one sentence)."""
        start = time.monotonic()
        try:
            segmenter, model_config = loader.build_segmenter(
                spec, settings.postprocess, on_state=self._on_engine_state
            )
            loader.warm_up(segmenter, model_config, settings.engine.warmup_iterations)
        except loader.BackendError as error:
            return str(error)
        except (RuntimeError, ValueError) as error:
            return f'warm-up failed: {error}'
        self._segmenter = segmenter
        self._backend = self._backend_snapshot(
            BackendState.READY, model=model_config.name, load_time_s=time.monotonic() - start
        )
        self.get_logger().info(
            f'model {model_config.name} ready ({self._backend.load_time_s:.1f} s)'
        )
        return ''

    def _load_in_background(self, spec: loader.BackendSpec, settings: NodeSettings) -> None:
        failure = self._load(spec, settings)
        if failure:
            self._backend = self._backend_snapshot(BackendState.FAILED, error=failure)
            self.get_logger().error(f'engine build failed, no model is running: {failure}')
        self.publish_diagnostics()

    def _on_engine_state(self, state: str, detail: str) -> None:
        # The engine cache's progress states (checking, building, gating, ...) as node states.
        node_state = BackendState(NODE_STATES.get(state, 'loading'))
        busy = node_state in (BackendState.LOADING, BackendState.BUILDING)
        if busy and node_state is not self._backend.state:
            self._backend = self._backend_snapshot(node_state)
            self.get_logger().info(f'engine {state}: {detail}')
            self.publish_diagnostics()

    def _configure_failed(self, reason: str) -> TransitionCallbackReturn:
        self._backend = self._backend_snapshot(BackendState.FAILED, error=reason)
        self.get_logger().error(f'configure failed, node stays unconfigured: {reason}')
        self.publish_diagnostics()
        return TransitionCallbackReturn.FAILURE

    def _activate(self) -> TransitionCallbackReturn:
        assert self._settings is not None and self._scheduler is not None
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._settings.input.depth,
            reliability=(
                ReliabilityPolicy.RELIABLE
                if self._settings.input.reliability == 'reliable'
                else ReliabilityPolicy.BEST_EFFORT
            ),
            durability=DurabilityPolicy.VOLATILE,
        )
        # Fresh slots and monitors: counters and QoS events are per activation.
        self._scheduler = FrameScheduler(list(self._cameras), self._settings.input.max_input_age_s)
        for runtime in self._cameras.values():
            camera = runtime.settings
            runtime.monitor = CameraMonitor(camera.name, camera.topic, camera.transport)
            runtime.subscription = self._subscribe(runtime, qos)
            runtime.monitor.topic = runtime.subscription.topic_name
        self._processing.reset()
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name='m2a-inference', daemon=True)
        self._worker.start()
        self._active = True
        self._lifecycle_label = 'active'
        self.get_logger().info(
            'active: subscribed to ' + ', '.join(r.monitor.topic for r in self._cameras.values())
        )
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, runtime: CameraRuntime, qos: QoSProfile) -> Subscription:
        name = runtime.settings.name
        msg_type = Image if runtime.settings.transport == 'raw' else CompressedImage
        events = SubscriptionEventCallbacks(
            incompatible_qos=lambda info, cam=name: self._on_incompatible_qos(cam, info)
        )
        return self.create_subscription(
            msg_type,
            runtime.settings.topic,
            lambda msg, cam=name: self._on_frame(cam, msg),
            qos,
            event_callbacks=events,
        )

    def _deactivate(self) -> TransitionCallbackReturn:
        self._active = False
        for runtime in self._cameras.values():
            if runtime.subscription is not None:
                self.destroy_subscription(runtime.subscription)
                runtime.subscription = None
        self._stop_worker()
        self._lifecycle_label = 'inactive'
        return TransitionCallbackReturn.SUCCESS

    def _cleanup(self) -> TransitionCallbackReturn:
        self._stop_worker()
        if self._loader_thread is not None:
            # An engine build cannot be interrupted; its result is dropped below.
            self._loader_thread.join()
            self._loader_thread = None
        for runtime in self._cameras.values():
            runtime.outputs.destroy(self)
        self._cameras.clear()
        self._scheduler = None
        device = self._segmenter.device if self._segmenter is not None else None
        self._segmenter = None
        loader.release(device)
        self._configured = False
        self._lifecycle_label = 'unconfigured'
        self._backend = self._backend_snapshot(BackendState.UNCONFIGURED)
        return TransitionCallbackReturn.SUCCESS

    def _shutdown(self) -> TransitionCallbackReturn:
        if self._active:
            self._deactivate()
        self._cleanup()
        self._lifecycle_label = 'finalized'
        return TransitionCallbackReturn.SUCCESS

    def stop(self) -> None:
        """Stop the worker thread before the node is destroyed (process exit)."""
        self._stop_worker()

    def _stop_worker(self) -> None:
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler.clear()
        if self._worker is not None:
            self._worker.join()
            self._worker = None

    # ------------------------------------------------------------------------ executor side

    def _on_frame(self, camera: str, msg: Image | CompressedImage) -> None:
        runtime = self._cameras.get(camera)
        scheduler = self._scheduler
        if runtime is None or scheduler is None:
            return
        stamp = msg.header.stamp
        runtime.monitor.on_frame(stamp.sec * 1_000_000_000 + stamp.nanosec)
        scheduler.put(camera, msg)

    def _on_incompatible_qos(self, camera: str, info: object) -> None:
        policy = _policy_name(getattr(info, 'last_policy_kind', None))
        total = int(getattr(info, 'total_count', 1))
        runtime = self._cameras.get(camera)
        if runtime is not None:
            runtime.monitor.on_incompatible_qos(total, policy)
        self.get_logger().error(
            f'camera {camera}: a publisher with incompatible QoS ({policy}) was found on '
            f'{runtime.monitor.topic if runtime else camera}; no frames will arrive from it '
            f'(input.reliability is {self._settings.input.reliability if self._settings else "?"})'
        )

    def _on_settings(self, settings: NodeSettings) -> None:
        self._settings = settings
        if self._scheduler is not None:
            self._scheduler.max_age_s = settings.input.max_input_age_s

    def publish_diagnostics(self) -> None:
        """Publish one DiagnosticArray (timer callback; also called on state changes)."""
        # Namespaced, so two perception nodes in one system report distinct statuses.
        name = f'{self.get_namespace().rstrip("/")}/{self.get_name()}'.lstrip('/')
        backend = dataclasses.replace(self._backend, lifecycle=self._lifecycle_label)
        statuses = [backend_status(name, backend)]
        settings = self._settings
        scheduler = self._scheduler
        if self._configured and settings is not None and scheduler is not None:
            statuses.append(
                processing_status(name, self._processing.snapshot(), settings.diagnostics)
            )
            clock_ns = self.get_clock().now().nanoseconds or None
            for camera, runtime in self._cameras.items():
                subscription = runtime.subscription
                publishers = (
                    self.count_publishers(subscription.topic_name) if subscription else None
                )
                snapshot = runtime.monitor.snapshot(
                    time.monotonic(),
                    clock_ns,
                    self._active,
                    publishers,
                    scheduler.counters(camera),
                )
                statuses.append(camera_status(name, snapshot, settings.diagnostics))
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), statuses))

    # -------------------------------------------------------------------------- worker side

    def _work(self) -> None:
        scheduler = self._scheduler
        assert scheduler is not None
        while not self._stop.is_set():
            frame = scheduler.next_frame(WORKER_POLL_S)
            if frame is None or self._stop.is_set():
                continue
            try:
                self._process(frame)
            except Exception as error:  # the worker must outlive any single frame
                runtime = self._cameras.get(frame.camera)
                if runtime is not None:
                    self._processing_failed(runtime, error)

    def _process(self, frame: Frame[Image | CompressedImage]) -> None:
        runtime = self._cameras.get(frame.camera)
        settings = self._settings
        segmenter = self._segmenter
        if runtime is None or settings is None or segmenter is None:
            return
        # One instant for the overlay limit's decision and its record (see CameraOutputs).
        frame_start_s = time.monotonic()
        demand = runtime.outputs.demand(frame_start_s, settings.viz.overlay_rate_hz)
        if not demand.any:
            runtime.monitor.on_skipped()
            return
        msg = frame.item
        start = time.perf_counter()
        try:
            # Contiguous RGB: one fast OpenCV channel copy for bgr, rgba and mono inputs, which
            # pre-processing (PIL) and the overlay (OpenCV) would otherwise each copy slowly.
            if isinstance(msg, CompressedImage):
                rgb = compressed_msg_to_rgb(msg, settings.input.limits, contiguous=True)
            else:
                rgb = image_msg_to_rgb(msg, settings.input.limits, contiguous=True)
            # Within the size limits but too elongated for the model: rejected before inference.
            segmenter.preprocessor.record_for(rgb.shape[0], rgb.shape[1])
        except DegenerateResizeError as error:
            self._reject(runtime, AspectRatioError(str(error)))
            return
        except ImageConversionError as error:
            self._reject(runtime, error)
            return
        converted = time.perf_counter()
        try:
            frame_result = process_frame(
                segmenter, rgb, postprocess_for(settings.postprocess, demand)
            )
            published_start = time.perf_counter()
            runtime.outputs.publish(
                msg.header,
                frame_result.output,
                rgb,
                demand,
                settings.viz,
                settings.anomaly_threshold,
                settings.postprocess,
                frame_start_s,
            )
            published = time.perf_counter()
        except (RuntimeError, ValueError) as error:
            self._processing_failed(runtime, error)
            return
        times = dataclasses.replace(
            frame_result.times,
            convert_ms=(converted - start) * 1e3,
            publish_ms=(published - published_start) * 1e3,
        )
        self._processing.record(times, settings.diagnostics.max_processing_time_ms)
        runtime.monitor.on_processed()
        if demand.stats:
            runtime.outputs.publish_stats(self._stats_msg(frame, runtime, times))

    def _reject(self, runtime: CameraRuntime, error: ImageConversionError) -> None:
        camera = runtime.settings.name
        count = runtime.monitor.on_invalid(error.reason, str(error))
        allowed, suppressed = self._throttle.allow((camera, error.reason))
        if allowed:
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            self.get_logger().error(
                f'camera {camera}: dropped invalid frame [{error.reason}, {count} so far]: '
                f'{error}{more}'
            )

    def _processing_failed(self, runtime: CameraRuntime, error: Exception) -> None:
        camera = runtime.settings.name
        runtime.monitor.on_error(f'{type(error).__name__}: {error}')
        allowed, suppressed = self._throttle.allow((camera, 'processing'))
        if allowed:
            more = f' ({suppressed} more since the last report)' if suppressed else ''
            self.get_logger().error(
                f'camera {camera}: processing failed: {type(error).__name__}: {error}{more}'
            )

    def _stats_msg(
        self, frame: Frame[Image | CompressedImage], runtime: CameraRuntime, times: StageTimes
    ) -> InferenceStats:
        assert self._scheduler is not None
        header = frame.item.header
        stamp_ns = header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
        return inference_stats_msg(
            header,
            frame.camera,
            times,
            queue_wait_ms=frame.queue_wait_s * 1e3,
            end_to_end_ms=(self.get_clock().now().nanoseconds - stamp_ns) / 1e6,
            frames_processed=runtime.monitor.processed,
            frames_invalid=runtime.monitor.invalid_total,
            counters=self._scheduler.counters(frame.camera),
        )

    def _backend_snapshot(
        self,
        state: BackendState,
        model: str = '',
        load_time_s: float | None = None,
        error: str = '',
    ) -> BackendSnapshot:
        values = self._params.values()
        return BackendSnapshot(
            state=state,
            lifecycle=self._lifecycle_label,
            backend=str(values['model.backend']),
            device=str(values['model.device']),
            precision=str(values['model.precision']),
            checkpoint=str(values['model.checkpoint']),
            model=model,
            load_time_s=load_time_s,
            error=error,
        )


def _policy_name(kind: object) -> str:
    if kind is None:
        return 'unknown policy'
    try:
        from rclpy.qos import qos_policy_name_from_kind

        return qos_policy_name_from_kind(kind)  # type: ignore[arg-type]
    except (ImportError, ValueError):
        return str(kind)
