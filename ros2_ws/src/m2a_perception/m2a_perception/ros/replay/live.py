"""Live-node replay: the bag played into the running node, its outputs recorded and evaluated.

Three ROS processes, as on a vehicle (the same plan `launch/replay_eval.launch.py` launches):

    perception node   `m2a_perception.cli.perception_node`, use_sim_time, cameras from the bag
    bag_recorder      the camera inputs, their ground truth and every node output -> OUT_BAG
    bag_player        the camera and ground-truth topics with recorded timing and /clock;
                      starts once the node and the recorder subscribe to every camera

The recorder stops by itself a few seconds after the last message (its idle clock starts with
the first camera frame, so the node's start-up /diagnostics cannot stop it while the player
still waits); then the node is stopped (SIGINT) and `evaluate_recorded_bag` computes the
statistics (from the node's `stats` topics) and the metrics. Corrupt input chunks the player
skipped are counted in the report. With `overwrite`, the recording goes to a staging folder
(`bag.StagedBag`) and replaces the old bag only after a complete run. Unlike the offline
replay, frames travel through the middleware, the node's latest-frame slots drop frames the
model cannot keep up with, and latencies include transport.

Allowed dependencies: standard library, tqdm, `m2a_perception.files`,
`m2a_perception.ros.processes` and `topics`, the other `m2a_perception.ros.replay` modules
(`evaluation`, which needs torch, only inside `run_live_replay`, so the launch file that imports
this module stays light).
"""

from __future__ import annotations

import errno
import json
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2a_perception.files import WriteFailedError
from m2a_perception.ros.processes import (
    ManagedProcess,
    parameter_overrides,
    perception_node_command,
    ros_environment,
)
from m2a_perception.ros.replay.bag import (
    SKIPPED_CHUNK_PREFIX,
    BagReader,
    BagReadError,
    CameraSource,
    StagedBag,
    detect_cameras,
    ground_truth_kinds,
)
from m2a_perception.ros.replay.mcap_io import SkippedChunk
from m2a_perception.ros.topics import OUTPUT_TOPICS
from m2a_perception.runtime.report import ReplayReport

if TYPE_CHECKING:
    from m2a_perception.evaluation.streams import EvaluationSettings

LOGGER = logging.getLogger(__name__)
PLAYER_MODULE = 'm2a_perception.cli.bag_player'
# bag_recorder's exit status when writing failed (disk full); 2 is a usage error.
RECORDER_WRITE_FAILED = 1
RECORDER_MODULE = 'm2a_perception.cli.bag_recorder'
DIAGNOSTICS_TOPIC = '/diagnostics'
SIM_TIME_ARGUMENTS = ('--ros-args', '-p', 'use_sim_time:=true')
# Console scripts of a ROS install (ros2_ws/src/m2a_perception/setup.py), for the launch file.
NODE_EXECUTABLE = 'perception_node'
PLAYER_EXECUTABLE = 'bag_player'
RECORDER_EXECUTABLE = 'bag_recorder'


@dataclass(frozen=True)
class LiveReplayOptions:
    """How to run the live replay.

    Attributes:
        cameras: as `ReplayOptions.cameras`.
        speed: playback speed factor.
        namespace: node namespace; default the cameras' common namespace.
        params_file: node parameter YAML passed to the node (`--params-file`).
        overwrite: replace an existing output bag.
        evaluation: metric protocol and component track (default `EvaluationSettings()`).
        progress: progress bar of the playback.
        startup_timeout_s: longest wait for the node to load and subscribe.
        idle_timeout_s: the recorder stops this long after the last message.
        settle_s: wait after subscriptions matched, before playing.
        tail_s: /clock keeps running this long after the last message.
        log_dir: where the three processes log (default: a temporary folder).
        env: extra environment variables of the processes.
    """

    cameras: tuple[str, ...] | None = None
    speed: float = 1.0
    namespace: str | None = None
    params_file: Path | None = None
    overwrite: bool = False
    evaluation: EvaluationSettings | None = None
    progress: bool = True
    startup_timeout_s: float = 180.0
    idle_timeout_s: float = 4.0
    settle_s: float = 1.0
    tail_s: float = 2.0
    log_dir: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LivePlan:
    """Everything the three processes need; built once, used by the CLI and the launch file.

    Attributes:
        namespace: node namespace ('' for the root).
        cameras: the replayed cameras.
        node_parameters: parameter values of the node (after the params file).
        play_topics: topics the player publishes (cameras and ground truth).
        wait_topics: topics the player waits on (cameras).
        record_topics: topics the recorder records (play topics, outputs, /diagnostics).
        duration_s: bag duration of the played topics, in seconds.
    """

    namespace: str
    cameras: tuple[CameraSource, ...]
    node_parameters: dict[str, Any]
    play_topics: tuple[str, ...]
    wait_topics: tuple[str, ...]
    record_topics: tuple[str, ...]
    duration_s: float


