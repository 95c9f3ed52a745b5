"""Pack a folder of images (+ ground-truth masks) into a rosbag2 camera stream.

The command line is `m2a-pack-bag` (`m2a_perception.cli.pack_bag`), which documents the topics,
stamps and label matching; `pack_images` is the library call.

Allowed dependencies: numpy, Pillow, rclpy (serialisation only), message packages, the core
(`classes`, `pictures`), `m2a_perception.ros.conversions`, `m2a_perception.ros.replay.bag`.
"""

from __future__ import annotations

import array
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from builtin_interfaces.msg import Time
from PIL import Image as PilImage
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CompressedImage
from std_msgs.msg import Header

from m2a_perception.classes import VOID_ID, label_ids_to_train_ids
from m2a_perception.pictures import read_rgb
from m2a_perception.ros.conversions import array_to_image_msg, rgb_to_compressed_msg
from m2a_perception.ros.replay.bag import (
    COMPRESSED_TYPE,
    IMAGE_TYPE,
    STORAGE_PLUGINS,
    CameraSource,
    OutputBag,
)

LOGGER = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp', '.bmp', '.ppm', '.tif', '.tiff')
FORMATS = ('raw', 'jpeg', 'png', 'original')
MASK_SUFFIXES = ('_labels_semantic', '')
# Default first stamp: a fixed, non-zero epoch (ROS tools treat time 0 as "unset"), so packing
# the same folder twice gives identical bags.
DEFAULT_START_TIME_S = 1_700_000_000.0


@dataclass(frozen=True)
class PackOptions:
    """How images become a camera stream.

    Attributes:
        camera: camera name (topics `<namespace>/<camera>/...`).
        namespace: '' or '/a/b'.
        rate_hz: frame rate of the header stamps.
        start_time_s: stamp of the first frame, seconds since the epoch.
        frame_id: header frame_id (default '<camera>_optical_frame').
        image_format: 'raw' (Image), 'jpeg' / 'png' (CompressedImage, encoded here) or
            'original' (CompressedImage with the file's own JPEG/PNG bytes).
        encoding: raw images only: 'rgb8' or 'bgr8'.
        jpeg_quality: 1..100 for 'jpeg'.
        storage: 'mcap' or 'sqlite3'.
        mask_suffix: extra suffix of anomaly mask stems (tried before '_labels_semantic', '').
        semantic_suffix: extra suffix of semantic label stems (e.g. '_gtFine_labelIds').
        image_suffix: removed from image stems before matching labels (e.g. '_leftImg8bit').
        recursive: take images from sub-folders too (labels in the mirrored sub-folders).
        mask_map: raw mask value -> 0/1/255 (e.g. {2: 1} for Road Anomaly's 0/2 masks).
        semantic_format: 'trainids' (0..18, 255 void) or 'labelids' (Cityscapes label ids,
            converted to train ids).
        limit: pack at most this many images.
        overwrite: replace an existing output bag.
    """

    camera: str = 'front'
    namespace: str = ''
    rate_hz: float = 10.0
    start_time_s: float = DEFAULT_START_TIME_S
    frame_id: str | None = None
    image_format: str = 'raw'
    encoding: str = 'rgb8'
    jpeg_quality: int = 95
    storage: str = 'mcap'
    mask_suffix: str = ''
    semantic_suffix: str = ''
    image_suffix: str = ''
    recursive: bool = False
    mask_map: Mapping[int, int] = field(default_factory=dict)
    semantic_format: str = 'trainids'
    limit: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.image_format not in FORMATS:
            raise ValueError(f'image_format must be one of {FORMATS}, got {self.image_format!r}')
        if self.encoding not in ('rgb8', 'bgr8'):
            raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {self.encoding!r}")
        if not self.rate_hz > 0.0:
            raise ValueError(f'rate_hz must be positive, got {self.rate_hz}')
        if self.start_time_s < 0.0:
            raise ValueError(f'start_time_s must be >= 0, got {self.start_time_s}')
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f'jpeg_quality must be in [1, 100], got {self.jpeg_quality}')
        if self.storage not in STORAGE_PLUGINS:
            raise ValueError(f'storage must be one of {tuple(STORAGE_PLUGINS)}')
        if self.semantic_format not in ('trainids', 'labelids'):
            raise ValueError("semantic_format must be 'trainids' or 'labelids'")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f'limit must be at least 1, got {self.limit}')
        if self.namespace and not self.namespace.startswith('/'):
            raise ValueError(f"namespace must start with '/', got {self.namespace!r}")

    @property
    def source(self) -> CameraSource:
        transport = 'raw' if self.image_format == 'raw' else 'compressed'
        suffix = 'image' if transport == 'raw' else 'image/compressed'
        topic = f'{self.namespace}/{self.camera}/{suffix}'
        return CameraSource(self.camera, topic, transport, self.namespace)


