"""m2a-replay: replay a rosbag through the m2a_perception pipeline and evaluate it.

Three modes:

    m2a-replay BAG --out OUT_BAG --checkpoint model.safetensors
        offline: the node's code paths without a ROS graph, as fast as possible (--timing
        as-fast, default) or at the recorded rate into the node's latest-frame slots (--timing
        recorded); writes an mcap bag with the inputs and every node output.
    m2a-replay BAG --out OUT_BAG --checkpoint model.safetensors --live
        live: starts the node, a bag player (recorded timing, /clock, use_sim_time) and a
        recorder as separate ROS processes, records the node's outputs into OUT_BAG and
        evaluates the recording.
    m2a-replay OUT_BAG --recorded-outputs
        statistics and metrics of a bag that already holds the node's outputs (e.g. recorded
        with launch/replay_eval.launch.py).

Cameras are the bag's `<ns>/<name>/image[...]` (and `.../compressed`) topics, or --cameras
NAME, TOPIC or NAME=TOPIC. Ground truth on `<ns>/<name>/ground_truth/anomaly` (mono8: 0 inlier,
1 anomaly, 255 void) and `<ns>/<name>/ground_truth/semantic` (mono8 train ids, K unknown, 255
void) is scored with m2a_perception.metrics. The report is printed and written as JSON
(default OUT_BAG/replay_report.json).

Exit status: 0 success; 1 the input bag is damaged or the output bag could not be written (disk
full); either way the output bag holds everything processed before and is readable; 2 usage,
parameter or model errors; 3 corrupt input chunks were skipped and the rest was replayed (see
"skipped_chunks" in the report; --allow-skipped-chunks makes this 0); 130 interrupted (the
output bag is closed and readable). With --overwrite an existing --out bag is replaced only by a
complete new one: on a full disk, an error or Ctrl-C it stays unchanged and the incomplete new
bag is deleted (docs/replay.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from m2a_perception.cli import args as cli_args
from m2a_perception.evaluation.streams import COMPONENT_TRACKS, EvaluationSettings
from m2a_perception.files import WriteFailedError
from m2a_perception.inference.backend import PRECISIONS
from m2a_perception.logs import setup_logging
from m2a_perception.metrics.pixel import PIXEL_PROTOCOLS
from m2a_perception.ros.replay.bag import BagReadError
from m2a_perception.runtime.report import ReplayReport

LOGGER = logging.getLogger(__name__)
EXIT_DAMAGED_INPUT = 1
EXIT_USAGE = 2
EXIT_SKIPPED_CHUNKS = 3
EXIT_WRITE_FAILED = 1
EXIT_INTERRUPTED = 130
REPORT_NAME = 'replay_report.json'


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-replay', __doc__)
    parser.add_argument('bag', type=Path, help='input rosbag2 folder or .mcap/.db3 file')
    cli_args.add_out(parser, required=False, help='output bag folder (mcap; created)')
    cli_args.add_overwrite(parser, help='replace an existing --out bag')

    model = parser.add_argument_group('model (the node parameters model.*)')
    cli_args.add_checkpoint(model)
    cli_args.add_engine(
        model,
        help='engine from m2a-build-engine for --checkpoint (.onnx, .ep or .plan; model.backend '
        'from the suffix), opened through its sidecar',
    )
    model.add_argument('--device', help='model.device: cpu, cuda or cuda:<index>')
    cli_args.add_precision(model, choices=PRECISIONS, default=None, help='model.precision')
    cli_args.add_params(
        model,
        params_file_help='node parameter YAML (e.g. config/m2a_perception.yaml); defaults '
        'otherwise',
        param_help='node parameter override, repeatable (e.g. -p anomaly.threshold:=0.6)',
    )

    replay = parser.add_argument_group('replay')
    cli_args.add_cameras(
        replay,
        metavar='NAME|TOPIC|NAME=TOPIC',
        help='cameras to replay (repeatable or comma-separated); default: every camera topic',
    )
    cli_args.add_timing(
        replay,
        help='offline frame timing: as-fast (default) or recorded (into the latest-frame slots)',
    )
    cli_args.add_speed(replay, help='playback speed factor for --timing recorded and --live')
    replay.add_argument(
        '--copy-all-topics',
        action='store_true',
        help='copy every input topic into the output bag (default: the cameras and topics '
        'under their namespaces)',
    )
    replay.add_argument('--max-frames', type=int, help='stop after N camera frames')
    replay.add_argument(
        '--live',
        action='store_true',
        help='play the bag into the running node (separate ROS processes, sim time) and record '
        'its outputs',
    )
    replay.add_argument(
        '--recorded-outputs',
        action='store_true',
        help='BAG already holds the node outputs: only compute statistics and metrics',
    )
    replay.add_argument(
        '--namespace', default='', help='--live: namespace of the node (outputs under it)'
    )
    replay.add_argument(
        '--allow-skipped-chunks',
        action='store_true',
        help='exit 0 even when corrupt input chunks were skipped (default: exit 3)',
    )

    metrics = parser.add_argument_group('metrics')
    metrics.add_argument(
        '--protocol', choices=PIXEL_PROTOCOLS, default='smiyc', help='pixel protocol'
    )
    metrics.add_argument(
        '--component-track',
        choices=tuple(COMPONENT_TRACKS),
        default='anomaly',
        help='SMIYC component sizes: anomaly (RoadAnomaly21) or obstacle (RoadObstacle21)',
    )

    output = parser.add_argument_group('output')
    cli_args.add_option(
        output,
        '--json',
        deprecated=('--report',),
        type=Path,
        metavar='PATH',
        help=f'JSON report (default OUT/{REPORT_NAME})',
    )
    cli_args.add_progress(output)
    cli_args.add_threads(output)
    cli_args.add_verbose(output)
    return parser


def parameters_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """Node parameter values: the YAML, then --checkpoint/--engine/--device/--precision, then
    -p overrides (last wins)."""
    from m2a_perception.ros.param_file import read_parameter_file
    from m2a_perception.ros.replay.offline import parse_parameter_override

    values: dict[str, Any] = {}
    if args.params_file is not None:
        values.update(read_parameter_file(args.params_file))
    if args.checkpoint is not None:
        values['model.checkpoint'] = str(args.checkpoint)
    if args.engine is not None:
        from m2a_perception.runtime.loader import engine_kind

        values['model.backend'] = engine_kind(args.engine)
        values['model.engine_path'] = str(args.engine)
    if args.device is not None:
        values['model.device'] = args.device
    if args.precision is not None:
        values['model.precision'] = args.precision
    for text in args.param:
        name, value = parse_parameter_override(text)
        values[name] = value
    return values


def _run(args: argparse.Namespace) -> tuple[ReplayReport, Path | None]:
    evaluation = EvaluationSettings(
        pixel_protocol=args.protocol, component_track=args.component_track
    )
    if args.recorded_outputs:
        from m2a_perception.ros.replay.evaluation import evaluate_recorded_bag

        report = evaluate_recorded_bag(args.bag, evaluation, progress=not args.no_progress)
        default = args.bag / REPORT_NAME if args.bag.is_dir() else None
        return report, args.json or default
    if args.out is None:
        raise ValueError('--out is required (except with --recorded-outputs)')
    parameters = parameters_from_args(args)
    if args.live:
        from m2a_perception.ros.replay.live import (
            LiveReplayOptions,
            run_live_replay,
        )

        options = LiveReplayOptions(
            cameras=tuple(args.cameras) if args.cameras else None,
            speed=args.speed,
            namespace=args.namespace,
            params_file=args.params_file,
            overwrite=args.overwrite,
            evaluation=evaluation,
            progress=not args.no_progress,
        )
        report = run_live_replay(args.bag, args.out, parameters, options)
    else:
        from m2a_perception.ros.replay.offline import ReplayOptions, replay_bag

        options = ReplayOptions(
            cameras=tuple(args.cameras) if args.cameras else None,
            rate=args.timing,
            speed=args.speed,
            copy_all_topics=args.copy_all_topics,
            max_frames=args.max_frames,
            progress=not args.no_progress,
            pixel_protocol=args.protocol,
            component_track=args.component_track,
            overwrite=args.overwrite,
        )
        report = replay_bag(args.bag, args.out, parameters=parameters, options=options)
    return report, args.json or args.out / REPORT_NAME


def print_how_to_view(out: Path) -> None:
    files = sorted(out.glob('*.mcap'))
    target = files[0] if files else out
    print(f'  view: Foxglove Studio -> Open local file -> {target}')
    print(
        f'        RViz 2 (ROS install): ros2 bag play {out} --clock, then '
        'ros2 launch m2a_perception rviz.launch.py use_sim_time:=true'
    )


def _write_report(report: ReplayReport, path: Path) -> bool:
    """Write and name the JSON report; False (with the one-sentence reason) if it failed."""
    try:
        print(f'  report: {report.write_json(path)}')
    except WriteFailedError as error:
        print(f'error: {error}', file=sys.stderr)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    from m2a_perception.runtime.loader import BackendError

    # --overwrite of an existing bag: an interrupted run keeps it (the new bag is deleted).
    replacing = args.overwrite and args.out is not None and args.out.exists()
    try:
        report, report_path = _run(args)
    except BagReadError as error:
        print(f'error: {error}', file=sys.stderr)
        report = error.report
        if report is None:
            return EXIT_USAGE if error.messages_read == 0 and not args.bag.exists() else 1
        print(report.format_text())
        path = args.json or (args.out / REPORT_NAME if args.out else None)
        if path is not None:
            _write_report(report, path)
        if report.output_bag:
            print(f'  the output bag {report.output_bag} was closed and is readable')
        return EXIT_DAMAGED_INPUT
    except WriteFailedError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_WRITE_FAILED
    except (BackendError, FileNotFoundError, FileExistsError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if replacing:
            print(
                f'interrupted: the previous bag {args.out} is unchanged; the incomplete new one '
                'was deleted',
                file=sys.stderr,
            )
        else:
            # The output bag was closed on the way out and holds every frame processed so far.
            print('interrupted: the output bag was closed and is readable', file=sys.stderr)
        return EXIT_INTERRUPTED
    print(report.format_text())
    if report_path is not None and not _write_report(report, report_path):
        return EXIT_WRITE_FAILED
    if report.output_bag:
        print_how_to_view(Path(report.output_bag))
    if report.skipped_chunks and not args.allow_skipped_chunks:
        print(
            f'error: input bag {args.bag}: {report.skipped_chunks} corrupt chunk(s) skipped '
            '(pass --allow-skipped-chunks to accept)',
            file=sys.stderr,
        )
        return EXIT_SKIPPED_CHUNKS
    return 0


if __name__ == '__main__':
    sys.exit(main())