def plan_live_replay(
    bag: str | Path,
    parameters: Mapping[str, Any],
    cameras: Sequence[str] | None = None,
    namespace: str | None = None,
) -> LivePlan:
    """Cameras, node parameters and topic lists of a live replay of `bag`.

    Raises:
        BagReadError: the bag cannot be opened.
        ValueError: no usable cameras, or cameras in different namespaces.
    """
    with BagReader(bag) as reader:
        sources = detect_cameras(reader.topics, cameras)
        namespaces = {camera.namespace for camera in sources}
        if namespace is None:
            if len(namespaces) > 1:
                raise ValueError(
                    f'cameras live in different namespaces {sorted(namespaces)}; one node serves '
                    'one namespace: pass --namespace or --cameras NAME=TOPIC'
                )
            namespace = namespaces.pop()
        namespace = namespace.rstrip('/')
        if namespace and not namespace.startswith('/'):
            namespace = f'/{namespace}'
        values = dict(parameters)
        values['use_sim_time'] = True
        values['cameras.names'] = [camera.name for camera in sources]
        for camera in sources:
            values[f'cameras.{camera.name}.transport'] = camera.transport
            values[f'cameras.{camera.name}.topic'] = camera.topic
        play, record = [], []
        for camera in sources:
            truth = [
                camera.ground_truth_topic(k) for k in ground_truth_kinds(camera, reader.topics)
            ]
            play += [camera.topic, *truth]
            prefix = f'{namespace}/{camera.name}'
            record += [
                camera.topic,
                *truth,
                *(f'{prefix}/{rel}' for rel in OUTPUT_TOPICS.values()),
            ]
        record.append(DIAGNOSTICS_TOPIC)
        duration = _duration_s(reader, play)
    return LivePlan(
        namespace=namespace,
        cameras=tuple(sources),
        node_parameters=values,
        play_topics=tuple(dict.fromkeys(play)),
        wait_topics=tuple(camera.topic for camera in sources),
        record_topics=tuple(dict.fromkeys(record)),
        duration_s=duration,
    )


def _duration_s(reader: BagReader, topics: Sequence[str]) -> float:
    first = last = None
    try:
        for message in reader.messages(topics):
            first = message.log_time_ns if first is None else first
            last = message.log_time_ns
    except BagReadError:
        pass  # the player reports the damage
    return 0.0 if first is None or last is None else (last - first) / 1e9


def node_command(plan: LivePlan, params_file: Path | None = None) -> list[str]:
    """Command line of the node of a live replay: the plan's parameters after the file."""
    return perception_node_command(
        namespace=plan.namespace,
        params_file=params_file,
        overrides=parameter_overrides(plan.node_parameters),
    )


def recorder_arguments(plan: LivePlan, out_bag: Path, idle_timeout_s: float) -> list[str]:
    """Arguments of bag_recorder (after the program name; it runs with use_sim_time).

    The idle timeout counts from the first camera frame: before it, only the node's start-up
    /diagnostics arrive, and the player may still be waiting for its subscribers.
    """
    return [
        str(out_bag),
        '--topics',
        *plan.record_topics,
        '--idle-timeout',
        f'{idle_timeout_s:g}',
        '--idle-after',
        *plan.wait_topics,
    ]


