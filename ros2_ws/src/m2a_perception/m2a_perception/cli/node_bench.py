"""m2a-node-bench: the perception node's own per-frame overhead, separate from the model.

Processes:
    node   the real node (`python -m m2a_perception.cli.perception_node` with the shipped
           parameter file) in a child process, serving one camera;
    bench  this process: the camera (one HxW frame, published again with a fresh stamp for
           every measured frame) and a sink subscribed to every output of that camera. The sink
           takes serialized messages (raw subscriptions), so the bench spends little CPU next to
           the node, and the node still fills, serializes and sends every output.

Frames are sent closed-loop: the next frame leaves when every output of the previous one has
arrived (and not faster than --fps), so no frame waits in the node's slot and the stage times
are the node's own. They come from the node's `InferenceStats`, measured in its worker thread:

    convert      input message -> RGB array                         (node)
    preprocess   resize, normalise, pad                              (model core)
    model        backend call                                        (model core)
    postprocess  open-set post-processing                            (model core)
    handoff      result maps to the host                             (node)
    publish      filling and publishing every output                 (node)

plus `receive`: the executor thread's take of the input message (deserialisation into a Python
message), which happens before the node's callback and is timed here on the same message with
`rclpy.serialization.deserialize_message` (the same conversion). The node's overhead is
receive + convert + handoff + publish. For each output resolution the bench also reports the
bytes published per frame and two floors of publishing them, measured on the messages the sink
received:

    serialize floor  `rclpy.serialization.serialize_message` of one frame's outputs (Python ->
                     C message -> CDR, what `publish` does before the middleware writes);
    publish floor    `publish()` of the same messages from this process to a subscriber in a
                     third process, with no computation: what rclpy and Fast DDS alone need for
                     those bytes, so bytes / floor is the measured publishing throughput.

Without --checkpoint the node loads a tiny model with random weights written to a temporary
folder: right for timing the node, meaningless as outputs.

Example:
    m2a-node-bench --size 1024x2048 --resolution model,source --frames 40 --json bench.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from m2a_perception.cli import args as cli_args
from m2a_perception.ros.processes import (
    ManagedProcess,
    large_frames_defaults,
    perception_node_command,
)
from m2a_perception.ros.topics import OUTPUT_MESSAGE_TYPES, OUTPUT_TOPICS

NAMESPACE = '/m2a_bench'
CAMERA = 'cam'
NODE_NAME = f'{NAMESPACE}/m2a_perception'
# Output topic (under the camera) -> message type name, as the node publishes them; the stats
# topic is not an output the benchmark measures.
OUTPUT_TYPES = {
    topic: OUTPUT_MESSAGE_TYPES[key].rpartition('/')[2]
    for key, topic in OUTPUT_TOPICS.items()
    if key != 'stats'
}
STAGES = ('convert', 'preprocess', 'model', 'postprocess', 'handoff', 'publish')
NODE_STAGES = ('convert', 'handoff', 'publish')
ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'jpeg')
TARGET_MS = 10.0
FRAME_TIMEOUT_S = 30.0
MAX_LOST_IN_A_ROW = 3
RESEND_S = 5.0
PROBE_SINK_ATTEMPTS = 3
PROBE_MATCH_TIMEOUT_S = 45.0
STARTUP_TIMEOUT_S = 240.0


@dataclass
class RunResult:
    """Measurements of one output resolution."""

    resolution: str
    output_size: tuple[int, int] = (0, 0)
    stages: dict[str, list[float]] = field(default_factory=dict)
    end_to_end_ms: list[float] = field(default_factory=list)
    bytes_per_frame: dict[str, int] = field(default_factory=dict)
    serialize_ms: dict[str, float] = field(default_factory=dict)
    publish_floor_ms: dict[str, float] = field(default_factory=dict)
    last_raw: dict[str, bytes] = field(default_factory=dict, repr=False)
    frames_sent: int = 0
    frames_complete: int = 0

    @property
    def overhead_ms(self) -> list[float]:
        """Per frame: convert + handoff + publish (receive is added when reporting)."""
        return [sum(values) for values in zip(*(self.stages[s] for s in NODE_STAGES), strict=True)]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]); NaN for no values."""
    if not values:
        return float('nan')
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-node-bench', __doc__)
    cli_args.add_checkpoint(parser, help='m2a checkpoint (default: tiny, random)')
    cli_args.add_params(
        parser,
        params_file_help='node YAML (default: the shipped one)',
        param_help='extra node parameter (repeatable)',
    )
    cli_args.add_size(parser, default=(1024, 2048), help='camera frame HxW (default 1024x2048)')
    parser.add_argument('--encoding', default='rgb8', choices=ENCODINGS)
    parser.add_argument(
        '--resolution',
        default='model,source',
        help='output resolutions to measure, comma-separated: model, source',
    )
    parser.add_argument('--frames', type=int, default=40, help='measured frames per resolution')
    parser.add_argument('--warmup', type=int, default=5, help='unmeasured frames per resolution')
    cli_args.add_fps(
        parser,
        default=5.0,
        help='maximum frame rate (default %(default)s)',
        deprecated=('--rate',),
    )
    parser.add_argument(
        '--overlay-rate',
        type=float,
        default=0.0,
        help='viz.overlay_rate_hz of the node (0: an overlay for every frame, the worst case)',
    )
    parser.add_argument(
        '--repeats',
        type=int,
        default=15,
        help='repetitions of the standalone timings (receive, serialize and publish floors)',
    )
    cli_args.add_json(parser, help='write all figures as JSON here')
    parser.add_argument('--node-log', type=Path, help='node output (default: a temporary file)')
    parser.add_argument('--probe-sink', type=float, default=0.0, help=argparse.SUPPRESS)
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.resolutions = [r.strip() for r in args.resolution.split(',') if r.strip()]
    if not args.resolutions or set(args.resolutions) - {'model', 'source'}:
        parser.error(f'--resolution takes model and/or source, got {args.resolution!r}')
    if args.frames < 1 or args.warmup < 0 or args.repeats < 1:
        parser.error('--frames >= 1, --warmup >= 0 and --repeats >= 1 are required')
    return args


