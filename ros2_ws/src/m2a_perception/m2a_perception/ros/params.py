"""Node parameters: one table of specs, declared with descriptors, converted in one function.

Every parameter has a description and a range or a list of choices. Parameters that shape the
engine or the ROS graph (model, device, precision, cameras, input QoS) can change only while the
node is unconfigured; the rest (thresholds, visualisation, limits, budgets) change at runtime and
are validated before they are accepted. `settings_from_parameters` is the single place where
parameter values become the frozen settings the node and the core use; it is pure, so the
validation is tested without ROS.

Allowed dependencies: rclpy, rcl_interfaces, m2a_perception core (postprocess config),
`m2a_perception.ros.conversions`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    ParameterType,
    SetParametersResult,
)
from rclpy.node import Node
from rclpy.parameter import Parameter

from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.postprocess.config import (
    LABEL_UPSAMPLING,
    MINING_SPLITS,
    OUTPUT_RESOLUTIONS,
    REFINEMENT_MODES,
    UNIT_RANGE_SCORERS,
    PostprocessConfig,
)
from m2a_perception.ros.conversions import ImageLimits
from m2a_perception.runtime.loader import (
    ENGINE_POLICIES,
    KINDS,
    LOAD_ONLY,
    BackendError,
    BackendSpec,
    parse_engine_size,
)
from m2a_perception.visualize import COLORMAPS

ParameterValue = bool | int | float | str | tuple[str, ...]

BACKENDS = KINDS
RELIABILITIES = ('best_effort', 'reliable')
TRANSPORTS = ('raw', 'compressed')
CAMERAS_PARAMETER = 'cameras.names'

_CAMERA_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
_DEVICE = re.compile(r'^(cpu|cuda(:\d+)?)$')


@dataclass(frozen=True)
class ParameterSpec:
    """Declaration of one parameter.

    Attributes:
        name: dotted parameter name.
        default: value when neither the YAML nor the command line sets it; its Python type
            fixes the ROS type (bool, int, float, str, tuple of str).
        description: shown by `ros2 param describe`.
        minimum: inclusive lower bound for numbers.
        maximum: inclusive upper bound for numbers.
        choices: allowed strings; empty allows any string that passes `check`.
        engine: shapes the engine or the graph; changeable only while unconfigured.
        read_only: fixed once the node has started.
    """

    name: str
    default: ParameterValue
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    engine: bool = False
    read_only: bool = False

    def __post_init__(self) -> None:
        numeric = isinstance(self.default, (int, float)) and not isinstance(self.default, bool)
        if numeric != (self.minimum is not None and self.maximum is not None):
            raise ValueError(f'{self.name}: numbers need a range and only numbers have one')
        validate_value(self, self.default)

    @property
    def ros_type(self) -> int:
        return _ros_type(self.default)


def _ros_type(value: ParameterValue) -> int:
    if isinstance(value, bool):
        return ParameterType.PARAMETER_BOOL
    if isinstance(value, int):
        return ParameterType.PARAMETER_INTEGER
    if isinstance(value, float):
        return ParameterType.PARAMETER_DOUBLE
    if isinstance(value, str):
        return ParameterType.PARAMETER_STRING
    return ParameterType.PARAMETER_STRING_ARRAY


def validate_value(spec: ParameterSpec, value: Any) -> None:
    """Check one value against its spec.

    Raises:
        ValueError: with a message naming the parameter, the value and what is allowed.
    """
    _check_type(spec, value)
    bounded = spec.minimum is not None and spec.maximum is not None
    if bounded and not (math.isfinite(value) and spec.minimum <= value <= spec.maximum):
        raise ValueError(f'{spec.name} must be in [{spec.minimum}, {spec.maximum}], got {value}')
    if spec.choices and value not in spec.choices:
        raise ValueError(f'{spec.name} must be one of {spec.choices}, got {value!r}')
    if spec.name == CAMERAS_PARAMETER:
        _check_camera_names(value)
    if spec.name == 'model.device' and not _DEVICE.match(value):
        raise ValueError(f'model.device must be cpu, cuda or cuda:<index>, got {value!r}')


def _check_type(spec: ParameterSpec, value: Any) -> None:
    default = spec.default
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    if not ok:
        raise ValueError(
            f'{spec.name} must be of type {type(default).__name__}, got {value!r} '
            f'({type(value).__name__})'
        )


def _check_camera_names(names: Sequence[str]) -> None:
    if not names:
        raise ValueError(f'{CAMERAS_PARAMETER} must list at least one camera')
    for name in names:
        if not _CAMERA_NAME.match(name) or name == 'names':
            raise ValueError(
                f'camera name {name!r} is invalid: use a letter then letters, digits or '
                "underscores (and not 'names')"
            )
    if len(set(names)) != len(names):
        raise ValueError(f'{CAMERAS_PARAMETER} has duplicates: {list(names)}')


def _spec(name: str, default: ParameterValue, description: str, **kwargs: Any) -> ParameterSpec:
    return ParameterSpec(name, default, description, **kwargs)


NODE_PARAMETERS: tuple[ParameterSpec, ...] = (
    _spec(
        CAMERAS_PARAMETER,
        ('front',),
        'Camera names. Each camera subscribes to <name>/image (or <name>/image/compressed) '
        'and publishes its outputs under <name>/.',
        engine=True,
    ),
    _spec(
        'model.checkpoint',
        '',
        'Path of the m2a safetensors checkpoint (weights and model config). Empty or invalid '
        'keeps the node unconfigured; it never runs random weights.',
        engine=True,
    ),
    _spec(
        'model.backend',
        'torch',
        'Inference backend: torch (eager), torch-compile (inductor), or an engine file from '
        'm2a-build-engine: onnxruntime (.onnx), tensorrt (.ep), tensorrt-onnx (.plan).',
        choices=BACKENDS,
        engine=True,
    ),
    _spec(
        'model.engine_path',
        '',
        'Engine file of the onnxruntime / tensorrt / tensorrt-onnx backends, opened only if its '
        'sidecar (<file>.json) matches the checkpoint, precision, size, tool versions and GPU.',
        engine=True,
    ),
    _spec(
        'model.engine_policy',
        LOAD_ONLY,
        'load_only: a missing or mismatching engine fails configure; build_if_missing: build, '
        'gate and save it in the background (diagnostics report building).',
        choices=ENGINE_POLICIES,
        engine=True,
    ),
    _spec(
        'model.engine_size',
        '',
        'Padded engine input HxW (e.g. 512x1024): the size a built engine gets and an existing '
        'one must have; empty takes the sidecar size, or short_side x 2*short_side to build.',
        engine=True,
    ),
    _spec(
        'model.allow_gate_failed',
        False,
        'Use an engine whose accuracy gate against eager FP32 failed (explicit override).',
        engine=True,
    ),
    _spec('model.device', 'cpu', 'Torch device: cpu, cuda or cuda:<index>.', engine=True),
    _spec(
        'model.precision',
        'fp32',
        'Inference precision; fp16/bf16 (autocast, or the TensorRT precision recipe) need CUDA.',
        choices=PRECISIONS,
        engine=True,
    ),
    _spec(
        'model.warmup_iterations',
        1,
        'Dummy inferences run during configure so the first real frame is not slow.',
        minimum=0,
        maximum=100,
        engine=True,
    ),
    _spec(
        'input.reliability',
        'best_effort',
        'Reliability of the image subscriptions. best_effort (sensor-data profile) connects to '
        'both reliable and best-effort cameras.',
        choices=RELIABILITIES,
        engine=True,
    ),
    _spec(
        'input.depth',
        1,
        'History depth of the image subscriptions; the node keeps only the newest frame anyway.',
        minimum=1,
        maximum=100,
        engine=True,
    ),
    _spec(
        'input.max_width',
        4096,
        'Frames wider than this are rejected (protects against huge frames).',
        minimum=1,
        maximum=65535,
    ),
    _spec(
        'input.max_height',
        4096,
        'Frames taller than this are rejected (protects against huge frames).',
        minimum=1,
        maximum=65535,
    ),
    _spec(
        'max_input_age_ms',
        500.0,
        'A frame that waited longer than this in its latest-frame slot is dropped as stale '
        '(0 disables the check).',
        minimum=0.0,
        maximum=60000.0,
    ),
    _spec(
        'output_resolution',
        'model',
        'Resolution of the output maps: model (the resized network input without padding; the '
        'default, since a 1024x2048 frame gives 31 MB of outputs at source resolution, more '
        'than rclpy publishes in 10 ms) or source (the camera image size).',
        choices=OUTPUT_RESOLUTIONS,
    ),
    _spec(
        'anomaly.scorer',
        'mask2anomaly',
        'Per-pixel anomaly score; all choices lie in about [0, 1].',
        choices=UNIT_RANGE_SCORERS,
    ),
    _spec(
        'anomaly.threshold',
        0.5,
        'Pixels scoring at or above this are anomalous: anomaly/mask is 255 there and '
        'panoptic/semantic carries the unknown id.',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec(
        'anomaly.refinement',
        'code',
        'Mask2Anomaly refinement of the anomaly map (see PostprocessConfig).',
        choices=REFINEMENT_MODES,
    ),
    _spec(
        'anomaly.flip',
        False,
        'Average with a horizontally flipped pass (doubles the model cost).',
    ),
    _spec(
        'semantic.label_upsampling',
        'nearest',
        'nearest decides labels at mask resolution; bilinear upsamples scores first (costlier).',
        choices=LABEL_UPSAMPLING,
    ),
    _spec(
        'panoptic.object_mask_threshold',
        0.8,
        'Keep queries whose best known-class probability is above this.',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec(
        'panoptic.overlap_threshold',
        0.8,
        'Drop a query if less than this fraction of its mask survives the pixel argmax.',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec(
        'panoptic.mask_threshold',
        0.5,
        'Binarisation threshold of query masks (sigmoid).',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec('panoptic.mining', True, 'Mine unknown-thing instances from anomalous regions.'),
    _spec(
        'panoptic.mining_threshold',
        0.5,
        'Pixels whose mining map value is at or above this become unknown-instance candidates.',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec(
        'panoptic.mining_min_area',
        16,
        'Smallest unknown instance, in pixels at mask resolution.',
        minimum=1,
        maximum=1_000_000,
    ),
    _spec(
        'panoptic.mining_max_instances',
        0,
        'Keep at most this many unknown instances, largest first (0 keeps all).',
        minimum=0,
        maximum=1000,
    ),
    _spec(
        'panoptic.mining_split',
        'components',
        'How a mined unknown region becomes instances: components (paper: one per connected '
        'component), query_regions (split by the winning query), centroid_head (split by the '
        "model's class-agnostic centroid head; the checkpoint must have instance_head). "
        'Checked against the model at configure, so it changes only while unconfigured.',
        choices=MINING_SPLITS,
        engine=True,
    ),
    _spec(
        'viz.overlay_rate_hz',
        2.0,
        'Maximum publishing rate of the overlay image per camera (0 publishes every frame).',
        minimum=0.0,
        maximum=100.0,
    ),
    _spec(
        'viz.alpha',
        0.5,
        'Opacity of the class colours in the overlay.',
        minimum=0.0,
        maximum=1.0,
    ),
    _spec('viz.colormap', 'inferno', 'Colour map of anomaly/heatmap.', choices=COLORMAPS),
    _spec(
        'viz.score_min',
        0.0,
        'Anomaly score drawn with the first heatmap colour.',
        minimum=-10.0,
        maximum=10.0,
    ),
    _spec(
        'viz.score_max',
        1.0,
        'Anomaly score drawn with the last heatmap colour (must exceed viz.score_min).',
        minimum=-10.0,
        maximum=10.0,
    ),
    _spec(
        'diagnostics.period_s',
        1.0,
        'Period of the /diagnostics report (timer-driven, so it reports without frames).',
        minimum=0.1,
        maximum=60.0,
        read_only=True,
    ),
    _spec(
        'diagnostics.max_processing_time_ms',
        250.0,
        'Processing-time budget per frame; WARN when a frame exceeds it.',
        minimum=1.0,
        maximum=60000.0,
    ),
    _spec(
        'diagnostics.expected_input_hz',
        0.0,
        'Expected camera rate; WARN below half of it (0 disables the check).',
        minimum=0.0,
        maximum=1000.0,
    ),
    _spec(
        'diagnostics.max_stamp_age_ms',
        1000.0,
        'WARN when the newest frame stamp is older than this (0 disables the check).',
        minimum=0.0,
        maximum=3_600_000.0,
    ),
    _spec(
        'autostart',
        True,
        'Configure and activate at start-up, for use without a lifecycle manager.',
        read_only=True,
    ),
)


def camera_parameters(camera: str) -> tuple[ParameterSpec, ...]:
    """Specs of the per-camera parameters `cameras.<camera>.*`."""
    prefix = f'cameras.{camera}'
    return (
        _spec(
            f'{prefix}.transport',
            'raw',
            f'Input of camera {camera}: raw (sensor_msgs/Image) or compressed '
            '(sensor_msgs/CompressedImage, jpeg or png).',
            choices=TRANSPORTS,
            engine=True,
        ),
        _spec(
            f'{prefix}.topic',
            '',
            f'Input topic of camera {camera}; empty uses {camera}/image, or '
            f'{camera}/image/compressed for the compressed transport.',
            engine=True,
        ),
    )


def all_specs(cameras: Sequence[str]) -> dict[str, ParameterSpec]:
    """Every parameter spec for the given cameras, by name."""
    specs = {spec.name: spec for spec in NODE_PARAMETERS}
    for camera in cameras:
        specs.update({spec.name: spec for spec in camera_parameters(camera)})
    return specs


def descriptor_for(spec: ParameterSpec) -> ParameterDescriptor:
    """The ROS descriptor of a spec: type, description, range, choices and mutability."""
    constraints = []
    if spec.choices:
        constraints.append(f'one of: {", ".join(spec.choices)}')
    if spec.engine:
        constraints.append('changeable only while unconfigured (cleanup first)')
    descriptor = ParameterDescriptor(
        name=spec.name,
        type=spec.ros_type,
        description=spec.description,
        additional_constraints='; '.join(constraints),
        read_only=spec.read_only,
    )
    if isinstance(spec.default, float):
        # YAML `500` and `ros2 param set ... 1` are integers: statically typed doubles would
        # refuse them (InvalidParameterTypeException at start). Dynamic typing lets them through
        # to `validate_value`, which accepts int or float and still refuses any other type;
        # `values` turns them into floats (supported since Humble).
        descriptor.dynamic_typing = True
        descriptor.floating_point_range = [
            FloatingPointRange(
                from_value=float(spec.minimum), to_value=float(spec.maximum), step=0.0
            )
        ]
    elif isinstance(spec.default, int) and not isinstance(spec.default, bool):
        descriptor.integer_range = [
            IntegerRange(from_value=int(spec.minimum), to_value=int(spec.maximum), step=1)
        ]
    return descriptor


@dataclass(frozen=True)
class CameraSettings:
    """One camera.

    Attributes:
        name: camera name (prefix of its output topics).
        transport: 'raw' or 'compressed'.
        topic: input topic, relative to the node namespace unless absolute.
    """

    name: str
    transport: str
    topic: str


@dataclass(frozen=True)
class EngineSettings:
    """What `configure` builds the model from; fixed while configured."""

    checkpoint: str
    backend: str
    engine_path: str
    device: str
    precision: str
    warmup_iterations: int
    engine_policy: str = LOAD_ONLY
    engine_size: str = ''
    allow_gate_failed: bool = False

    def spec(self) -> BackendSpec:
        """The loader's spec of these settings."""
        return BackendSpec(
            kind=self.backend,
            checkpoint=self.checkpoint,
            engine_path=self.engine_path,
            device=self.device,
            precision=self.precision,
            engine_policy=self.engine_policy,
            allow_gate_failed=self.allow_gate_failed,
            engine_size=parse_engine_size(self.engine_size) if self.engine_size else None,
        )