def player_arguments(
    plan: LivePlan,
    bag: Path,
    speed: float,
    startup_timeout_s: float,
    settle_s: float,
    tail_s: float,
) -> list[str]:
    """Arguments of bag_player (after the program name): waits for node and recorder."""
    arguments = [str(bag), '--topics', *plan.play_topics, '--speed', f'{speed:g}', '--clock']
    for topic in plan.wait_topics:
        arguments += ['--wait-topic', topic]
    return [
        *arguments,
        '--wait-subscribers',
        '2',
        '--wait-timeout',
        f'{startup_timeout_s:g}',
        '--settle',
        f'{settle_s:g}',
        '--tail',
        f'{tail_s:g}',
    ]


def run_live_replay(
    bag: str | Path,
    out_bag: str | Path,
    parameters: Mapping[str, Any],
    options: LiveReplayOptions | None = None,
) -> ReplayReport:
    """Play `bag` into a node process, record its outputs into `out_bag`, evaluate them.

    Args:
        bag: input bag.
        out_bag: output bag folder (mcap; created by the recorder).
        parameters: node parameter overrides by dotted name (must include model.checkpoint
            unless the params file sets it); cameras and use_sim_time are set here.
        options: see `LiveReplayOptions`.

    Raises:
        BagReadError: the input is damaged; the recording (everything played before the
            damage) is closed and evaluated, `error.report` holds it.
        RuntimeError: a process failed or timed out; the message ends with its log tail.
        WriteFailedError: the recorder could not write the bag (disk full).
        FileExistsError: `out_bag` exists and `options.overwrite` is false.
        ValueError: `out_bag` exists and is not a bag folder.
    """
    options = options or LiveReplayOptions()
    bag, out = Path(bag), Path(out_bag)
    plan = plan_live_replay(bag, parameters, options.cameras, options.namespace)
    # An existing bag is replaced only after a complete run (also on a damaged input: then the
    # recording holds everything the input has); any failure keeps it and deletes the new one.
    staged = StagedBag(out, options.overwrite)
    try:
        report, player_status, player = _record_and_evaluate(bag, staged, plan, options)
    except BaseException:
        staged.discard()
        raise
    staged.commit()
    report.input_bag = str(bag)
    report.output_bag = str(out)
    if player_status == 1:
        report.input_error = _player_error(player)
        error = BagReadError(bag, report.input_error)
        error.report = report
        raise error
    return report


def _record_and_evaluate(
    bag: Path, staged: StagedBag, plan: LivePlan, options: LiveReplayOptions
) -> tuple[ReplayReport, int, ManagedProcess]:
    """Run the three processes, the recording into `staged.path`; its report, the player's exit
    status (0, or 1 for a damaged input) and the player."""
    out = staged.path
    log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix='m2a-live-replay-'))
    log_dir.mkdir(parents=True, exist_ok=True)
    env = ros_environment(options.env)
    python = [sys.executable, '-m']
    processes: list[ManagedProcess] = []
    start = time.monotonic()
    try:
        recorder = ManagedProcess(
            'recorder',
            [
                *python,
                RECORDER_MODULE,
                *recorder_arguments(plan, out, options.idle_timeout_s),
                *SIM_TIME_ARGUMENTS,
            ],
            log_dir / 'recorder.log',
            env,
        )
        processes.append(recorder)
        node = ManagedProcess(
            'node', node_command(plan, options.params_file), log_dir / 'node.log', env
        )
        processes.append(node)
        player_args = player_arguments(
            plan, bag, options.speed, options.startup_timeout_s, options.settle_s, options.tail_s
        )
        player = ManagedProcess(
            'player',
            [*python, PLAYER_MODULE, *player_args, '--progress'],
            log_dir / 'player.log',
            env,
            pipe=True,
        )
        processes.append(player)
        skipped = _follow_player(player, plan, options, node, recorder)
        player_status = player.process.returncode
        if player_status not in (0, 1):
            raise RuntimeError(
                f'the player failed (exit {player_status}); node, recorder and player logs:\n'
                f'{node.tail()}\n{recorder.tail()}\n{player.tail()}'
            )
        # The recorder stops itself once the node's last outputs are written.
        deadline = time.monotonic() + options.idle_timeout_s + 60.0
        while recorder.alive() and time.monotonic() < deadline:
            if not node.alive():
                break
            time.sleep(0.1)
        recorder_status = recorder.stop()
        node.stop()
        if recorder_status == RECORDER_WRITE_FAILED:
            raise _recorder_failure(recorder, staged)
        if not out.is_dir():
            raise RuntimeError(f'the recorder wrote no bag; its log:\n{recorder.tail()}')
        # Imported here: the launch file imports this module and needs no torch.
        from m2a_perception.ros.replay.evaluation import evaluate_recorded_bag

        report = evaluate_recorded_bag(out, options.evaluation, mode='live')
    finally:
        for process in reversed(processes):
            process.stop()
    # The input's corrupt chunks, as the player skipped them (the recording itself is intact).
    report.add_skipped(skipped)
    report.wall_time_s = report.wall_time_s or time.monotonic() - start
    report.notes.append(f'process logs: {log_dir}')
    return report, player_status, player


