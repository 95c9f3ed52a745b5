"""Readers for the evaluation benchmarks, as they lie on disk.

Anomaly benchmarks yield `AnomalySample(image, label, name)`:
    image: (H, W, 3) uint8 RGB; label: (H, W) uint8, 0 = inlier, 1 = anomaly, 255 = void.
The label remaps follow the official evaluation code (SegmentMeIfYouCan, bdl-benchmark and the
Mask2Anomaly script, see shared/reference/metrics-and-sota.md §0):

- `road_anomaly`: 0 background, 2 anomaly -> 0, 1 (a 1 stays 1, as every evaluator's 2 -> 1
  remap leaves it);
- `fishyscapes_lost_and_found`, `fishyscapes_static`, `smiyc_road_anomaly21`,
  `smiyc_road_obstacle21`: 0 / 1 / 255 as is (RoadObstacle21 voids everything off the road);
- `lost_and_found`: labelIds 0 unlabelled -> 255, 1 free road -> 0, 2..200 objects -> 1;
- `street_hazards`: raw 1..14, 14 = anomaly, void per `StreetHazardsConvention`.

Any other value is reported as malformed (`strict_labels=False` turns such values into void
instead). `coco_panoptic` yields `PanopticSample` with the 5 / 10 / 20 % unknown-class splits of
the Mask2Anomaly paper (Section 7.1, the EOPSN splits).

Every reader indexes its files when built and raises one `BenchmarkDatasetError` listing all
problems found (missing root, folders, annotations, unreadable JSON ...); files that turn out
malformed when read (undecodable, size mismatch, unexpected label values) raise it too.

Allowed dependencies: numpy, Pillow, m2a_perception.metrics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
from PIL import Image

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics.component import ANOMALY_TRACK, OBSTACLE_TRACK, ComponentTrack
from m2a_perception.metrics.panoptic import (
    UNKNOWN_CATEGORY_ID,
    PanopticCategory,
    PanopticSegment,
    open_set_categories,
    relabel_unknown_segments,
    rgb_to_panoptic_id,
)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.webp')
# A broken dataset of thousands of files is best described by its first few problems.
_MAX_LISTED = 10
_UNEXPECTED = -1

StreetHazardsConvention = Literal['mask2anomaly', 'densehybrid', 'caos']

STREETHAZARDS_OPEN_SET_CLASSES = (
    'unlabeled', 'building', 'fence', 'pedestrian', 'pole', 'road line', 'road', 'sidewalk',
    'vegetation', 'car', 'wall', 'traffic sign',
)  # fmt: skip
"""The 12 known classes of DenseHybrid's open-set protocol (raw labels 1-3 and 5-13); raw 4
"other" is ignored and raw 14 is the anomaly class (index 12)."""


class BenchmarkDatasetError(ValueError):
    """A benchmark dataset is missing or malformed; the message lists every problem found."""

    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.root = root
        self.problems = list(problems)
        lines = '\n'.join(f'  - {problem}' for problem in self.problems)
        super().__init__(
            f'dataset at {root} is not usable ({len(self.problems)} problems):\n{lines}'
        )


class AnomalySample(NamedTuple):
    """One evaluation frame.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8, 0 = inlier, 1 = anomaly, 255 = void.
        name: frame identifier (file stem).
    """

    image: np.ndarray
    label: np.ndarray
    name: str


class OpenSetSample(NamedTuple):
    """One open-set semantic frame (StreetHazards, DenseHybrid's protocol).

    Attributes:
        image: (H, W, 3) uint8 RGB.
        label: (H, W) uint8, 0..11 known class (`STREETHAZARDS_OPEN_SET_CLASSES`), 12 anomaly,
            255 ignored.
        name: frame identifier, '<town>/<stem>'.
        town: 't5' or 't6'.
    """

    image: np.ndarray
    label: np.ndarray
    name: str
    town: str


class PanopticSample(NamedTuple):
    """One COCO panoptic image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        panoptic: (H, W) int64 segment ids (0 = VOID), from the PNG by id = R + 256 G + 256² B.
        segments: `segments_info` of the image; in the open-set protocol the unknown classes
            carry `UNKNOWN_CATEGORY_ID`.
        name: image file stem.
    """

    image: np.ndarray
    panoptic: np.ndarray
    segments: tuple[PanopticSegment, ...]
    name: str


@dataclass(frozen=True)
class FrameFiles:
    """Paths of one frame."""

    name: str
    image_path: Path
    label_path: Path


def _lut(mapping: dict[int, int]) -> np.ndarray:
    """(256,) int16 lookup from raw label value to 0 / 1 / 255; unlisted values are unexpected."""
    lut = np.full(256, _UNEXPECTED, dtype=np.int16)
    for raw, value in mapping.items():
        lut[raw] = value
    return lut


def _list(paths: Sequence[object], what: str) -> list[str]:
    problems = [f'{what}: {path}' for path in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        problems.append(f'... and {len(paths) - _MAX_LISTED} more ({what})')
    return problems


def _require_dirs(root: Path, folders: Sequence[Path]) -> None:
    if not root.is_dir():
        raise BenchmarkDatasetError(root, ['the dataset root does not exist or is not a folder'])
    missing = [folder for folder in folders if not folder.is_dir()]
    if missing:
        raise BenchmarkDatasetError(root, _list(missing, 'missing folder'))


def read_rgb(path: Path, root: Path) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8 RGB."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except OSError as error:
        raise BenchmarkDatasetError(root, [f'{path}: unreadable image ({error})']) from error


def read_label_values(path: Path, root: Path) -> np.ndarray:
    """Decode a label PNG to its (H, W) raw integer values.

    Palette PNGs give their indices; RGB(A) label files (some re-encoded releases) must have
    equal channels, whose common value is used.
    """
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except OSError as error:
        raise BenchmarkDatasetError(root, [f'{path}: unreadable label ({error})']) from error
    if values.ndim == 3:
        channels = values[..., :3]
        if not (
            np.array_equal(channels[..., 0], channels[..., 1])
            and np.array_equal(channels[..., 0], channels[..., 2])
        ):
            raise BenchmarkDatasetError(root, [f'{path}: colour label image, expected grey'])
        values = channels[..., 0]
    if values.ndim != 2:
        raise BenchmarkDatasetError(root, [f'{path}: label has shape {values.shape}'])
    return values


def remap_label(
    values: np.ndarray, lut: np.ndarray, path: Path, root: Path, strict: bool
) -> np.ndarray:
    """Apply a raw-value lookup table; unexpected values raise, or become void if not strict."""
    if values.dtype == np.uint8:
        mapped = lut[values]
    else:
        values = values.astype(np.int64)
        mapped = lut[np.clip(values, 0, 255)]
        mapped[(values < 0) | (values > 255)] = _UNEXPECTED
    unexpected = mapped == _UNEXPECTED
    if unexpected.any():
        if strict:
            bad = np.unique(values[unexpected])[:_MAX_LISTED].tolist()
            expected = np.flatnonzero(lut != _UNEXPECTED).tolist()
            raise BenchmarkDatasetError(
                root,
                [
                    f'{path}: unexpected label values {bad} (expected {_describe(expected)}); '
                    'pass strict_labels=False to treat them as void'
                ],
            )
        mapped[unexpected] = VOID_ID
    return mapped.astype(np.uint8)


def _describe(values: list[int]) -> str:
    if len(values) > 6 and values == list(range(values[0], values[-1] + 1)):
        return f'{values[0]}..{values[-1]}'
    return str(values)


class AnomalyDataset(Sequence[AnomalySample]):
    """Frames of one anomaly benchmark, decoded lazily.

    Attributes:
        name: benchmark name.
        root: dataset root.
        frames: the indexed files, sorted by name.
        component_track: SMIYC size filters to use for sIoU / PPV / F1* (None: no component
            protocol for this dataset).
    """

    def __init__(
        self,
        name: str,
        root: Path,
        frames: Sequence[FrameFiles],
        label_lut: np.ndarray,
        component_track: ComponentTrack | None,
        strict_labels: bool = True,
    ) -> None:
        if not frames:
            raise BenchmarkDatasetError(root, [f'no labelled frames found for {name}'])
        self.name = name
        self.root = root
        self.frames = tuple(frames)
        self.component_track = component_track
        self._label_lut = label_lut
        self._strict_labels = strict_labels

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> AnomalySample:  # type: ignore[override]
        frame = self.frames[index]
        image = read_rgb(frame.image_path, self.root)
        raw = read_label_values(frame.label_path, self.root)
        if raw.shape != image.shape[:2]:
            raise BenchmarkDatasetError(
                self.root,
                [f'{frame.name}: label {raw.shape} does not match image {image.shape[:2]}'],
            )
        label = remap_label(raw, self._label_lut, frame.label_path, self.root, self._strict_labels)
        return AnomalySample(image=image, label=label, name=frame.name)

    def __iter__(self) -> Iterator[AnomalySample]:
        for index in range(len(self)):
            yield self[index]

    @property
    def frame_names(self) -> tuple[str, ...]:
        """Names of all frames, in iteration order."""
        return tuple(frame.name for frame in self.frames)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


def _frames_from_label_masks(
    root: Path, *, require_all: bool
) -> tuple[list[FrameFiles], list[str]]:
    """Pair `root/images/<stem>.<ext>` with `root/labels_masks/<stem>_labels_semantic.png`
    (SMIYC) or `root/labels_masks/<stem>.png` (the Mask2Anomaly validation bundle)."""
    images_dir, labels_dir = root / 'images', root / 'labels_masks'
    _require_dirs(root, [images_dir, labels_dir])
    frames, missing = [], []
    for image_path in _images_in(images_dir):
        candidates = (
            labels_dir / f'{image_path.stem}_labels_semantic.png',
            labels_dir / f'{image_path.stem}.png',
        )
        label_path = next((path for path in candidates if path.is_file()), None)
        if label_path is None:
            missing.append(candidates[0])
            continue
        frames.append(FrameFiles(image_path.stem, image_path, label_path))
    problems = _list(missing, 'missing label') if require_all else []
    if not frames and not problems:
        problems = [f'no image with a label in {images_dir} / {labels_dir}']
    return frames, problems


def _finish(
    name: str,
    root: Path,
    frames: list[FrameFiles],
    problems: list[str],
    mapping: dict[int, int],
    track: ComponentTrack | None,
    strict_labels: bool,
) -> AnomalyDataset:
    if problems:
        raise BenchmarkDatasetError(root, problems)
    return AnomalyDataset(name, root, frames, _lut(mapping), track, strict_labels)


_BINARY = {0: 0, 1: 1, VOID_ID: VOID_ID}


def road_anomaly(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """Road Anomaly (Lis et al., ICCV 2019), 60 frames.

    Layouts (either):

        root/frame_list.json                      list of image file names
        root/frames/<stem>.<webp|jpg>             image (RoadAnomaly or RoadAnomaly_jpg)
        root/frames/<stem>.labels/labels_semantic.png   0 background, 2 anomaly

        root/images/<stem>.jpg                    the Mask2Anomaly validation bundle
        root/labels_masks/<stem>.png              same raw values

    Remap: 2 -> 1 (anomaly), 0 -> 0; no void.
    """
    root = Path(root)
    mapping = {0: 0, 1: 1, 2: 1}
    if (root / 'images').is_dir():
        frames, problems = _frames_from_label_masks(root, require_all=True)
        return _finish(
            'road_anomaly', root, frames, problems, mapping, ANOMALY_TRACK, strict_labels
        )
    _require_dirs(root, [root / 'frames'])
    list_path = root / 'frame_list.json'
    try:
        names = json.loads(list_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkDatasetError(
            root,
            [
                f'{list_path}: missing or invalid JSON ({error}); or use the images/ + '
                'labels_masks/ layout'
            ],
        ) from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BenchmarkDatasetError(root, [f'{list_path}: expected a JSON list of file names'])
    frames, missing = [], []
    for file_name in sorted(names):
        image_path = root / 'frames' / file_name
        label_path = root / 'frames' / f'{Path(file_name).stem}.labels' / 'labels_semantic.png'
        missing += [path for path in (image_path, label_path) if not path.is_file()]
        frames.append(FrameFiles(Path(file_name).stem, image_path, label_path))
    return _finish(
        'road_anomaly',
        root,
        frames,
        _list(missing, 'missing file'),
        mapping,
        ANOMALY_TRACK,
        strict_labels,
    )


def fishyscapes_lost_and_found(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """Fishyscapes Lost & Found validation (100 frames, labels 0 / 1 / 255).

    Layouts (either):

        root/fishyscapes_lostandfound/<idx>_<laf frame>_labels.png    Fishyscapes labels
        root/laf_images/<laf frame>_leftImg8bit.png                   Lost & Found images

        root/images/<stem>.png + root/labels_masks/<stem>.png         Mask2Anomaly bundle

    Pixels other than 0 / 1 are void (bdl-benchmark). SMIYC evaluates this set with the anomaly
    track's component sizes.
    """
    root = Path(root)
    if (root / 'images').is_dir():
        frames, problems = _frames_from_label_masks(root, require_all=True)
    else:
        labels_dir, images_dir = root / 'fishyscapes_lostandfound', root / 'laf_images'
        _require_dirs(root, [labels_dir, images_dir])
        frames, problems, missing = [], [], []
        for label_path in sorted(labels_dir.glob('*.png')):
            match = re.fullmatch(r'\d+_(.+_)labels\.png', label_path.name)
            if match is None:
                problems.append(f'{label_path}: name is not <index>_<frame>_labels.png')
                continue
            image_path = images_dir / f'{match.group(1)}leftImg8bit.png'
            if not image_path.is_file():
                missing.append(image_path)
            frames.append(FrameFiles(match.group(1)[:-1], image_path, label_path))
        problems = problems[:_MAX_LISTED] + _list(missing, 'missing image')
        if not frames and not problems:
            problems = [f'no *_labels.png files in {labels_dir}']
    return _finish(
        'fishyscapes_lost_and_found', root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels
    )


def fishyscapes_static(
    root: str | Path, version: int | None = None, *, strict_labels: bool = True
) -> AnomalyDataset:
    """Fishyscapes Static validation (30 frames, labels 0 / 1 / 255).

    Layouts (either):

        root/fs_val_v<N>/<prefix>labels.png           labels of overlay version N (1, 2, 3)
        root/fs_static_images_v<N>/<prefix>rgb.png    the blended images

        root/images/<stem>.jpg + root/labels_masks/<stem>.png    Mask2Anomaly bundle

    Args:
        root: dataset root.
        version: overlay version; None picks the only `fs_val_v*` folder present. Report it:
            the versions differ.
        strict_labels: raise on values other than 0 / 1 / 255.
    """
    root = Path(root)
    if (root / 'images').is_dir():
        frames, problems = _frames_from_label_masks(root, require_all=True)
        return _finish(
            'fishyscapes_static', root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels
        )
    if not root.is_dir():
        raise BenchmarkDatasetError(root, ['the dataset root does not exist or is not a folder'])
    if version is None:
        versions = sorted(p.name for p in root.glob('fs_val_v*') if p.is_dir())
        if len(versions) != 1:
            raise BenchmarkDatasetError(
                root,
                [
                    f'expected exactly one fs_val_v<N> folder (or images/ + labels_masks/), '
                    f'found {versions}; pass version=N'
                ],
            )
        version = int(versions[0].removeprefix('fs_val_v'))
    labels_dir, images_dir = root / f'fs_val_v{version}', root / f'fs_static_images_v{version}'
    _require_dirs(root, [labels_dir, images_dir])
    frames, missing = [], []
    for label_path in sorted(labels_dir.glob('*labels.png')):
        prefix = label_path.name[: -len('labels.png')]
        image_path = images_dir / f'{prefix}rgb.png'
        if not image_path.is_file():
            missing.append(image_path)
        frames.append(FrameFiles(prefix.rstrip('_') or label_path.stem, image_path, label_path))
    problems = _list(missing, 'missing image')
    if not frames and not problems:
        problems = [f'no *labels.png files in {labels_dir}']
    return _finish(
        f'fishyscapes_static_v{version}',
        root,
        frames,
        problems,
        _BINARY,
        ANOMALY_TRACK,
        strict_labels,
    )


def smiyc_road_anomaly21(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """SegmentMeIfYouCan RoadAnomaly21 (`dataset_AnomalyTrack`), labelled frames only.

    Layout:

        root/images/<stem>.jpg                              110 images (100 test, 10 val)
        root/labels_masks/<stem>_labels_semantic.png        0 / 1 / 255, validation frames only
        (or root/labels_masks/<stem>.png, Mask2Anomaly bundle)

    Test frames have hidden labels and are skipped; an error is raised if no frame has one.
    """
    root = Path(root)
    frames, problems = _frames_from_label_masks(root, require_all=False)
    return _finish(
        'smiyc_road_anomaly21', root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels
    )


def smiyc_road_obstacle21(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """SegmentMeIfYouCan RoadObstacle21 (`dataset_ObstacleTrack`), labelled frames only.

    Layout:

        root/images/<stem>.webp                             images
        root/labels_masks/<stem>_labels_semantic.png        0 road / 1 obstacle / 255 off-road
        (or root/labels_masks/<stem>.png, Mask2Anomaly bundle)

    Frames without a label (hidden test labels) are skipped. Obstacle-track component sizes.
    """
    root = Path(root)
    frames, problems = _frames_from_label_masks(root, require_all=False)
    return _finish(
        'smiyc_road_obstacle21', root, frames, problems, _BINARY, OBSTACLE_TRACK, strict_labels
    )


def lost_and_found(
    root: str | Path,
    split: str = 'test',
    frame_names: Collection[str] | None = None,
    *,
    strict_labels: bool = True,
) -> AnomalyDataset:
    """Lost & Found (Pinggera et al. 2016) in its Cityscapes-style layout.

    Layout:

        root/leftImg8bit/<split>/<sequence>/<frame>_leftImg8bit.png
        root/gtCoarse/<split>/<sequence>/<frame>_gtCoarse_labelIds.png
            0 unlabelled, 1 free road, 2..200 obstacle classes

    Remap (SMIYC `LAF_CLASSES`, Mask2Anomaly script): 0 -> 255, 1 -> 0, 2..200 -> 1.

    Args:
        root: dataset root.
        split: 'train' or 'test' (1203 frames; SMIYC's `LostAndFound-testNoKnown` is a 1043-frame
            subset whose frame list must be passed as `frame_names`).
        frame_names: keep only these frames; names missing from the dataset are errors.
        strict_labels: raise on labels above 200.
    """
    root = Path(root)
    images_dir, labels_dir = root / 'leftImg8bit' / split, root / 'gtCoarse' / split
    _require_dirs(root, [images_dir, labels_dir])
    suffix = '_leftImg8bit.png'
    frames, missing = [], []
    for image_path in sorted(images_dir.glob(f'*/*{suffix}')):
        stem = image_path.name[: -len(suffix)]
        if frame_names is not None and stem not in frame_names:
            continue
        label_path = labels_dir / image_path.parent.name / f'{stem}_gtCoarse_labelIds.png'
        if not label_path.is_file():
            missing.append(label_path)
        frames.append(FrameFiles(stem, image_path, label_path))
    problems = _list(missing, 'missing label')
    if frame_names is not None:
        absent = sorted(set(frame_names) - {frame.name for frame in frames})
        problems += _list(absent, 'requested frame not found')
    if not frames and not problems:
        problems = [f'no */*{suffix} images in {images_dir}']
    mapping = {0: VOID_ID, 1: 0, **dict.fromkeys(range(2, 201), 1)}
    return _finish(
        f'lost_and_found_{split}', root, frames, problems, mapping, OBSTACLE_TRACK, strict_labels
    )


def streethazards_anomaly_mapping(convention: StreetHazardsConvention) -> dict[int, int]:
    """Raw StreetHazards label (1..14) -> 0 / 1 / 255 for pixel anomaly metrics.

    - 'mask2anomaly' (`anomaly_inference_streethazard.py`): 1 unlabelled and 4 other void;
    - 'densehybrid' (`streethazards_test.py`): 4 other void;
    - 'caos' (hendrycks/anomaly-seg): nothing void (CAOS also averages per image, which a
      pooled curve does not reproduce).
    """
    mapping = {**dict.fromkeys(range(1, 14), 0), 14: 1}
    if convention == 'mask2anomaly':
        mapping.update({1: VOID_ID, 4: VOID_ID})
    elif convention == 'densehybrid':
        mapping[4] = VOID_ID
    elif convention != 'caos':
        raise ValueError(
            f"convention must be 'mask2anomaly', 'densehybrid' or 'caos', got {convention!r}"
        )
    return mapping


def _streethazards_open_set_lut() -> np.ndarray:
    # DenseHybrid: raw - 1, "other" (raw 4) ignored, classes above it shifted down by one, so
    # the anomaly (raw 14) lands on index 12 = K.
    mapping = {1: 0, 2: 1, 3: 2, 4: VOID_ID, **{raw: raw - 2 for raw in range(5, 15)}}
    return _lut(mapping)


class StreetHazardsDataset(AnomalyDataset):
    """StreetHazards test towns; anomaly samples by index, open-set samples via `open_set`."""

    def __init__(
        self,
        root: Path,
        frames: Sequence[FrameFiles],
        towns: Sequence[str],
        convention: StreetHazardsConvention,
        strict_labels: bool,
    ) -> None:
        super().__init__(
            f'street_hazards_{"_".join(sorted(set(towns)))}',
            root,
            frames,
            _lut(streethazards_anomaly_mapping(convention)),
            None,
            strict_labels,
        )
        self.towns = tuple(towns)
        self.convention = convention

    def open_set_sample(self, index: int) -> OpenSetSample:
        """Frame `index` with DenseHybrid's 12-class + anomaly label."""
        frame = self.frames[index]
        image = read_rgb(frame.image_path, self.root)
        raw = read_label_values(frame.label_path, self.root)
        if raw.shape != image.shape[:2]:
            raise BenchmarkDatasetError(
                self.root,
                [f'{frame.name}: label {raw.shape} does not match image {image.shape[:2]}'],
            )
        label = remap_label(
            raw, _streethazards_open_set_lut(), frame.label_path, self.root, self._strict_labels
        )
        return OpenSetSample(image, label, frame.name, self.towns[index])

    def open_set(self) -> Iterator[OpenSetSample]:
        """All frames as open-set samples."""
        for index in range(len(self)):
            yield self.open_set_sample(index)

    def town_indices(self, town: str) -> list[int]:
        """Indices of the frames of one town (for the t5 / t6 cross-calibration)."""
        return [index for index, name in enumerate(self.towns) if name == town]


def street_hazards(
    root: str | Path,
    towns: Sequence[str] = ('t5', 't6'),
    convention: StreetHazardsConvention = 'mask2anomaly',
    *,
    strict_labels: bool = True,
) -> StreetHazardsDataset:
    """StreetHazards test set (Hendrycks et al.), 1500 frames in towns t5 and t6.

    Layout (the released `streethazards_test.tar`; `root` may also be its `test/` folder):

        root/test/images/test/<town>/<n>.png         images
        root/test/annotations/test/<town>/<n>.png    labels 1..14 (14 anomaly, 4 "other")

    Args:
        root: dataset root.
        towns: towns to read.
        convention: label remap for pixel anomaly metrics (`streethazards_anomaly_mapping`).
        strict_labels: raise on values outside 1..14.
    """
    streethazards_anomaly_mapping(convention)  # validates the name before any file is read
    root = Path(root)
    base = root if (root / 'images' / 'test').is_dir() else root / 'test'
    town_dirs = [base / 'images' / 'test' / town for town in towns]
    _require_dirs(root, [*town_dirs, *(base / 'annotations' / 'test' / t for t in towns)])
    frames, town_of_frame, missing = [], [], []
    for town, town_dir in zip(towns, town_dirs, strict=True):
        for image_path in sorted(town_dir.glob('*.png')):
            label_path = base / 'annotations' / 'test' / town / image_path.name
            if not label_path.is_file():
                missing.append(label_path)
            frames.append(FrameFiles(f'{town}/{image_path.stem}', image_path, label_path))
            town_of_frame.append(town)
    problems = _list(missing, 'missing label')
    if not frames and not problems:
        problems = [f'no *.png images in {", ".join(str(d) for d in town_dirs)}']
    if problems:
        raise BenchmarkDatasetError(root, problems)
    return StreetHazardsDataset(root, frames, town_of_frame, convention, strict_labels)


def coco_unknown_class_names(percent: int) -> tuple[str, ...]:
    """COCO thing classes treated as unknown in the 5 / 10 / 20 % splits (cumulative).

    Mask2Anomaly paper Section 7.1 (the EOPSN splits, `datasets/unknown/unknown_K*.txt`).
    """
    k5 = ('car', 'cow', 'pizza', 'toilet')
    k10 = (*k5, 'boat', 'tie', 'zebra', 'stop sign')
    k20 = (*k10, 'dining table', 'banana', 'bicycle', 'cake', 'sink', 'cat', 'keyboard', 'bear')
    splits = {5: k5, 10: k10, 20: k20}
    if percent not in splits:
        raise ValueError(f'unknown-class split must be one of {sorted(splits)}, got {percent}')
    return splits[percent]


@dataclass(frozen=True)
class _PanopticRecord:
    name: str
    image_path: Path
    png_path: Path
    segments: tuple[PanopticSegment, ...]


class CocoPanopticDataset(Sequence[PanopticSample]):
    """COCO panoptic images, decoded lazily.

    Attributes:
        root: dataset root.
        categories: all categories, or the open-set ones (known + "unknown") with a split.
        unknown_category_ids: ids of the classes treated as unknown (empty without a split).
        unknown_category_id: `UNKNOWN_CATEGORY_ID` with a split, else None (for
            `PanopticAccumulator`).
    """

    def __init__(
        self,
        root: Path,
        records: Sequence[_PanopticRecord],
        categories: Sequence[PanopticCategory],
        unknown_category_ids: frozenset[int],
    ) -> None:
        self.root = root
        self.records = tuple(records)
        self.categories = tuple(categories)
        self.unknown_category_ids = unknown_category_ids
        self.unknown_category_id = UNKNOWN_CATEGORY_ID if unknown_category_ids else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> PanopticSample:  # type: ignore[override]
        record = self.records[index]
        image = read_rgb(record.image_path, self.root)
        try:
            with Image.open(record.png_path) as png:
                panoptic = rgb_to_panoptic_id(np.asarray(png.convert('RGB')))
        except OSError as error:
            raise BenchmarkDatasetError(
                self.root, [f'{record.png_path}: unreadable ({error})']
            ) from error
        if panoptic.shape != image.shape[:2]:
            raise BenchmarkDatasetError(
                self.root,
                [
                    f'{record.name}: panoptic PNG {panoptic.shape} does not match image '
                    f'{image.shape[:2]}'
                ],
            )
        return PanopticSample(image, panoptic, record.segments, record.name)

    def __iter__(self) -> Iterator[PanopticSample]:
        for index in range(len(self)):
            yield self[index]


def _segments_from_json(
    infos: object, known_categories: Collection[int], where: str, problems: list[str]
) -> tuple[PanopticSegment, ...]:
    if not isinstance(infos, list):
        problems.append(f'{where}: segments_info is not a list')
        return ()
    segments = []
    for info in infos:
        try:
            segment = PanopticSegment(
                id=int(info['id']),
                category_id=int(info['category_id']),
                is_crowd=bool(info.get('iscrowd', 0)),
                area=int(info['area']) if 'area' in info else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            problems.append(f'{where}: malformed segment {info!r} ({error})')
            continue
        if segment.category_id not in known_categories:
            problems.append(
                f'{where}: segment {segment.id} has unknown category {segment.category_id}'
            )
        segments.append(segment)
    return tuple(segments)


def coco_panoptic(
    root: str | Path, split: str = 'val2017', unknown_percent: int | None = None
) -> CocoPanopticDataset:
    """COCO panoptic, optionally with an open-set unknown-class split.

    Layout (the official `panoptic_annotations_trainval2017.zip`, PNG zip extracted):

        root/annotations/panoptic_<split>.json
        root/annotations/panoptic_<split>/<image stem>.png   (or root/panoptic_<split>/)
        root/<split>/<image file_name>                       images

    Args:
        root: dataset root.
        split: 'val2017' (evaluation) or 'train2017'.
        unknown_percent: 5, 10 or 20 for the open-set protocol: the GT segments of the unknown
            classes (`coco_unknown_class_names`) are relabelled to `UNKNOWN_CATEGORY_ID` and
            `categories` holds the known classes plus "unknown"; None keeps all classes.
    """
    root = Path(root)
    json_path = root / 'annotations' / f'panoptic_{split}.json'
    images_dir = root / split
    png_dirs = [root / 'annotations' / f'panoptic_{split}', root / f'panoptic_{split}']
    if not root.is_dir():
        raise BenchmarkDatasetError(root, ['the dataset root does not exist or is not a folder'])
    problems = []
    png_dir = next((folder for folder in png_dirs if folder.is_dir()), None)
    if png_dir is None:
        problems.append(f'missing folder {png_dirs[0]} (or {png_dirs[1]})')
    if not images_dir.is_dir():
        problems.append(f'missing folder {images_dir}')
    try:
        data = json.loads(json_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        problems.append(f'{json_path}: missing or invalid JSON ({error})')
        data = None
    if data is not None and not (
        isinstance(data, dict)
        and all(key in data for key in ('images', 'annotations', 'categories'))
    ):
        problems.append(f'{json_path}: needs "images", "annotations" and "categories"')
        data = None
    if problems or data is None or png_dir is None:
        raise BenchmarkDatasetError(root, problems)

    categories = [
        PanopticCategory(int(c['id']), str(c['name']), bool(c.get('isthing', 0)))
        for c in data['categories']
    ]
    category_ids = {category.id for category in categories}
    image_files = {image['id']: image['file_name'] for image in data['images']}
    records, missing = [], []
    for annotation in data['annotations']:
        where = f'annotation of image {annotation.get("image_id")!r}'
        file_name = image_files.get(annotation.get('image_id'))
        if file_name is None or 'file_name' not in annotation:
            problems.append(f'{where}: no matching image entry or PNG file_name')
            continue
        segments = _segments_from_json(
            annotation.get('segments_info'), category_ids, where, problems
        )
        image_path, png_path = images_dir / file_name, png_dir / annotation['file_name']
        missing += [path for path in (image_path, png_path) if not path.is_file()]
        records.append(_PanopticRecord(Path(file_name).stem, image_path, png_path, segments))
    problems = problems[:_MAX_LISTED] + _list(missing, 'missing file')
    if not records and not problems:
        problems.append(f'{json_path}: no annotations')
    if problems:
        raise BenchmarkDatasetError(root, problems)

    unknown_ids: frozenset[int] = frozenset()
    if unknown_percent is not None:
        try:
            categories, unknown_ids = open_set_categories(
                categories, coco_unknown_class_names(unknown_percent)
            )
        except ValueError as error:
            raise BenchmarkDatasetError(root, [str(error)]) from error
        records = [
            _PanopticRecord(
                r.name, r.image_path, r.png_path, relabel_unknown_segments(r.segments, unknown_ids)
            )
            for r in records
        ]
    return CocoPanopticDataset(
        root, sorted(records, key=lambda r: r.name), categories, unknown_ids
    )


def open_anomaly_benchmark(name: str, root: str | Path) -> AnomalyDataset:
    """Open an anomaly benchmark by name (for `--dataset NAME=PATH` command lines).

    Names: road_anomaly, fs_lost_and_found, fs_static, smiyc_ra21, smiyc_ro21, lost_and_found,
    street_hazards.
    """
    readers = {
        'road_anomaly': road_anomaly,
        'fs_lost_and_found': fishyscapes_lost_and_found,
        'fs_static': fishyscapes_static,
        'smiyc_ra21': smiyc_road_anomaly21,
        'smiyc_ro21': smiyc_road_obstacle21,
        'lost_and_found': lost_and_found,
        'street_hazards': street_hazards,
    }
    if name not in readers:
        raise ValueError(f'unknown benchmark {name!r}; choose from {sorted(readers)}')
    return readers[name](root)