@dataclass(frozen=True)
class InputSettings:
    """Subscription QoS and frame admission."""

    reliability: str
    depth: int
    limits: ImageLimits
    max_input_age_s: float


@dataclass(frozen=True)
class VizSettings:
    """Heatmap and overlay rendering."""

    overlay_rate_hz: float
    alpha: float
    colormap: str
    score_min: float
    score_max: float


@dataclass(frozen=True)
class DiagnosticsSettings:
    """Diagnostics period and thresholds (0 disables a rate or age check)."""

    period_s: float
    max_processing_time_ms: float
    expected_input_hz: float
    max_stamp_age_ms: float


@dataclass(frozen=True)
class NodeSettings:
    """Everything the node needs, validated.

    Attributes:
        anomaly_threshold: threshold of anomaly/mask; also `postprocess.anomaly_threshold`.
    """

    cameras: tuple[CameraSettings, ...]
    engine: EngineSettings
    input: InputSettings
    postprocess: PostprocessConfig
    anomaly_threshold: float
    viz: VizSettings
    diagnostics: DiagnosticsSettings
    autostart: bool


def default_values(cameras: Sequence[str] | None = None) -> dict[str, ParameterValue]:
    """Defaults of every parameter (per-camera ones for `cameras`, default the default list)."""
    names = cameras if cameras is not None else NODE_PARAMETERS[0].default
    return {name: spec.default for name, spec in all_specs(list(names)).items()}


