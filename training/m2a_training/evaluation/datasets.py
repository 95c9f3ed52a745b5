"""Evaluation datasets: `NAME=PATH` specs opened into one frame type for every benchmark.

Names accepted by `open_eval_dataset` (and `m2a-eval --dataset NAME=PATH`):

- `smiyc_ra21`, `smiyc_ro21`, `fs_lost_and_found`, `fs_static`, `road_anomaly`,
  `lost_and_found`: the readers of `data.benchmarks`; anomaly labels 0 / 1 / 255;
- `synthetic`: a synthetic world root (with `manifest.json`) or its `anomaly_val/` folder;
  anomaly labels 0 / 1 / 255;
- `street_hazards`: `data.benchmarks.street_hazards`; anomaly labels and DenseHybrid's 12-class
  open-set labels, towns t5 / t6;
- `cityscapes`: `data.cityscapes`, val split (a synthetic world root also works); 19 trainIds and
  panoptic ground truth from `*_gtFine_instanceIds.png`;
- `coco`, `coco_k5`, `coco_k10`, `coco_k20`: `data.benchmarks.coco_panoptic` (val2017);
  panoptic, with the K % unknown-class split.

Every frame is an `EvalFrame`; which fields are set depends on the dataset. Which metrics can be
computed also depends on the model: semantic metrics need as many model classes as the ground
truth has (19 for Cityscapes, 12 for StreetHazards' open-set protocol), panoptic metrics a
model class for every known category (`EvalDataset.model_support`).

Allowed dependencies: numpy, m2a_perception (metrics, classes), m2a_training.data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m2a_perception.classes import VOID_ID, cityscapes_classes, label_id_to_train_id_table
from m2a_perception.metrics.component import OBSTACLE_TRACK, ComponentTrack
from m2a_perception.metrics.panoptic import (
    UNKNOWN_CATEGORY_ID,
    PanopticCategory,
    PanopticSegment,
    open_set_categories,
)
from m2a_training.data.benchmarks import (
    STREETHAZARDS_OPEN_SET_CLASSES,
    AnomalyDataset,
    BenchmarkDatasetError,
    CocoPanopticDataset,
    StreetHazardsConvention,
    StreetHazardsDataset,
    coco_panoptic,
    open_anomaly_benchmark,
    smiyc_road_anomaly21,
    street_hazards,
)
from m2a_training.data.cityscapes import (
    INSTANCE_SUFFIX,
    LABEL_SUFFIX,
    CityscapesRecord,
    DatasetError,
    find_cityscapes_records,
    read_cityscapes_sample,
)

ANOMALY_BENCHMARKS = (
    'smiyc_ra21',
    'smiyc_ro21',
    'fs_lost_and_found',
    'fs_static',
    'road_anomaly',
    'lost_and_found',
)
"""Pixel-anomaly benchmarks in the column order of the paper's Table 1."""

COCO_SPLITS = {'coco': None, 'coco_k5': 5, 'coco_k10': 10, 'coco_k20': 20}
"""COCO panoptic dataset names and their unknown-class percentage (None: closed set)."""

DATASET_NAMES = (*ANOMALY_BENCHMARKS, 'synthetic', 'street_hazards', 'cityscapes', *COCO_SPLITS)

TITLES = {
    'smiyc_ra21': 'SMIYC RA-21',
    'smiyc_ro21': 'SMIYC RO-21',
    'fs_lost_and_found': 'FS L&F',
    'fs_static': 'FS Static',
    'road_anomaly': 'Road Anomaly',
    'lost_and_found': 'Lost & Found',
    'synthetic': 'Synthetic',
    'street_hazards': 'StreetHazards',
    'cityscapes': 'Cityscapes val',
    'coco': 'COCO val',
    'coco_k5': 'COCO val K=5%',
    'coco_k10': 'COCO val K=10%',
    'coco_k20': 'COCO val K=20%',
}

SYNTHETIC_TRACK = OBSTACLE_TRACK
"""Component sizes for the synthetic anomaly set: its objects lie on the road like RO21's, and
its frames are small (the anomaly track's 500-pixel minimum would delete most predictions)."""