@dataclass(frozen=True)
class PackResult:
    """What `pack_images` wrote.

    Attributes:
        path: the bag folder.
        camera: topics of the stream.
        frames: images packed.
        anomaly_labels: frames with an anomaly mask.
        semantic_labels: frames with a semantic label.
        stamps_ns: header stamp of every frame, in order.
        names: image file stem of every frame, in order.
    """

    path: Path
    camera: CameraSource
    frames: int
    anomaly_labels: int
    semantic_labels: int
    stamps_ns: tuple[int, ...]
    names: tuple[str, ...]


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files of a folder (and its sub-folders), sorted by relative path."""
    if not folder.is_dir():
        raise FileNotFoundError(f'image folder {folder} does not exist')
    candidates = folder.rglob('*') if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def find_label(folder: Path | None, relative: Path, image_suffix: str, suffix: str) -> Path | None:
    """The label of the image at `relative` (to the image folder): `folder/<sub-folders>/
    <stem without image_suffix><suffix>.png`, trying `suffix`, '_labels_semantic' and ''."""
    if folder is None:
        return None
    stem = relative.stem
    if image_suffix and stem.endswith(image_suffix):
        stem = stem[: -len(image_suffix)]
    for candidate_suffix in (suffix, *MASK_SUFFIXES) if suffix else MASK_SUFFIXES:
        for extension in ('.png', '.PNG'):
            path = folder / relative.parent / f'{stem}{candidate_suffix}{extension}'
            if path.is_file():
                return path
    return None


def read_label(path: Path) -> np.ndarray:
    """(H, W) integer values of a label PNG (palette indices for palette PNGs; grey RGB ok)."""
    with PilImage.open(path) as image:
        values = np.asarray(image)
    if values.ndim == 3:
        if not (
            np.array_equal(values[..., 0], values[..., 1])
            and np.array_equal(values[..., 0], values[..., 2])
        ):
            raise ValueError(f'{path}: colour label image; expected one grey channel')
        values = values[..., 0]
    if values.ndim != 2:
        raise ValueError(f'{path}: label has shape {values.shape}')
    return values


def anomaly_label(values: np.ndarray, mapping: Mapping[int, int], path: Path) -> np.ndarray:
    """Raw mask values -> uint8 0/1/255 via `mapping` (identity for unmapped values).

    Raises:
        ValueError: values other than 0/1/255 after mapping, naming the file.
    """
    result = values.astype(np.int64)
    for raw, value in mapping.items():
        result[values == raw] = value
    bad = np.setdiff1d(np.unique(result), [0, 1, VOID_ID])
    if bad.size:
        raise ValueError(
            f'{path}: anomaly mask values must be 0/1/255 after --mask-map, found '
            f'{bad[:10].tolist()}'
        )
    return result.astype(np.uint8)


def semantic_label(values: np.ndarray, label_format: str, path: Path) -> np.ndarray:
    if label_format == 'labelids':
        return label_ids_to_train_ids(values)
    if values.size and (values.min() < 0 or values.max() > VOID_ID):
        raise ValueError(f'{path}: train ids must be in [0, 255]')
    return values.astype(np.uint8)


def _header(stamp_ns: int, frame_id: str) -> Header:
    return Header(
        stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
        frame_id=frame_id,
    )


def _image_message(path: Path, rgb: np.ndarray, header: Header, options: PackOptions) -> object:
    if options.image_format == 'raw':
        pixels = rgb if options.encoding == 'rgb8' else np.ascontiguousarray(rgb[..., ::-1])
        return array_to_image_msg(np.ascontiguousarray(pixels), options.encoding, header)
    if options.image_format == 'original' and path.suffix.lower() in ('.jpg', '.jpeg', '.png'):
        msg = CompressedImage()
        msg.header = header
        msg.format = 'png' if path.suffix.lower() == '.png' else 'jpeg'
        data = array.array('B')
        data.frombytes(path.read_bytes())
        msg.data = data
        return msg
    kind = 'jpeg' if options.image_format == 'jpeg' else 'png'
    return rgb_to_compressed_msg(rgb, kind, header, options.jpeg_quality)


def pack_images(
    images: str | Path | Sequence[str | Path],
    out_bag: str | Path,
    *,
    masks: str | Path | None = None,
    semantic: str | Path | None = None,
    options: PackOptions | None = None,
) -> PackResult:
    """Write images (and their ground truth) as one camera stream.

    Args:
        images: a folder (with `images/` + `labels_masks/` recognised) or a list of files.
        out_bag: bag folder to create.
        masks: folder of anomaly masks (0/1/255 after `options.mask_map`), matched by stem.
        semantic: folder of semantic labels (train or label ids), matched by stem.
        options: topics, timing, format, storage.

    Returns:
        What was written.

    Raises:
        FileNotFoundError: missing folders or no images.
        ValueError: bad options, label values or sizes (naming the file).
    """
    options = options or PackOptions()
    mask_dir = Path(masks) if masks is not None else None
    if isinstance(images, (str, Path)):
        folder = Path(images)
        if (
            (folder / 'images').is_dir()
            and mask_dir is None
            and (folder / 'labels_masks').is_dir()
        ):
            mask_dir = folder / 'labels_masks'
        if (folder / 'images').is_dir():
            folder = folder / 'images'
        files = list_images(folder, options.recursive)
        relative = [p.relative_to(folder) for p in files]
    else:
        files = [Path(p) for p in images]
        relative = [Path(p.name) for p in files]
    if options.limit is not None:
        files, relative = files[: options.limit], relative[: options.limit]
    if not files:
        raise FileNotFoundError(f'no images ({", ".join(IMAGE_EXTENSIONS)}) in {images}')
    semantic_dir = Path(semantic) if semantic is not None else None
    for label_dir in (mask_dir, semantic_dir):
        if label_dir is not None and not label_dir.is_dir():
            raise FileNotFoundError(f'label folder {label_dir} does not exist')
    out_path = Path(out_bag)
    source = options.source
    frame_id = (
        options.frame_id if options.frame_id is not None else f'{options.camera}_optical_frame'
    )
    period_ns = round(1e9 / options.rate_hz)
    start_ns = round(options.start_time_s * 1e9)
    stamps: list[int] = []
    counts = {'anomaly': 0, 'semantic': 0}
    unlabelled = 0
    with OutputBag(out_path, storage=options.storage, overwrite=options.overwrite) as bag:
        bag.add_topic(source.topic, IMAGE_TYPE if source.transport == 'raw' else COMPRESSED_TYPE)
        label_topics = {}
        for kind, label_dir in (('anomaly', mask_dir), ('semantic', semantic_dir)):
            if label_dir is not None:
                label_topics[kind] = source.ground_truth_topic(kind)
                bag.add_topic(label_topics[kind], IMAGE_TYPE)
        for index, (path, relative_path) in enumerate(zip(files, relative, strict=True)):
            stamp = start_ns + index * period_ns
            header = _header(stamp, frame_id)
            rgb = read_rgb(path)
            bag.write(
                source.topic, stamp, serialize_message(_image_message(path, rgb, header, options))
            )
            labelled = False
            for kind, topic in label_topics.items():
                label_dir = mask_dir if kind == 'anomaly' else semantic_dir
                suffix = options.mask_suffix if kind == 'anomaly' else options.semantic_suffix
                label_path = find_label(label_dir, relative_path, options.image_suffix, suffix)
                if label_path is None:
                    continue
                values = read_label(label_path)
                if values.shape != rgb.shape[:2]:
                    raise ValueError(
                        f'{label_path}: label size {values.shape} differs from image {path} '
                        f'{rgb.shape[:2]}'
                    )
                label = (
                    anomaly_label(values, options.mask_map, label_path)
                    if kind == 'anomaly'
                    else semantic_label(values, options.semantic_format, label_path)
                )
                bag.write(
                    topic, stamp, serialize_message(array_to_image_msg(label, 'mono8', header))
                )
                counts[kind] += 1
                labelled = True
            unlabelled += int(bool(label_topics) and not labelled)
            stamps.append(stamp)
    if unlabelled:
        LOGGER.warning('%d image(s) have no ground truth and were packed without it', unlabelled)
    return PackResult(
        path=out_path,
        camera=source,
        frames=len(files),
        anomaly_labels=counts['anomaly'],
        semantic_labels=counts['semantic'],
        stamps_ns=tuple(stamps),
        names=tuple(str(p.with_suffix('')) for p in relative),
    )