def _recorder_failure(recorder: ManagedProcess, staged: StagedBag) -> WriteFailedError:
    """The recorder's one-sentence write failure (its last line), for the bag the user named."""
    lines = [ln for ln in recorder.log_text().splitlines() if ln.startswith('recorder: ')]
    reason = lines[-1].removeprefix('recorder: ').rpartition('; wrote ')[0] if lines else ''
    reason = reason or 'the recorder could not write the bag; see its log'
    if staged.replacing:
        reason = reason.replace(str(staged.path), str(staged.target))
        head, separator, _ = reason.rpartition(' (')
        reason = f'{head if separator else reason} ({staged.unchanged_note()})'
    return WriteFailedError(errno.ENOSPC if 'no space left' in reason else errno.EIO, reason)


def _follow_player(
    player: ManagedProcess,
    plan: LivePlan,
    options: LiveReplayOptions,
    node: ManagedProcess,
    recorder: ManagedProcess,
) -> list[SkippedChunk]:
    """Copy the player's output to its log, drive the progress bar, wait for its exit; the
    corrupt chunks it skipped.

    Raises:
        RuntimeError: the node exited, the recorder exited before the playback began (the player
            would wait for it until its timeout), or the player did not finish in time.
    """
    progress = None
    if options.progress:
        from tqdm import tqdm

        progress = tqdm(desc='live replay', unit='msg', file=sys.stderr, dynamic_ncols=True)
    skipped: list[SkippedChunk] = []
    published = [0]

    def pump() -> None:
        assert player.process.stdout is not None
        for line in player.process.stdout:
            if line.startswith('progress '):
                done, _, total = line.split()[1].partition('/')
                published[0] = int(done)
                if progress is not None:
                    progress.total = int(total) if total.isdigit() else None
                    progress.n = int(done)
                    progress.refresh()
                continue
            if line.startswith(SKIPPED_CHUNK_PREFIX):
                skipped.append(
                    SkippedChunk.from_dict(json.loads(line[len(SKIPPED_CHUNK_PREFIX) :]))
                )
            player.write_log(line)

    thread = threading.Thread(target=pump, name='player-output', daemon=True)
    thread.start()
    limit = options.startup_timeout_s + options.settle_s + options.tail_s
    limit += plan.duration_s / options.speed + 60.0
    deadline = time.monotonic() + limit
    try:
        while player.alive():
            if time.monotonic() > deadline:
                raise RuntimeError(f'the player did not finish within {limit:.0f} s')
            if not node.alive():
                raise RuntimeError(
                    f'the node exited (status {node.process.returncode}) during the replay; its '
                    f'log:\n{node.tail()}'
                )
            if not recorder.alive() and (published[0] == 0 or recorder.process.returncode):
                raise RuntimeError(
                    f'the recorder exited (status {recorder.process.returncode}) '
                    + ('before the playback began' if published[0] == 0 else 'during the replay')
                    + f'; its log:\n{recorder.tail()}'
                )
            time.sleep(0.1)
        thread.join(5.0)
    finally:
        if progress is not None:
            progress.close()
    return skipped


def _player_error(player: ManagedProcess) -> str:
    lines = [line for line in player.log_text().splitlines() if 'damaged' in line]
    return lines[-1].split('] ', 1)[-1] if lines else 'the input bag is damaged'