STREETHAZARDS_THING_IDS = (3, 9)
"""pedestrian and car among `STREETHAZARDS_OPEN_SET_CLASSES` (for a 12-class model)."""

STREETHAZARDS_REFINEMENT_IDS = (1, 2, 4, 8, 10, 11)
"""Our analogue of the official refinement ids (Cityscapes trainIds 2..10: building ... sky) for
a 12-class StreetHazards model: building, fence, pole, vegetation, wall, traffic sign; road,
road line, sidewalk, unlabeled and the things are not suppressed."""


def model_class_preset(num_classes: int) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """Thing and refinement class ids for a model's class set, None for the defaults.

    19 classes are Cityscapes trainIds (the post-processing defaults); 12 classes are
    StreetHazards' open-set classes (`STREETHAZARDS_THING_IDS`, `STREETHAZARDS_REFINEMENT_IDS`).
    Other class sets get their ids from the dataset (COCO) or from the user.
    """
    if num_classes == len(STREETHAZARDS_OPEN_SET_CLASSES):
        return STREETHAZARDS_THING_IDS, STREETHAZARDS_REFINEMENT_IDS
    return None, None


@dataclass(frozen=True)
class EvalFrame:
    """One evaluation frame; ground-truth fields are None where the dataset has none.

    Attributes:
        index: position in the dataset.
        name: frame identifier (file stem; '<town>/<stem>' on StreetHazards).
        image: (H, W, 3) uint8 RGB.
        anomaly_label: (H, W) uint8, 0 inlier, 1 anomaly, 255 void.
        semantic_label: (H, W) uint8 class index 0..K-1, K = anomaly (open-set datasets), 255
            ignored.
        panoptic_ids: (H, W) int64 segment ids, 0 = VOID.
        panoptic_segments: segments of `panoptic_ids` (unknown classes relabelled to
            `UNKNOWN_CATEGORY_ID` in the open-set splits).
        group: StreetHazards town ('t5' / 't6'), else None.
    """

    index: int
    name: str
    image: np.ndarray
    anomaly_label: np.ndarray | None = None
    semantic_label: np.ndarray | None = None
    panoptic_ids: np.ndarray | None = None
    panoptic_segments: tuple[PanopticSegment, ...] | None = None
    group: str | None = None


@dataclass(frozen=True)
class ModelSupport:
    """What a model with a given number of classes can be evaluated on for one dataset.

    Attributes:
        semantic: closed-set mIoU and open-IoU are computable.
        panoptic: PQ is computable.
        class_to_category: model class index -> panoptic category id (panoptic only).
        thing_class_ids: model classes that are things (panoptic post-processing).
        refinement_class_ids: model classes the refinement suppresses; None keeps the mode's
            default (Cityscapes trainIds).
        notes: why a metric family is skipped.
    """

    semantic: bool
    panoptic: bool
    class_to_category: tuple[int, ...] = ()
    thing_class_ids: tuple[int, ...] | None = None
    refinement_class_ids: tuple[int, ...] | None = None
    notes: tuple[str, ...] = ()


