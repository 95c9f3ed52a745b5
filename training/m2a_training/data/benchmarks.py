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
import os
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
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
    overlay_path: Path | None = None
    """Fishyscapes Static `*_rgb.npz`: an int overlay added to the image, clipped to 0..255."""


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
                    'pass --unknown-labels void (strict_labels=False) to treat them as void'
                ],
            )
        mapped[unexpected] = VOID_ID
    return mapped.astype(np.uint8)


def _describe(values: list[int]) -> str:
    if len(values) > 6 and values == list(range(values[0], values[-1] + 1)):
        return f'{values[0]}..{values[-1]}'
    return str(values)


def apply_overlay(image: np.ndarray, overlay_path: Path, root: Path) -> np.ndarray:
    """Blend a Fishyscapes Static overlay into its Cityscapes image.

    bdl-benchmark `fishyscapes_tfds.py` (`_generate_examples`): `np.load(npz)['rgb']` as int is
    added to the decoded Cityscapes image and clipped to 0..255.

    Args:
        image: (H, W, 3) uint8 Cityscapes image.
        overlay_path: `*_rgb.npz` with an (H, W, 3) integer array `rgb`.

    Returns:
        (H, W, 3) uint8 blended image.
    """
    try:
        with np.load(overlay_path, allow_pickle=False) as archive:
            overlay = archive['rgb']
    except (OSError, KeyError, ValueError) as error:
        raise BenchmarkDatasetError(
            root, [f'{overlay_path}: unreadable overlay, expected an npz with "rgb" ({error})']
        ) from error
    if overlay.shape != image.shape:
        raise BenchmarkDatasetError(
            root, [f'{overlay_path}: overlay {overlay.shape} does not match image {image.shape}']
        )
    return np.clip(image.astype(np.int64) + overlay.astype(np.int64), 0, 255).astype(np.uint8)


def outside_roots(paths: Iterable[Path | None], roots: Sequence[Path]) -> list[Path]:
    """The `paths` that lead outside every one of `roots` once `..` is applied.

    The check is on the names (`os.path.normpath`), not on resolved links: a `frame_list.json`
    entry `../../outside.png` is caught, while a dataset folder that is a symbolic link to
    another disk (a common arrangement) stays readable.
    """
    absolute_roots = [Path(os.path.normpath(os.path.abspath(root))) for root in roots]
    return [
        path
        for path in paths
        if path is not None
        and not any(
            Path(os.path.normpath(os.path.abspath(path))).is_relative_to(root)
            for root in absolute_roots
        )
    ]


def frame_paths(frames: Sequence[FrameFiles]) -> Iterator[Path | None]:
    """Every file of `frames` (None where a frame has no overlay)."""
    for frame in frames:
        yield from (frame.image_path, frame.label_path, frame.overlay_path)


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
        if frame.overlay_path is not None:
            image = apply_overlay(image, frame.overlay_path, self.root)
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
    image_roots: Sequence[Path] = (),
) -> AnomalyDataset:
    """Check and build; every file must lie inside `root` (or an image tree in `image_roots`)."""
    if problems:
        raise BenchmarkDatasetError(root, problems)
    outside = outside_roots(frame_paths(frames), [root, *image_roots])
    if outside:
        raise BenchmarkDatasetError(root, _list(outside, 'path leaves the dataset root, refused'))
    return AnomalyDataset(name, root, frames, _lut(mapping), track, strict_labels)


_BINARY = {0: 0, 1: 1, VOID_ID: VOID_ID}


def _road_anomaly_base(root: Path) -> Path:
    """The folder holding `frame_list.json`: `root` itself, or the `RoadAnomaly_jpg/` or
    `RoadAnomaly/` folder inside it (the parent folder RbA documents)."""
    for base in (root, root / 'RoadAnomaly_jpg', root / 'RoadAnomaly'):
        if (base / 'frame_list.json').is_file():
            return base
    return root