def default_params_file() -> Path:
    """The installed config/m2a_perception.yaml, else the repository's."""
    with contextlib.suppress(Exception):
        from ament_index_python.packages import get_package_share_directory

        path = Path(get_package_share_directory('m2a_perception')) / 'config'
        if (path / 'm2a_perception.yaml').is_file():
            return path / 'm2a_perception.yaml'
    return Path(__file__).resolve().parents[5] / 'config' / 'm2a_perception.yaml'


def write_tiny_checkpoint(folder: Path) -> Path:
    """A tiny-config checkpoint with random weights (timing only), as the node accepts it."""
    import torch

    from m2a_perception.config import load_model_config
    from m2a_perception.model import build_model
    from m2a_perception.weights import save_checkpoint

    torch.manual_seed(0)
    config = load_model_config('tiny')
    return save_checkpoint(
        folder / 'tiny_random.safetensors',
        build_model(config).state_dict(),
        config,
        extra_metadata={'note': 'random weights written by m2a-node-bench, for timing only'},
    )


def synthetic_frame(height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB: smooth gradients and a few blocks, so JPEG sizes are realistic."""
    rows = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.stack([rows + 0 * cols, cols + 0 * rows, (rows + cols) / 2], axis=-1).astype(np.uint8)
    size = max(2, min(height, width) // 6)
    for i, colour in enumerate(((250, 20, 230), (20, 200, 40), (240, 240, 240))):
        top, left = (i + 1) * height // 5, (2 * i + 1) * width // 7
        rgb[top : top + size, left : left + size] = colour
    return rgb


def input_message(rgb: np.ndarray, encoding: str) -> Any:
    """The camera's message (sensor_msgs Image or CompressedImage) for the given encoding."""
    from m2a_perception.ros.conversions import array_to_image_msg, rgb_to_compressed_msg

    if encoding == 'jpeg':
        return rgb_to_compressed_msg(rgb, 'jpeg')
    if encoding == 'rgb8':
        return array_to_image_msg(rgb, 'rgb8')
    if encoding == 'bgr8':
        return array_to_image_msg(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8')
    if encoding == 'mono8':
        return array_to_image_msg(np.ascontiguousarray(rgb[..., 1]), 'mono8')
    # rgba8 / bgra8: ImageMessageBuffer writes only output encodings, so build it directly.
    import array

    from sensor_msgs.msg import Image

    channels = rgb if encoding == 'rgba8' else rgb[..., ::-1]
    alpha = np.full((*rgb.shape[:2], 1), 255, np.uint8)
    pixels = np.ascontiguousarray(np.concatenate([channels, alpha], axis=-1))
    msg = Image(encoding=encoding, height=rgb.shape[0], width=rgb.shape[1])
    msg.step = rgb.shape[1] * 4
    msg.data = array.array('B', pixels.tobytes())
    return msg


def cdr_stamp(raw: bytes) -> tuple[int, int]:
    """(sec, nanosec) of a serialized message that starts with a std_msgs/Header."""
    order = '<' if raw[1] & 1 else '>'  # encapsulation id: CDR_LE = 0x0001, CDR_BE = 0x0000
    sec, nanosec = struct.unpack_from(f'{order}iI', raw, 4)
    return sec, nanosec


def time_call(function: Callable[[], object], repeats: int) -> list[float]:
    """Wall time of `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1e3)
    return times


class Bench:
    """Camera publisher, output sink and parameter client in one rclpy node of this process."""

    def __init__(self, camera_msg: Any) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage, Image

        from m2a_perception_msgs.msg import InferenceStats, OpenSetPanoptic

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('m2a_node_bench', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.camera_msg = camera_msg
        reliable = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
        )
        suffix = 'image/compressed' if isinstance(camera_msg, CompressedImage) else 'image'
        self.camera = self.node.create_publisher(
            type(camera_msg), f'{NAMESPACE}/{CAMERA}/{suffix}', reliable
        )
        types = {'Image': Image, 'OpenSetPanoptic': OpenSetPanoptic}
        self.types = {topic: types[name] for topic, name in OUTPUT_TYPES.items()}
        # topic -> stamp -> serialized size; topic -> last serialized message.
        self.sizes: dict[str, dict[tuple[int, int], int]] = {t: {} for t in OUTPUT_TYPES}
        self.last_raw: dict[str, bytes] = {}
        for topic in OUTPUT_TYPES:
            self.node.create_subscription(
                self.types[topic],
                f'{NAMESPACE}/{CAMERA}/{topic}',
                lambda raw, t=topic: self._on_output(t, raw),
                reliable,
                raw=True,
            )
        self.stats: dict[tuple[int, int], Any] = {}
        self.node.create_subscription(
            InferenceStats, f'{NAMESPACE}/{CAMERA}/stats', self._on_stats, reliable
        )

    def close(self) -> None:
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def _on_output(self, topic: str, raw: bytes) -> None:
        self.sizes[topic][cdr_stamp(raw)] = len(raw)
        self.last_raw[topic] = raw

    def _on_stats(self, msg: Any) -> None:
        self.stats[(msg.header.stamp.sec, msg.header.stamp.nanosec)] = msg

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if predicate():
                return True
            self.executor.spin_once(timeout_sec=0.01)
        return predicate()

    def complete(self, stamp: tuple[int, int]) -> bool:
        """Stats and every output of the frame with this stamp have arrived."""
        return stamp in self.stats and all(stamp in s for s in self.sizes.values())

    def send(self) -> tuple[int, int]:
        """Publish the camera frame with the current time as its stamp."""
        stamp = self.node.get_clock().now().to_msg()
        self.camera_msg.header.stamp = stamp
        self.camera_msg.header.frame_id = 'bench_camera'
        self.camera.publish(self.camera_msg)
        return stamp.sec, stamp.nanosec

    def set_parameter(self, name: str, value: Any) -> None:
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        client = self.node.create_client(SetParameters, f'{NODE_NAME}/set_parameters')
        try:
            if not self.spin_until(client.service_is_ready, 30.0):
                raise RuntimeError(f'{NODE_NAME}/set_parameters is not available')
            request = SetParameters.Request()
            request.parameters = [Parameter(name, value=value).to_parameter_msg()]
            future = client.call_async(request)
            if not self.spin_until(future.done, 30.0):
                raise RuntimeError(f'no answer to setting {name}')
            result = future.result().results[0]
            if not result.successful:
                raise RuntimeError(f'the node refused {name}={value!r}: {result.reason}')
        finally:
            self.node.destroy_client(client)


def run_frames(bench: Bench, count: int, period_s: float) -> list[tuple[int, int]]:
    """Send `count` frames closed-loop; returns the stamps of the frames that came back whole.

    Raises:
        RuntimeError: if several frames in a row do not come back.
    """
    done = []
    lost_in_a_row = 0
    for _ in range(count):
        started = time.monotonic()
        stamp = bench.send()
        if bench.spin_until(lambda s=stamp: bench.complete(s), FRAME_TIMEOUT_S):
            done.append(stamp)
            lost_in_a_row = 0
        else:
            lost_in_a_row += 1
            if lost_in_a_row >= MAX_LOST_IN_A_ROW:
                missing = [t for t, sizes in bench.sizes.items() if stamp not in sizes]
                raise RuntimeError(
                    f'{lost_in_a_row} frames in a row did not come back whole within '
                    f'{FRAME_TIMEOUT_S:g} s (missing outputs: {missing or "stats"})'
                )
        rest = period_s - (time.monotonic() - started)
        if rest > 0:
            bench.spin_until(lambda: False, rest)
    return done


def measure_resolution(
    bench: Bench, resolution: str, args: argparse.Namespace, log: Callable[[str], None]
) -> RunResult:
    bench.set_parameter('output_resolution', resolution)
    period = 1.0 / args.fps
    # Warm-up: until the node has seen every subscription and produced every output once. A
    # frame it gets before it sees our subscriptions is skipped, so frames are resent.
    sent: list[tuple[int, int]] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not any(bench.complete(stamp) for stamp in sent):
        if time.monotonic() > deadline:
            missing = [t for t, sizes in bench.sizes.items() if not set(sent) & set(sizes)]
            raise RuntimeError(f'no complete frame at {resolution} resolution; missing {missing}')
        sent.append(bench.send())
        bench.spin_until(lambda: any(bench.complete(stamp) for stamp in sent), RESEND_S)
    run_frames(bench, args.warmup, period)
    log(f'  {resolution} resolution: measuring {args.frames} frames ...')
    stamps = run_frames(bench, args.frames, period)
    result = RunResult(resolution=resolution, frames_sent=args.frames)
    result.frames_complete = len(stamps)
    stats = [bench.stats[s] for s in stamps]
    for stage in STAGES:
        result.stages[stage] = [float(getattr(m, f'{stage}_ms')) for m in stats]
    result.end_to_end_ms = [float(m.end_to_end_ms) for m in stats]
    for topic in OUTPUT_TYPES:
        sizes = [bench.sizes[topic][s] for s in stamps]
        result.bytes_per_frame[topic] = int(statistics.median(sizes)) if sizes else 0
    result.serialize_ms = serialization_floor(bench, args.repeats)
    result.last_raw = dict(bench.last_raw)
    segments = bench.last_raw.get('panoptic/segments')
    if segments is not None:
        from rclpy.serialization import deserialize_message

        from m2a_perception_msgs.msg import OpenSetPanoptic

        ids = deserialize_message(segments, OpenSetPanoptic).segment_ids
        result.output_size = (int(ids.height), int(ids.width))
    return result


def serialization_floor(bench: Bench, repeats: int = 15) -> dict[str, float]:
    """Median `serialize_message` time per output topic, on the last message received."""
    from rclpy.serialization import deserialize_message, serialize_message

    floor = {}
    for topic, raw in bench.last_raw.items():
        msg = deserialize_message(raw, bench.types[topic])
        floor[topic] = statistics.median(time_call(lambda m=msg: serialize_message(m), repeats))
    return floor


def receive_cost(camera_msg: Any, repeats: int = 25) -> list[float]:
    """Executor-side take of the input: CDR -> C message -> Python message, in milliseconds."""
    from rclpy.serialization import deserialize_message, serialize_message

    raw = serialize_message(camera_msg)
    return time_call(lambda: deserialize_message(raw, type(camera_msg)), repeats)


def probe_topic(topic: str) -> str:
    return f'{NAMESPACE}/probe/{topic}'


def run_probe_sink(seconds: float) -> int:
    """Child process: raw subscriptions to the probe topics, for `seconds`."""
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from m2a_perception_msgs.msg import OpenSetPanoptic

    rclpy.init()
    node = rclpy.create_node('m2a_node_bench_probe_sink')
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
    )
    types = {'Image': Image, 'OpenSetPanoptic': OpenSetPanoptic}
    for topic, name in OUTPUT_TYPES.items():
        node.create_subscription(types[name], probe_topic(topic), lambda raw: None, qos, raw=True)
    end = time.monotonic() + seconds
    with contextlib.suppress(KeyboardInterrupt, ExternalShutdownException):
        while time.monotonic() < end and rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.try_shutdown()
    return 0


def publish_floor(
    bench: Bench,
    results: list[RunResult],
    repeats: int = 15,
    log: Callable[[str], None] = print,
) -> None:
    """Time `publish` of each output's last received message to a subscriber in another process.

    The same messages the node published, without any computation: what rclpy and the
    middleware alone cost for those bytes. Fills `RunResult.publish_floor_ms`; left empty (and
    said so) if no subscriber process could be matched.
    """
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message

    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE
    )
    publishers = {
        topic: bench.node.create_publisher(bench.types[topic], probe_topic(topic), qos)
        for topic in OUTPUT_TYPES
    }
    sink = None
    try:
        # Now and then Fast DDS leaves a new participant unmatched on this machine; a new
        # subscriber process gets matched from scratch.
        for _ in range(PROBE_SINK_ATTEMPTS):
            sink = start_probe_sink()
            if bench.spin_until(
                lambda: all(p.get_subscription_count() > 0 for p in publishers.values()),
                PROBE_MATCH_TIMEOUT_S,
            ):
                break
            sink.stop(10.0)
            sink = None
        if sink is None:
            log('publish floor not measured: no subscriber process was matched')
            return
        bench.spin_until(lambda: False, 1.0)
        for result in results:
            for topic, raw in result.last_raw.items():
                msg = deserialize_message(raw, bench.types[topic])
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    publishers[topic].publish(msg)
                    times.append((time.perf_counter() - start) * 1e3)
                    bench.spin_until(lambda: False, 0.02)
                result.publish_floor_ms[topic] = statistics.median(times)
    finally:
        for publisher in publishers.values():
            bench.node.destroy_publisher(publisher)
        if sink is not None:
            sink.stop(10.0)


def start_probe_sink() -> ManagedProcess:
    """The output sink in another process (its output goes to this terminal)."""
    command = [sys.executable, '-m', 'm2a_perception.cli.node_bench', '--probe-sink', '600']
    return ManagedProcess('probe-sink', command, None)


def node_command(args: argparse.Namespace, checkpoint: Path, params_file: Path) -> list[str]:
    transport = 'compressed' if args.encoding == 'jpeg' else 'raw'
    height, width = args.size
    params = [
        f'cameras.names:=[{CAMERA}]',
        f'cameras.{CAMERA}.transport:={transport}',
        f'model.checkpoint:={checkpoint}',
        f'viz.overlay_rate_hz:={float(args.overlay_rate)}',
        # Closed-loop frames never go stale; a loaded machine must not turn them into drops.
        'max_input_age_ms:=60000.0',
        f'input.max_width:={max(4096, width)}',
        f'input.max_height:={max(4096, height)}',
        'autostart:=true',
        *args.param,
    ]
    return perception_node_command(namespace=NAMESPACE, params_file=params_file, overrides=params)


def format_report(
    args: argparse.Namespace, results: list[RunResult], receive: list[float], model: str
) -> str:
    height, width = args.size
    lines = [
        f'm2a-node-bench: {height}x{width} {args.encoding} frames from another process -> node '
        f'({model}, cpu) -> all {len(OUTPUT_TYPES) + 1} outputs subscribed in another process',
        f'{args.frames} measured frames per resolution (closed loop, <= {args.fps:g} Hz), '
        f'overlay rate {args.overlay_rate:g} Hz (0 = every frame); times in ms',
        '',
    ]
    header = f'{"stage":<34}' + ''.join(
        f'{r.resolution + " " + "x".join(map(str, r.output_size)):>22}' for r in results
    )
    lines += [header, f'{"":<34}' + ''.join(f'{"p50":>11}{"p90":>11}' for _ in results)]

    def row(label: str, values: Callable[[RunResult], Sequence[float]]) -> None:
        cells = ''.join(
            f'{percentile(values(r), 50):>11.2f}{percentile(values(r), 90):>11.2f}'
            for r in results
        )
        lines.append(f'{label:<34}{cells}')

    labels = {
        'convert': 'convert (node)',
        'preprocess': 'preprocess (model core)',
        'model': 'model (model core)',
        'postprocess': 'postprocess compute (model core)',
        'handoff': 'handoff to host (node)',
        'publish': 'publish all outputs (node)',
    }
    row('receive* (node, executor thread)', lambda r: receive)
    for stage in STAGES:
        row(labels[stage], lambda r, s=stage: r.stages[s])
    lines.append('-' * len(header))
    row('node overhead: convert+handoff+pub', lambda r: r.overhead_ms)
    receive_p50 = percentile(receive, 50)
    row('node overhead incl. receive*', lambda r: [v + receive_p50 for v in r.overhead_ms])
    row('end-to-end (stamp -> stats)', lambda r: r.end_to_end_ms)
    lines.append('')
    lines.append(
        '* receive = deserialize_message of the input frame (the executor take), timed here.'
    )
    lines.append(
        '  serialize floor = serialize_message of the outputs of one frame (Python -> CDR);'
    )
    lines.append(
        '  publish floor = publish() of the same messages to another process, no computation.'
    )
    for r in results:
        total = sum(r.bytes_per_frame.values()) / 1e6
        serialize = sum(r.serialize_ms.values())
        floor = sum(r.publish_floor_ms.values()) if r.publish_floor_ms else float('nan')
        publish = percentile(r.stages['publish'], 50)
        overhead = percentile(r.overhead_ms, 50) + receive_p50
        verdict = 'meets' if overhead < TARGET_MS else 'misses'
        lines.append(
            f'{r.resolution}: {r.frames_complete}/{r.frames_sent} frames complete, '
            f'{total:.2f} MB in {len(r.bytes_per_frame)} messages per frame (+ stats); '
            f'serialize floor {serialize:.2f} ms ({_rate(total, serialize)}), publish floor '
            f'{floor:.2f} ms ({_rate(total, floor)}), node publish p50 {publish:.2f} ms '
            f'({_rate(total, publish)}); overhead p50 {overhead:.2f} ms {verdict} the '
            f'{TARGET_MS:g} ms target'
        )
    return '\n'.join(lines)


def _rate(megabytes: float, ms: float) -> str:
    return f'{megabytes / ms:.2f} GB/s' if ms > 0 else 'n/a'  # False for NaN too


def to_json(
    args: argparse.Namespace, results: list[RunResult], receive: list[float], model: str
) -> dict[str, Any]:
    def summary(values: Sequence[float]) -> dict[str, float]:
        return {
            'p50': percentile(values, 50),
            'p90': percentile(values, 90),
            'mean': float(np.mean(values)) if len(values) else float('nan'),
        }

    receive_p50 = percentile(receive, 50)
    return {
        'tool': 'm2a-node-bench',
        'host': platform.node(),
        'cpus': os.cpu_count(),
        'load_avg': os.getloadavg(),
        'size': list(args.size),
        'encoding': args.encoding,
        'model': model,
        'frames': args.frames,
        'overlay_rate_hz': args.overlay_rate,
        'target_ms': TARGET_MS,
        'receive_ms': summary(receive),
        'results': [
            {
                'resolution': r.resolution,
                'output_size': list(r.output_size),
                'frames_complete': r.frames_complete,
                'stages_ms': {s: summary(v) for s, v in r.stages.items()},
                'overhead_ms': summary(r.overhead_ms),
                'overhead_incl_receive_ms': summary([v + receive_p50 for v in r.overhead_ms]),
                'end_to_end_ms': summary(r.end_to_end_ms),
                'bytes_per_frame': r.bytes_per_frame,
                'serialize_ms': r.serialize_ms,
                'publish_floor_ms': r.publish_floor_ms,
            }
            for r in results
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM (e.g. `timeout`) unwinds like Ctrl-C, so the node process is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    if args.probe_sink:
        return run_probe_sink(args.probe_sink)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    # Multi-megabyte messages between processes need the large-frame Fast DDS profile, in every
    # process (this one too, so it is set before rclpy starts); the node inherits it.
    os.environ.update(large_frames_defaults(os.environ))
    params_file = args.params_file or default_params_file()
    if not params_file.is_file():
        log(f'parameter file not found: {params_file} (use --params-file)')
        return 2
    with tempfile.TemporaryDirectory(prefix='m2a-node-bench-') as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint or write_tiny_checkpoint(folder)
        from m2a_perception.weights import read_checkpoint

        model = read_checkpoint(checkpoint).config.name
        camera_msg = input_message(synthetic_frame(*args.size), args.encoding)
        log_path = args.node_log or folder / 'node.log'
        node = ManagedProcess('node', node_command(args, checkpoint, params_file), log_path)
        log(f'node pid {node.process.pid}, log {log_path}')
        bench = Bench(camera_msg)
        try:
            try:
                if not bench.spin_until(
                    lambda: not node.alive() or bench.camera.get_subscription_count() > 0,
                    STARTUP_TIMEOUT_S,
                ):
                    raise RuntimeError('the node did not subscribe to the camera')
                if not node.alive():
                    raise RuntimeError('the node exited during start-up')
                results = [measure_resolution(bench, r, args, log) for r in args.resolutions]
            finally:
                node.stop()
            log('publish floor: the same messages, published from here without computation ...')
            publish_floor(bench, results, args.repeats, log)
        except RuntimeError as error:
            log(f'benchmark failed: {error}\n--- node log ---\n{node.tail(30)}')
            return 1
        finally:
            bench.close()
    receive = receive_cost(camera_msg, max(args.repeats, 5))
    print(format_report(args, results, receive, model))
    if args.json:
        cli_args.write_json_output(args.json, to_json(args, results, receive, model))
    return 0


if __name__ == '__main__':
    sys.exit(main())