class EvalDataset:
    """Base class: a named, indexable set of `EvalFrame`s (picklable for DataLoader workers).

    Attributes:
        name: the CLI name (`DATASET_NAMES`).
        title: column title in the tables.
        root: where the data lie.
        has_anomaly: frames carry `anomaly_label`.
        component_track: SMIYC component sizes, or None (no component metrics defined).
        semantic_classes: K of `semantic_label` (None: no semantic ground truth).
        semantic_has_anomaly: `semantic_label` uses K for anomalies (StreetHazards).
        panoptic_categories: categories of the panoptic ground truth (None: no panoptic).
        unknown_category_id: the unknown category of the open-set panoptic protocol, or None.
        groups: per-frame group (StreetHazards towns), or None.
    """

    name: str
    title: str
    root: Path
    has_anomaly: bool = False
    component_track: ComponentTrack | None = None
    semantic_classes: int | None = None
    semantic_has_anomaly: bool = False
    panoptic_categories: tuple[PanopticCategory, ...] | None = None
    unknown_category_id: int | None = None
    groups: tuple[str, ...] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def load(self, index: int) -> EvalFrame:
        """Decode frame `index` (raises `BenchmarkDatasetError` / `DatasetError` if malformed)."""
        raise NotImplementedError

    def frame_name(self, index: int) -> str:
        """Name of frame `index` without decoding it."""
        raise NotImplementedError

    def describe(self) -> dict[str, object]:
        """JSON-ready description for the report."""
        return {
            'name': self.name,
            'title': self.title,
            'root': str(self.root),
            'num_frames': len(self),
            'component_track': None
            if self.component_track is None
            else dataclasses.asdict(self.component_track),
        }

    def model_support(self, num_classes: int) -> ModelSupport:
        """Which metrics a model with `num_classes` known classes gets on this dataset."""
        notes = []
        semantic = self.semantic_classes is not None and self.semantic_classes == num_classes
        if self.semantic_classes is not None and not semantic:
            notes.append(
                f'semantic metrics skipped: the ground truth has {self.semantic_classes} '
                f'classes, the model {num_classes}'
            )
        things, refinement = model_class_preset(num_classes)
        return ModelSupport(
            semantic=semantic,
            panoptic=False,
            thing_class_ids=things,
            refinement_class_ids=refinement,
            notes=tuple(notes),
        )


class AnomalyEvalDataset(EvalDataset):
    """A pixel-anomaly benchmark (labels 0 / 1 / 255)."""

    def __init__(
        self, name: str, reader: AnomalyDataset, track: ComponentTrack | None = None
    ) -> None:
        self.name = name
        self.title = TITLES.get(name, name)
        self.root = reader.root
        self.reader = reader
        self.has_anomaly = True
        self.component_track = track if track is not None else reader.component_track

    def __len__(self) -> int:
        return len(self.reader)

    def frame_name(self, index: int) -> str:
        return self.reader.frames[index].name

    def load(self, index: int) -> EvalFrame:
        sample = self.reader[index]
        return EvalFrame(index, sample.name, sample.image, anomaly_label=sample.label)


class StreetHazardsEvalDataset(EvalDataset):
    """StreetHazards test: anomaly labels (reader convention) and DenseHybrid's open-set labels."""

    def __init__(self, reader: StreetHazardsDataset) -> None:
        self.name = 'street_hazards'
        self.title = TITLES['street_hazards']
        self.root = reader.root
        self.reader = reader
        self.has_anomaly = True
        self.component_track = None
        self.semantic_classes = len(STREETHAZARDS_OPEN_SET_CLASSES)
        self.semantic_has_anomaly = True
        self.groups = reader.towns

    def __len__(self) -> int:
        return len(self.reader)

    def frame_name(self, index: int) -> str:
        return self.reader.frames[index].name

    def load(self, index: int) -> EvalFrame:
        anomaly = self.reader[index]
        open_set = self.reader.open_set_sample(index)
        return EvalFrame(
            index,
            anomaly.name,
            anomaly.image,
            anomaly_label=anomaly.label,
            semantic_label=open_set.label,
            group=open_set.town,
        )

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info['convention'] = self.reader.convention
        info['frames_per_town'] = {t: self.groups.count(t) for t in sorted(set(self.groups))}
        return info


def cityscapes_categories() -> tuple[PanopticCategory, ...]:
    """The 19 evaluated classes as panoptic categories with trainIds as ids
    (cityscapesScripts `createPanopticImgs.py --use-train-id`)."""
    return tuple(
        PanopticCategory(info.train_id, info.name, info.is_thing) for info in cityscapes_classes()
    )


