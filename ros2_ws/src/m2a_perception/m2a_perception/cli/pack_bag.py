"""m2a-pack-bag: a folder of images (+ ground-truth masks) -> a rosbag2 camera stream.

So benchmark datasets replay like camera data (`m2a-replay`, `replay_eval.launch.py`):

    m2a-pack-bag data/RoadAnomaly21 --out bags/ra21 --fps 2
    m2a-pack-bag frames/ --masks masks/ --out bags/run --format jpeg --storage sqlite3

Topics (camera `--camera`, default front, the node's default camera):
    <ns>/<camera>/image                       sensor_msgs/Image (rgb8 or bgr8), or
    <ns>/<camera>/image/compressed            sensor_msgs/CompressedImage (jpeg / png)
    <ns>/<camera>/ground_truth/anomaly        mono8 0 inlier / 1 anomaly / 255 void (--masks)
    <ns>/<camera>/ground_truth/semantic       mono8 train ids, 255 void (--semantic)

Frame i has header.stamp = start + i / fps, frame_id `--frame-id`, and is logged at its stamp;
its ground truth carries the same header. A folder with `images/` and `labels_masks/` (the
SegmentMeIfYouCan layout and the synthetic world's `anomaly_val/`) is recognised without
--masks. Mask files are matched by stem: `<stem><suffix>.png` for the suffixes --mask-suffix,
'_labels_semantic' and ''.

Images are decoded with Pillow (as `m2a-eval`'s dataset readers do). `--format original` stores
JPEG/PNG files byte for byte as CompressedImage (other formats are re-encoded as PNG).

The packing is `m2a_perception.ros.replay.pack.pack_images`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from m2a_perception.cli import args as cli_args
from m2a_perception.files import WriteFailedError
from m2a_perception.logs import setup_logging
from m2a_perception.ros.replay.bag import STORAGE_PLUGINS
from m2a_perception.ros.replay.pack import DEFAULT_START_TIME_S, FORMATS, PackOptions, pack_images


def parse_mask_map(text: str) -> dict[int, int]:
    """'2:1,3:255' -> {2: 1, 3: 255}."""
    mapping = {}
    for item in filter(None, (part.strip() for part in text.split(','))):
        raw, separator, value = item.partition(':')
        if not separator:
            raise argparse.ArgumentTypeError(f'mask map items look like RAW:VALUE, got {item!r}')
        mapping[int(raw)] = int(value)
    return mapping


def build_parser() -> argparse.ArgumentParser:
    parser = cli_args.new_parser('m2a-pack-bag', __doc__)
    parser.add_argument('images', type=Path, help='image folder (or a dataset root with images/)')
    cli_args.add_out(parser, help='bag folder to create')
    parser.add_argument('--masks', type=Path, help='anomaly masks (0/1/255), matched by stem')
    parser.add_argument('--semantic', type=Path, help='semantic labels, matched by stem')
    parser.add_argument('--semantic-format', choices=('trainids', 'labelids'), default='trainids')
    parser.add_argument('--mask-suffix', default='', help='extra anomaly mask stem suffix')
    parser.add_argument(
        '--semantic-suffix', default='', help="semantic label stem suffix, e.g. '_gtFine_labelIds'"
    )
    parser.add_argument(
        '--image-suffix', default='', help="removed from image stems, e.g. '_leftImg8bit'"
    )
    parser.add_argument(
        '--recursive', action='store_true', help='images from sub-folders (labels mirrored)'
    )
    parser.add_argument(
        '--mask-map',
        type=parse_mask_map,
        default={},
        metavar='RAW:VALUE,...',
        help='remap raw mask values, e.g. 2:1 for 0/2 masks',
    )
    parser.add_argument('--camera', default='front', help='camera name (default front)')
    parser.add_argument('--namespace', default='', help="topic namespace, e.g. '/car'")
    cli_args.add_fps(
        parser,
        default=10.0,
        help='frames per second of the stamps (default %(default)s)',
        deprecated=('--rate',),
    )
    parser.add_argument(
        '--start-time',
        type=float,
        default=DEFAULT_START_TIME_S,
        help='first stamp [s since epoch]',
    )
    parser.add_argument('--frame-id', help="header frame_id (default '<camera>_optical_frame')")
    parser.add_argument('--format', choices=FORMATS, default='raw', help='image transport')
    parser.add_argument('--encoding', choices=('rgb8', 'bgr8'), default='rgb8', help='raw only')
    parser.add_argument('--jpeg-quality', type=int, default=95)
    parser.add_argument('--storage', choices=tuple(STORAGE_PLUGINS), default='mcap')
    parser.add_argument('--limit', type=int, help='pack at most N images')
    cli_args.add_overwrite(parser, help='replace an existing bag')
    cli_args.add_verbose(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        options = PackOptions(
            camera=args.camera,
            namespace=args.namespace,
            rate_hz=args.fps,
            start_time_s=args.start_time,
            frame_id=args.frame_id,
            image_format=args.format,
            encoding=args.encoding,
            jpeg_quality=args.jpeg_quality,
            storage=args.storage,
            mask_suffix=args.mask_suffix,
            semantic_suffix=args.semantic_suffix,
            image_suffix=args.image_suffix,
            recursive=args.recursive,
            mask_map=args.mask_map,
            semantic_format=args.semantic_format,
            limit=args.limit,
            overwrite=args.overwrite,
        )
        result = pack_images(
            args.images, args.out, masks=args.masks, semantic=args.semantic, options=options
        )
    except WriteFailedError as error:  # the bag is closed with what was written
        print(f'error: {error}', file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(
        f'wrote {result.path}: {result.frames} frame(s) on {result.camera.topic} at '
        f'{options.rate_hz:g} Hz, {result.anomaly_labels} anomaly and {result.semantic_labels} '
        f'semantic label(s) ({options.storage})'
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