def road_anomaly(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """Road Anomaly (Lis et al., ICCV 2019), 60 frames.

    Layouts (detected in this order):

        root/images/<stem>.jpg + root/labels_masks/<stem>.png   the Mask2Anomaly bundle

        root/frame_list.json                      list of image file names (the official zip;
        root/frames/<stem>.<webp|jpg>             root may also be its parent folder holding
        root/frames/<stem>.labels/labels_semantic.png   RoadAnomaly_jpg/ or RoadAnomaly/)

    Remap: 2 -> 1 (anomaly), 0 -> 0; no void. Names in `frame_list.json` that lead outside the
    dataset folder are refused.
    """
    root = Path(root)
    mapping = {0: 0, 1: 1, 2: 1}
    if (root / 'images').is_dir():
        frames, problems = _frames_from_label_masks(root, require_all=True)
        return _finish(
            'road_anomaly', root, frames, problems, mapping, ANOMALY_TRACK, strict_labels
        )
    base = _road_anomaly_base(root)
    list_path = base / 'frame_list.json'
    if not list_path.is_file():
        raise BenchmarkDatasetError(
            root,
            [
                'accepted layouts: frame_list.json + frames/ (in the folder, or in its '
                'RoadAnomaly_jpg/ or RoadAnomaly/ subfolder), or images/ + labels_masks/; found '
                f'neither (folder holds {sorted(p.name for p in root.iterdir())[:8]})'
                if root.is_dir()
                else 'the dataset root does not exist or is not a folder'
            ],
        )
    _require_dirs(base, [base / 'frames'])
    try:
        names = json.loads(list_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BenchmarkDatasetError(
            root, [f'{list_path}: missing or invalid JSON ({error})']
        ) from error
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BenchmarkDatasetError(root, [f'{list_path}: expected a JSON list of file names'])
    frames, missing = [], []
    for file_name in sorted(names):
        image_path = base / 'frames' / file_name
        label_path = image_path.with_name(f'{image_path.stem}.labels') / 'labels_semantic.png'
        frames.append(FrameFiles(Path(file_name).stem, image_path, label_path))
    outside = outside_roots(frame_paths(frames), [base])
    if outside:
        raise BenchmarkDatasetError(
            root, _list(outside, f'{list_path} names a path outside the dataset root, refused')
        )
    for frame in frames:
        missing += [p for p in (frame.image_path, frame.label_path) if not p.is_file()]
    return _finish(
        'road_anomaly',
        base,
        frames,
        _list(missing, 'missing file'),
        mapping,
        ANOMALY_TRACK,
        strict_labels,
    )


LAF_IMAGE_EXTENSIONS = ('png', 'webp', 'jpg')
"""Image formats of the Lost & Found tree, in the order SMIYC's `DatasetLostAndFound.discover`
tries them (`tracks.py`): the first one with any image wins."""

_LAF_FRAME = re.compile(r'(\d{2}_.+)_(\d{6})_(\d{6})')


def _laf_image_glob(images_dir: Path) -> tuple[str, list[Path]]:
    """(extension, sorted `*/*_leftImg8bit.<ext>` files) for the first extension present."""
    for extension in LAF_IMAGE_EXTENSIONS:
        files = sorted(images_dir.glob(f'*/*_leftImg8bit.{extension}'))
        if files:
            return extension, files
    return LAF_IMAGE_EXTENSIONS[0], []


def laf_image_path(laf_root: Path, frame: str) -> Path | None:
    """The Lost & Found image of `frame` ('04_Maurener_Weg_8_000000_000030') in the train or
    test split, any of `LAF_IMAGE_EXTENSIONS`; None if absent."""
    match = _LAF_FRAME.fullmatch(frame)
    if match is None:
        return None
    for split in ('train', 'test'):
        for extension in LAF_IMAGE_EXTENSIONS:
            sequence = laf_root / 'leftImg8bit' / split / match.group(1)
            path = sequence / f'{frame}_leftImg8bit.{extension}'
            if path.is_file():
                return path
    return None


def _find_laf_root(root: Path, laf_root: Path | None) -> Path | None:
    if laf_root is not None:
        return laf_root
    siblings = (root.parent / 'LostAndFound', root.parent / 'lost_and_found')
    for candidate in (root, root.parent, *siblings):
        if (candidate / 'leftImg8bit').is_dir():
            return candidate
    return None


_FISHY_RELEASED = re.compile(r'\d+_(.+)_labels\.png')
_FISHY_SMIYC = re.compile(r'(.+)_fishy-labels\.png')


def fishyscapes_lost_and_found(
    root: str | Path, *, laf_root: str | Path | None = None, strict_labels: bool = True
) -> AnomalyDataset:
    """Fishyscapes Lost & Found validation (100 frames, labels 0 / 1 / 255).

    Label layouts (detected):

        root/fishyscapes_lostandfound/<idx>_<laf frame>_labels.png   the released zip
        (or those files directly in root)                            (bdl-benchmark)
        root/labels/val/<laf frame>_fishy-labels.png                 SMIYC `FishyLAFAnomaly-val`
        root/images/<stem>.png + root/labels_masks/<stem>.png        Mask2Anomaly bundle

    Images of the first two come from the Lost & Found tree
    (`<laf_root>/leftImg8bit/{train,test}/<sequence>/<frame>_leftImg8bit.{png,webp,jpg}`), as
    both official loaders take them; `laf_root` defaults to root, its parent or a sibling
    `LostAndFound/` holding `leftImg8bit/`. A hand-made `root/laf_images/` folder also works.
    Pixels other than 0 / 1 are void (bdl-benchmark). Anomaly-track component sizes (SMIYC).
    """
    root = Path(root)
    name = 'fishyscapes_lost_and_found'
    if (root / 'images').is_dir():
        frames, problems = _frames_from_label_masks(root, require_all=True)
        return _finish(name, root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels)
    if not root.is_dir():
        raise BenchmarkDatasetError(root, ['the dataset root does not exist or is not a folder'])
    candidates = [
        (root / 'fishyscapes_lostandfound', _FISHY_RELEASED),
        (root / 'labels' / 'val', _FISHY_SMIYC),
        (root, _FISHY_RELEASED),
    ]
    labels_dir, pattern = next(
        ((folder, regex) for folder, regex in candidates
         if folder.is_dir() and any(regex.fullmatch(p.name) for p in folder.glob('*.png'))),
        (None, None),
    )  # fmt: skip
    if labels_dir is None or pattern is None:
        raise BenchmarkDatasetError(
            root,
            [
                'accepted layouts: fishyscapes_lostandfound/<idx>_<frame>_labels.png, '
                'labels/val/<frame>_fishy-labels.png, or images/ + labels_masks/; found none '
                f'(folder holds {sorted(p.name for p in root.iterdir())[:8]})'
            ],
        )
    laf = _find_laf_root(root, Path(laf_root) if laf_root is not None else None)
    hand_made = root / 'laf_images'
    frames, problems, missing = [], [], []
    for label_path in sorted(labels_dir.glob('*.png')):
        match = pattern.fullmatch(label_path.name)
        if match is None:
            continue
        frame = match.group(1)
        image_path = hand_made / f'{frame}_leftImg8bit.png'
        if not image_path.is_file() and laf is not None:
            image_path = laf_image_path(laf, frame) or image_path
        if not image_path.is_file():
            missing.append(image_path)
        frames.append(FrameFiles(frame, image_path, label_path))
    if missing and laf is None and not hand_made.is_dir():
        problems.append(
            'images come from the Lost & Found tree: pass its root (--lost-and-found-root), or '
            'keep leftImg8bit/ in this folder, its parent or a sibling LostAndFound/'
        )
    problems += _list(missing, 'missing image')
    image_roots = [p for p in (laf,) if p is not None]
    return _finish(
        name, root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels, image_roots
    )


def _cityscapes_image_path(cityscapes_root: Path, frame: str) -> Path:
    """`leftImg8bit/val/<city>/<frame>_leftImg8bit.png` ('frankfurt_000000_000294')."""
    city = frame.split('_')[0]
    return cityscapes_root / 'leftImg8bit' / 'val' / city / f'{frame}_leftImg8bit.png'


def _find_cityscapes_root(root: Path, cityscapes_root: Path | None) -> Path | None:
    if cityscapes_root is not None:
        return cityscapes_root
    for candidate in (root, root.parent, root.parent / 'cityscapes'):
        if (candidate / 'leftImg8bit' / 'val').is_dir():
            return candidate
    return None


def fishyscapes_static(
    root: str | Path,
    version: int | None = None,
    *,
    cityscapes_root: str | Path | None = None,
    strict_labels: bool = True,
) -> AnomalyDataset:
    """Fishyscapes Static validation (30 frames, labels 0 / 1 / 255).

    Layouts (detected):

        root/fs_val_v<N>/<idx>_<cityscapes frame>_labels.png   the released fs_val_vN.zip:
        root/fs_val_v<N>/<idx>_<cityscapes frame>_rgb.npz      labels and int overlays `rgb`
        (or those files directly in root)

        root/fs_val_v<N>/<prefix>labels.png +                  pre-blended images
        root/fs_static_images_v<N>/<prefix>rgb.png

        root/images/<stem>.jpg + root/labels_masks/<stem>.png    Mask2Anomaly bundle

    Released overlays are added to the Cityscapes val image
    (`<cityscapes_root>/leftImg8bit/val/<city>/<frame>_leftImg8bit.png`) and clipped, as
    bdl-benchmark's `fishyscapes_tfds.py` does; `cityscapes_root` defaults to root, its parent
    or a sibling `cityscapes/`.

    Args:
        root: dataset root.
        version: overlay version; None picks the only `fs_val_v*` folder present. Report it:
            the versions differ.
        cityscapes_root: Cityscapes root for the released overlays.
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
    versions = sorted(p.name for p in root.glob('fs_val_v*') if p.is_dir())
    if version is None and versions:
        if len(versions) != 1:
            raise BenchmarkDatasetError(
                root,
                [f'found overlay versions {versions}; pass version=N (--fs-static-version N)'],
            )
        version = int(versions[0].removeprefix('fs_val_v'))
    if version is not None:
        labels_dir = root / f'fs_val_v{version}'
        name = f'fishyscapes_static_v{version}'
        if not labels_dir.is_dir():
            raise BenchmarkDatasetError(
                root, [f'no folder fs_val_v{version} (overlay versions present: {versions})']
            )
    elif any(root.glob('*_labels.png')):
        labels_dir, name = root, 'fishyscapes_static'
    else:
        raise BenchmarkDatasetError(
            root,
            [
                'accepted layouts: fs_val_v<N>/ (released *_labels.png + *_rgb.npz, or with '
                'fs_static_images_v<N>/), *_labels.png + *_rgb.npz in the folder, or images/ + '
                'labels_masks/; found none (folder holds '
                f'{sorted(p.name for p in root.iterdir())[:8]})'
            ],
        )
    blended = root / f'fs_static_images_v{version}'
    cityscapes = _find_cityscapes_root(root, Path(cityscapes_root) if cityscapes_root else None)
    frames, problems, missing = [], [], []
    for label_path in sorted(labels_dir.glob('*labels.png')):
        prefix = label_path.name[: -len('labels.png')]
        if blended.is_dir():
            image_path = blended / f'{prefix}rgb.png'
            missing += [] if image_path.is_file() else [image_path]
            name_of_frame = prefix.rstrip('_') or label_path.stem
            frames.append(FrameFiles(name_of_frame, image_path, label_path))
            continue
        match = _FISHY_RELEASED.fullmatch(label_path.name)
        if match is None:
            problems.append(f'{label_path}: name is not <index>_<cityscapes frame>_labels.png')
            continue
        overlay_path = labels_dir / f'{prefix}rgb.npz'
        if cityscapes is None:
            image_path = Path('leftImg8bit') / 'val' / match.group(1)
        else:
            image_path = _cityscapes_image_path(cityscapes, match.group(1))
        missing += [p for p in (image_path, overlay_path) if not p.is_file()]
        frames.append(FrameFiles(match.group(1), image_path, label_path, overlay_path))
    if missing and cityscapes is None and not blended.is_dir():
        problems.append(
            'the released overlays are added to Cityscapes val images: pass its root '
            '(--cityscapes-root), or keep leftImg8bit/val/ in this folder, its parent or a '
            'sibling cityscapes/'
        )
    problems = problems[:_MAX_LISTED] + _list(missing, 'missing file')
    image_roots = [p for p in (cityscapes,) if p is not None]
    return _finish(
        name, root, frames, problems, _BINARY, ANOMALY_TRACK, strict_labels, image_roots
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


SMIYC_RO21_VALIDATION_EXCLUDED = (
    'validation_19', *(f'validation_{n}' for n in range(21, 30))
)  # fmt: skip
"""Frame-name prefixes SMIYC's `ObstacleTrack-validation` drops (`datasets/tracks.py`,
`DatasetObstacleTrack`, `exclude_prefix`, matched with `str.startswith`): 40 labelled
validation frames -> 30."""


def smiyc_road_obstacle21(root: str | Path, *, strict_labels: bool = True) -> AnomalyDataset:
    """SegmentMeIfYouCan RoadObstacle21 (`dataset_ObstacleTrack`), `ObstacleTrack-validation`.

    Layout:

        root/images/<stem>.webp                             images
        root/labels_masks/<stem>_labels_semantic.png        0 road / 1 obstacle / 255 off-road
        (or root/labels_masks/<stem>.png, Mask2Anomaly bundle)

    Frames without a label (hidden test labels) are skipped, and so are the validation frames
    SMIYC excludes (`SMIYC_RO21_VALIDATION_EXCLUDED`). Obstacle-track component sizes.
    """
    root = Path(root)
    frames, problems = _frames_from_label_masks(root, require_all=False)
    kept = [f for f in frames if not f.name.startswith(SMIYC_RO21_VALIDATION_EXCLUDED)]
    if frames and not kept and not problems:
        problems = ['every labelled frame is excluded by the ObstacleTrack-validation split']
    return _finish(
        'smiyc_road_obstacle21', root, kept, problems, _BINARY, OBSTACLE_TRACK, strict_labels
    )


LAF_TEST_INVALID_INDICES = (
    17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793,
)  # fmt: skip
"""Positions (in the name-sorted 1203-frame test split) of the frames with empty labels that
SMIYC's `LostAndFound-testValid` / `-testNoKnown` drop (`tracks.py`, `exclude_frame_indices`)."""

LAF_TEST_NO_KNOWN_EXCLUDED = (
    '15_Rechbergstr_Deckenpfronn',  # children
    '01_Hanns_Klemm_Str_45_000006',  # bicycle
    '01_Hanns_Klemm_Str_45_000007',  # bicycle
    '10_Schlossberg_9_000004',  # bicycle
)
"""Frame-name prefixes `LostAndFound-testNoKnown` drops (`tracks.py`, `exclude_prefix`)."""

LAF_TEST_FRAMES = 1203
LAF_SPLITS = ('testNoKnown', 'test', 'train')


def lost_and_found(
    root: str | Path,
    split: str = 'test',
    frame_names: Collection[str] | None = None,
    *,
    strict_labels: bool = True,
) -> AnomalyDataset:
    """Lost & Found (Pinggera et al. 2016) in its Cityscapes-style layout.

    Layout (the official `leftImg8bit.zip` + `gtCoarse.zip`):

        root/leftImg8bit/<split>/<sequence>/<frame>_leftImg8bit.<png|webp|jpg>
        root/gtCoarse/<split>/<sequence>/<frame>_gtCoarse_labelIds.png
            0 unlabelled, 1 free road, 2..200 obstacle classes

    Remap (SMIYC `LAF_CLASSES`, Mask2Anomaly script): 0 -> 255, 1 -> 0, 2..200 -> 1.

    Args:
        root: dataset root.
        split: 'testNoKnown' (SMIYC's leaderboard split, 1043 frames: the 1203 test frames
            minus `LAF_TEST_INVALID_INDICES` and `LAF_TEST_NO_KNOWN_EXCLUDED`; needs the full
            test split, as its positional exclusions do), 'test' (1203) or 'train' (1036).
        frame_names: keep only these frames; names missing from the dataset are errors.
        strict_labels: raise on labels above 200.
    """
    if split not in LAF_SPLITS:
        raise ValueError(f'Lost & Found split must be one of {LAF_SPLITS}, got {split!r}')
    root = Path(root)
    folder = 'test' if split == 'testNoKnown' else split
    images_dir, labels_dir = root / 'leftImg8bit' / folder, root / 'gtCoarse' / folder
    _require_dirs(root, [images_dir, labels_dir])
    extension, image_paths = _laf_image_glob(images_dir)
    suffix = f'_leftImg8bit.{extension}'
    if split == 'testNoKnown':
        if len(image_paths) != LAF_TEST_FRAMES:
            raise BenchmarkDatasetError(
                root,
                [
                    f'LostAndFound-testNoKnown drops frames by position in the full '
                    f'{LAF_TEST_FRAMES}-frame test split, found {len(image_paths)} frames in '
                    f'{images_dir}; complete it or use --lost-and-found-split test'
                ],
            )
        invalid = set(LAF_TEST_INVALID_INDICES)
        image_paths = [
            path
            for index, path in enumerate(image_paths)
            if index not in invalid and not path.name.startswith(LAF_TEST_NO_KNOWN_EXCLUDED)
        ]
    frames, missing = [], []
    for image_path in image_paths:
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
        problems = [f'no */*_leftImg8bit.{{png,webp,jpg}} images in {images_dir}']
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
    problems += _list(
        outside_roots(frame_paths(frames), [root]), 'path leaves the dataset root, refused'
    )
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
    escaping = outside_roots((p for r in records for p in (r.image_path, r.png_path)), [root])
    problems += _list(escaping, 'path leaves the dataset root, refused')
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


@dataclass(frozen=True)
class BenchmarkOptions:
    """Reader options a command line passes to `open_anomaly_benchmark`.

    Attributes:
        strict_labels: raise on unexpected label values (False: they become void).
        lost_and_found_split: `LAF_SPLITS` entry for `lost_and_found`.
        lost_and_found_root: Lost & Found tree for the Fishyscapes L&F images (None: detected).
        cityscapes_root: Cityscapes tree for the Fishyscapes Static overlays (None: detected).
        fs_static_version: overlay version `fs_val_v<N>` (None: the only one present).
    """

    strict_labels: bool = True
    lost_and_found_split: str = 'testNoKnown'
    lost_and_found_root: Path | None = None
    cityscapes_root: Path | None = None
    fs_static_version: int | None = None


def open_anomaly_benchmark(
    name: str, root: str | Path, options: BenchmarkOptions | None = None
) -> AnomalyDataset:
    """Open an anomaly benchmark by name (for `--dataset NAME=PATH` command lines).

    Names: road_anomaly, fs_lost_and_found, fs_static, smiyc_ra21, smiyc_ro21, lost_and_found,
    street_hazards.
    """
    options = options or BenchmarkOptions()
    strict = options.strict_labels
    if name == 'road_anomaly':
        return road_anomaly(root, strict_labels=strict)
    if name == 'fs_lost_and_found':
        return fishyscapes_lost_and_found(
            root, laf_root=options.lost_and_found_root, strict_labels=strict
        )
    if name == 'fs_static':
        return fishyscapes_static(
            root,
            options.fs_static_version,
            cityscapes_root=options.cityscapes_root,
            strict_labels=strict,
        )
    if name == 'smiyc_ra21':
        return smiyc_road_anomaly21(root, strict_labels=strict)
    if name == 'smiyc_ro21':
        return smiyc_road_obstacle21(root, strict_labels=strict)
    if name == 'lost_and_found':
        return lost_and_found(root, options.lost_and_found_split, strict_labels=strict)
    if name == 'street_hazards':
        return street_hazards(root, strict_labels=strict)
    names = ['fs_lost_and_found', 'fs_static', 'lost_and_found', 'road_anomaly']
    names += ['smiyc_ra21', 'smiyc_ro21', 'street_hazards']
    raise ValueError(f'unknown benchmark {name!r}; choose from {names}')