def cityscapes_panoptic_target(
    semantic: np.ndarray, instance: np.ndarray, thing_ids: frozenset[int]
) -> tuple[np.ndarray, tuple[PanopticSegment, ...]]:
    """Panoptic ground truth as cityscapesScripts' `createPanopticImgs.py` builds it.

    Args:
        semantic: (H, W) uint8 trainIds (255 = not evaluated).
        instance: (H, W) int `*_gtFine_instanceIds.png` values: label id for stuff and for thing
            regions without instances, label id * 1000 + k for thing instances.
        thing_ids: trainIds of thing classes.

    Returns:
        (H, W) int64 segment ids (the instance-id values; 0 where not evaluated) and the
        segments: category = trainId, crowd = thing pixels without an instance id (< 1000), area
        counted from the map (the script writes the mask's pixel count).
    """
    ids = np.where(semantic == VOID_ID, 0, instance).astype(np.int64)
    values, first = np.unique(ids.ravel(), return_index=True)
    flat_semantic = semantic.ravel()
    segments = []
    for segment_id, position in zip(values.tolist(), first.tolist(), strict=True):
        if segment_id == 0:
            continue
        category = int(flat_semantic[position])
        crowd = category in thing_ids and segment_id < 1000
        segments.append(PanopticSegment(segment_id, category, is_crowd=crowd))
    return ids, tuple(segments)


class CityscapesEvalDataset(EvalDataset):
    """Cityscapes val: 19-class trainIds and, where instance files exist, panoptic ground truth.

    Panoptic metrics follow the open-set protocol with no unknown class in the ground truth:
    predicted unknown things form the 'unknown' category (all FPs), so known-class PQ is paid
    for every pixel the model gives to an unknown object.
    """

    def __init__(self, root: Path, records: list[CityscapesRecord], with_panoptic: bool) -> None:
        self.name = 'cityscapes'
        self.title = TITLES['cityscapes']
        self.root = root
        self.records = records
        self.semantic_classes = len(cityscapes_classes())
        self.train_id_lut = label_id_to_train_id_table()
        self.thing_ids = frozenset(i.train_id for i in cityscapes_classes() if i.is_thing)
        if with_panoptic:
            categories, _ = open_set_categories(cityscapes_categories(), ())
            self.panoptic_categories = tuple(categories)
            self.unknown_category_id = UNKNOWN_CATEGORY_ID

    def __len__(self) -> int:
        return len(self.records)

    def frame_name(self, index: int) -> str:
        return self.records[index].name

    def load(self, index: int) -> EvalFrame:
        sample = read_cityscapes_sample(self.records[index], self.train_id_lut)
        ids = segments = None
        if self.panoptic_categories is not None and sample.instance is not None:
            ids, segments = cityscapes_panoptic_target(
                sample.semantic, sample.instance, self.thing_ids
            )
        return EvalFrame(
            index,
            sample.name,
            sample.image,
            semantic_label=sample.semantic,
            panoptic_ids=ids,
            panoptic_segments=segments,
        )

    def model_support(self, num_classes: int) -> ModelSupport:
        support = super().model_support(num_classes)
        if self.panoptic_categories is None:
            return dataclasses.replace(
                support, notes=(*support.notes, 'panoptic skipped: no *_instanceIds.png files')
            )
        if not support.semantic:
            return support
        return dataclasses.replace(
            support, panoptic=True, class_to_category=tuple(range(num_classes))
        )


class CocoEvalDataset(EvalDataset):
    """COCO panoptic val, optionally with the 5 / 10 / 20 % unknown-class split (EOPSN).

    Model class i is the i-th known category in increasing id order (detectron2's contiguous
    ids of a model trained without the unknown classes).
    """

    def __init__(self, name: str, reader: CocoPanopticDataset) -> None:
        self.name = name
        self.title = TITLES.get(name, name)
        self.root = reader.root
        self.reader = reader
        self.panoptic_categories = reader.categories
        self.unknown_category_id = reader.unknown_category_id

    def __len__(self) -> int:
        return len(self.reader)

    def frame_name(self, index: int) -> str:
        return self.reader.records[index].name

    def load(self, index: int) -> EvalFrame:
        sample = self.reader[index]
        return EvalFrame(
            index,
            sample.name,
            sample.image,
            panoptic_ids=sample.panoptic,
            panoptic_segments=sample.segments,
        )

    def known_categories(self) -> list[PanopticCategory]:
        """Known categories in increasing id order (= model class order)."""
        return sorted(
            (c for c in self.panoptic_categories or () if c.id != UNKNOWN_CATEGORY_ID),
            key=lambda c: c.id,
        )

    def model_support(self, num_classes: int) -> ModelSupport:
        known = self.known_categories()
        if num_classes != len(known):
            return ModelSupport(
                semantic=False,
                panoptic=False,
                notes=(
                    f'panoptic skipped: {len(known)} known categories but the model has '
                    f'{num_classes} classes (a COCO model trained on the known classes needed)',
                ),
            )
        things = tuple(i for i, c in enumerate(known) if c.is_thing)
        stuff = tuple(i for i, c in enumerate(known) if not c.is_thing)
        return ModelSupport(
            semantic=False,
            panoptic=True,
            class_to_category=tuple(c.id for c in known),
            thing_class_ids=things,
            refinement_class_ids=stuff or None,
        )

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info['unknown_percent'] = COCO_SPLITS.get(self.name)
        info['unknown_category_ids'] = sorted(self.reader.unknown_category_ids)
        return info