def settings_from_parameters(values: Mapping[str, Any]) -> NodeSettings:
    """Validate parameter values and build the node settings.

    Args:
        values: parameter name -> value; missing parameters take their defaults and unknown
            names are ignored (ROS passes its own, e.g. use_sim_time).

    Raises:
        ValueError: naming the first invalid parameter or combination.
    """
    names = values.get(CAMERAS_PARAMETER, NODE_PARAMETERS[0].default)
    validate_value(NODE_PARAMETERS[0], names)
    names = tuple(names)
    specs = all_specs(names)
    merged: dict[str, Any] = {}
    for name, spec in specs.items():
        value = values.get(name, spec.default)
        validate_value(spec, value)
        merged[name] = value
    viz = VizSettings(
        overlay_rate_hz=float(merged['viz.overlay_rate_hz']),
        alpha=float(merged['viz.alpha']),
        colormap=merged['viz.colormap'],
        score_min=float(merged['viz.score_min']),
        score_max=float(merged['viz.score_max']),
    )
    if not viz.score_max > viz.score_min:
        raise ValueError(
            f'viz.score_max ({viz.score_max}) must exceed viz.score_min ({viz.score_min})'
        )
    engine = EngineSettings(
        checkpoint=merged['model.checkpoint'],
        backend=merged['model.backend'],
        engine_path=merged['model.engine_path'],
        device=merged['model.device'],
        precision=merged['model.precision'],
        warmup_iterations=int(merged['model.warmup_iterations']),
        engine_policy=merged['model.engine_policy'],
        engine_size=merged['model.engine_size'],
        allow_gate_failed=bool(merged['model.allow_gate_failed']),
    )
    if engine.precision != 'fp32' and engine.device == 'cpu':
        raise ValueError(
            f'model.precision {engine.precision} needs a CUDA model.device; use fp32 on cpu'
        )
    if engine.engine_size:
        try:
            parse_engine_size(engine.engine_size)
        except BackendError as error:
            raise ValueError(str(error)) from error
    max_instances = int(merged['panoptic.mining_max_instances'])
    postprocess = PostprocessConfig(
        scorer=merged['anomaly.scorer'],
        refinement=merged['anomaly.refinement'],
        flip=bool(merged['anomaly.flip']),
        anomaly_threshold=float(merged['anomaly.threshold']),
        label_upsampling=merged['semantic.label_upsampling'],
        output_resolution=merged['output_resolution'],
        object_mask_threshold=float(merged['panoptic.object_mask_threshold']),
        overlap_threshold=float(merged['panoptic.overlap_threshold']),
        mask_threshold=float(merged['panoptic.mask_threshold']),
        mining=bool(merged['panoptic.mining']),
        mining_threshold=float(merged['panoptic.mining_threshold']),
        mining_min_area=int(merged['panoptic.mining_min_area']),
        mining_max_instances=max_instances or None,
        mining_split=merged['panoptic.mining_split'],
    )
    return NodeSettings(
        cameras=tuple(_camera_settings(name, merged) for name in names),
        engine=engine,
        input=InputSettings(
            reliability=merged['input.reliability'],
            depth=int(merged['input.depth']),
            limits=ImageLimits(int(merged['input.max_width']), int(merged['input.max_height'])),
            max_input_age_s=float(merged['max_input_age_ms']) / 1000.0,
        ),
        postprocess=postprocess,
        anomaly_threshold=float(merged['anomaly.threshold']),
        viz=viz,
        diagnostics=DiagnosticsSettings(
            period_s=float(merged['diagnostics.period_s']),
            max_processing_time_ms=float(merged['diagnostics.max_processing_time_ms']),
            expected_input_hz=float(merged['diagnostics.expected_input_hz']),
            max_stamp_age_ms=float(merged['diagnostics.max_stamp_age_ms']),
        ),
        autostart=bool(merged['autostart']),
    )