def parse_dataset_spec(text: str) -> tuple[str, Path]:
    """'NAME=PATH' -> (name, path).

    Raises:
        ValueError: malformed spec or unknown name.
    """
    name, separator, path = text.partition('=')
    name = name.strip()
    if not separator or not name or not path:
        raise ValueError(f'--dataset expects NAME=PATH, got {text!r}')
    if name not in DATASET_NAMES:
        raise ValueError(f'unknown dataset {name!r}; choose from {", ".join(DATASET_NAMES)}')
    return name, Path(path)


def _open_cityscapes(root: Path) -> CityscapesEvalDataset:
    if (root / 'manifest.json').is_file() and (root / 'cityscapes').is_dir():
        root = root / 'cityscapes'  # a synthetic world root
    records = find_cityscapes_records(root, 'val', check_headers=False)
    instance_paths = [
        r.label_path.with_name(r.label_path.name.replace(LABEL_SUFFIX, INSTANCE_SUFFIX))
        for r in records
    ]
    with_panoptic = all(path.is_file() for path in instance_paths)
    if with_panoptic:
        records = [
            dataclasses.replace(r, instance_path=path)
            for r, path in zip(records, instance_paths, strict=True)
        ]
    return CityscapesEvalDataset(root, records, with_panoptic)


def _open_synthetic(root: Path) -> AnomalyEvalDataset:
    folder = root / 'anomaly_val' if (root / 'anomaly_val').is_dir() else root
    try:
        reader = smiyc_road_anomaly21(folder)
    except BenchmarkDatasetError as error:
        raise BenchmarkDatasetError(
            root,
            [
                *error.problems,
                'synthetic=PATH expects a world root (with anomaly_val/) or its anomaly_val/ '
                'folder (images/ + labels_masks/)',
            ],
        ) from error
    return AnomalyEvalDataset('synthetic', reader, SYNTHETIC_TRACK)


def open_eval_dataset(
    name: str,
    root: str | Path,
    *,
    streethazards_convention: StreetHazardsConvention = 'mask2anomaly',
) -> EvalDataset:
    """Open a dataset by its CLI name.

    Raises:
        ValueError: unknown name.
        BenchmarkDatasetError, DatasetError: missing or malformed data (message lists problems).
    """
    root = Path(root)
    if name in ANOMALY_BENCHMARKS:
        return AnomalyEvalDataset(name, open_anomaly_benchmark(name, root))
    if name == 'synthetic':
        return _open_synthetic(root)
    if name == 'street_hazards':
        return StreetHazardsEvalDataset(street_hazards(root, convention=streethazards_convention))
    if name == 'cityscapes':
        return _open_cityscapes(root)
    if name in COCO_SPLITS:
        return CocoEvalDataset(name, coco_panoptic(root, 'val2017', COCO_SPLITS[name]))
    raise ValueError(f'unknown dataset {name!r}; choose from {", ".join(DATASET_NAMES)}')


DATASET_ERRORS = (BenchmarkDatasetError, DatasetError)
"""Exceptions the readers raise for missing or malformed data."""