def _names_valid(names: Sequence[str]) -> bool:
    try:
        _check_camera_names(names)
    except ValueError:
        return False
    return True


def _as_declared(spec: ParameterSpec, value: Any) -> Any:
    """An integer given for a double parameter, as a float (see `descriptor_for`)."""
    if isinstance(spec.default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _camera_settings(name: str, values: Mapping[str, Any]) -> CameraSettings:
    transport = values[f'cameras.{name}.transport']
    topic = values[f'cameras.{name}.topic']
    if not topic:
        topic = f'{name}/image' if transport == 'raw' else f'{name}/image/compressed'
    return CameraSettings(name=name, transport=transport, topic=topic)


class ParameterManager:
    """Declares the node's parameters and guards runtime changes.

    Args:
        node: the node to declare on.
        is_configured: True while engine-shaping parameters must not change.
        on_change: called with the new settings after a runtime change was accepted.
    """

    def __init__(
        self,
        node: Node,
        is_configured: Callable[[], bool],
        on_change: Callable[[NodeSettings], None],
    ) -> None:
        self._node = node
        self._is_configured = is_configured
        self._on_change = on_change
        self._specs: dict[str, ParameterSpec] = {}
        self._declare(NODE_PARAMETERS)
        self.declare_cameras()
        node.add_on_set_parameters_callback(self._on_set_parameters)

    def declare_cameras(self) -> None:
        """Declare `cameras.<name>.*` for cameras listed now (the list may change before
        configure); already declared parameters are kept."""
        names = self._node.get_parameter(CAMERAS_PARAMETER).value
        if _names_valid(names):
            for name in names:
                self._declare(camera_parameters(name))

    def values(self) -> dict[str, Any]:
        """Current values of every declared spec parameter."""
        return {
            name: _as_declared(spec, self._node.get_parameter(name).value)
            for name, spec in self._specs.items()
        }

    def settings(self) -> NodeSettings:
        """Validated settings from the current values.

        Raises:
            ValueError: naming the invalid parameter.
        """
        return settings_from_parameters(self.values())

    def _declare(self, specs: Sequence[ParameterSpec]) -> None:
        for spec in specs:
            if spec.name in self._specs:
                continue
            default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
            self._node.declare_parameter(spec.name, default, descriptor_for(spec))
            self._specs[spec.name] = spec

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {
            p.name: _as_declared(self._specs[p.name], p.value)
            for p in parameters
            if p.name in self._specs
        }
        # Declarations of new per-camera parameters pass through here too.
        new_names = {p.name for p in parameters} - set(self._specs)
        if self._is_configured():
            locked = sorted(n for n in changes if self._specs[n].engine)
            if locked:
                return SetParametersResult(
                    successful=False,
                    reason=f'{", ".join(locked)} shape(s) the engine and can change only while '
                    'the node is unconfigured; run the cleanup transition first',
                )
        merged = self.values()
        merged.update(changes)
        merged.update({p.name: p.value for p in parameters if p.name in new_names})
        try:
            settings = settings_from_parameters(merged)
        except ValueError as error:
            return SetParametersResult(successful=False, reason=str(error))
        if changes:
            self._on_change(settings)
        return SetParametersResult(successful=True)
