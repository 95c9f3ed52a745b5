"""Cityscapes class metadata for the 19 known classes, read from the `cityscapesscripts` table.

Nothing here is retyped: names, train ids, thing/stuff and colours come from
`cityscapesscripts.helpers.labels.labels`, the table the official Cityscapes evaluation uses.

Label-map convention used by every m2a output (`SegmentationOutput.semantic`, the ROS
`panoptic/semantic` topic, the open-set evaluation):

- `0 .. K-1`: the known train ids (K = 19 for Cityscapes: road 0 ... bicycle 18);
- `K` (`UNKNOWN_ID`, 19 for Cityscapes): "unknown", a pixel whose anomaly score is at or above the
  open-set threshold (Eq. 14), or an unknown-thing instance in the panoptic output;
- `255` (`VOID_ID`): void / ignore, the Cityscapes trainId convention. Predictions never contain
  it; it is reserved for ground truth and for the uint8 image convention. Anomaly ground truth
  (0 inlier, 1 anomaly) uses the same value for void.

This module is the one place that defines these ids and reads the Cityscapes table; the metrics,
the bag packer and the training readers import them from here.

Allowed dependencies: standard library, numpy, cityscapesscripts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NUM_CITYSCAPES_CLASSES = 19
# The id after the known ones, so a label map stays dense: 0..18 known, 19 unknown.
UNKNOWN_ID = NUM_CITYSCAPES_CLASSES
VOID_ID = 255
"""Void / ignore label of train-id maps and of anomaly ground truth."""
UNKNOWN_NAME = 'unknown'
# Magenta is used by no Cityscapes class, so unknown pixels stand out in overlays.
UNKNOWN_COLOR = (255, 0, 255)
VOID_COLOR = (0, 0, 0)


def _cityscapes_labels() -> list:
    """The `cityscapesscripts` label table.

    Imported on first use so that the constants above (which the metrics need) cost no
    dependency: `m2a_perception.metrics` stays free of cityscapesscripts.
    """
    from cityscapesscripts.helpers.labels import labels

    return labels


@dataclass(frozen=True)
class ClassInfo:
    """One known class.

    Attributes:
        train_id: index into the model's class logits (0..18).
        name: Cityscapes label name, e.g. 'traffic light'.
        is_thing: True for countable objects with instances (person ... bicycle).
        color: (R, G, B) uint8 colour from the Cityscapes table.
    """

    train_id: int
    name: str
    is_thing: bool
    color: tuple[int, int, int]


def cityscapes_classes() -> tuple[ClassInfo, ...]:
    """The 19 Cityscapes evaluation classes, ordered by train id.

    Returns:
        A tuple whose i-th entry has `train_id == i`.

    Raises:
        ValueError: if the installed table does not hold exactly train ids 0..18.
    """
    by_train_id: dict[int, ClassInfo] = {}
    for label in _cityscapes_labels():
        # Several void labels share trainId 255 (and 'license plate' has -1); they are not classes.
        if label.ignoreInEval or not 0 <= label.trainId < VOID_ID:
            continue
        by_train_id[label.trainId] = ClassInfo(
            train_id=int(label.trainId),
            name=str(label.name),
            is_thing=bool(label.hasInstances),
            color=(int(label.color[0]), int(label.color[1]), int(label.color[2])),
        )
    if sorted(by_train_id) != list(range(NUM_CITYSCAPES_CLASSES)):
        raise ValueError(
            f'cityscapesscripts label table has train ids {sorted(by_train_id)}, '
            f'expected 0..{NUM_CITYSCAPES_CLASSES - 1}'
        )
    return tuple(by_train_id[i] for i in range(NUM_CITYSCAPES_CLASSES))


def class_names(include_unknown: bool = False) -> tuple[str, ...]:
    """Class names by train id; with `include_unknown`, 'unknown' is appended at `UNKNOWN_ID`."""
    names = tuple(info.name for info in cityscapes_classes())
    return (*names, UNKNOWN_NAME) if include_unknown else names


def thing_train_ids() -> tuple[int, ...]:
    """Train ids of thing classes (person, rider, car, truck, bus, train, motorcycle, bicycle)."""
    return tuple(info.train_id for info in cityscapes_classes() if info.is_thing)


def stuff_train_ids() -> tuple[int, ...]:
    """Train ids of stuff classes (road ... sky)."""
    return tuple(info.train_id for info in cityscapes_classes() if not info.is_thing)


def train_id_of(name: str) -> int:
    """Train id of a class by Cityscapes name (e.g. 'road' -> 0).

    Raises:
        ValueError: if `name` is not one of the 19 classes.
    """
    for info in cityscapes_classes():
        if info.name == name:
            return info.train_id
    raise ValueError(f'{name!r} is not a Cityscapes evaluation class; known: {class_names()}')


def label_id_of(name: str) -> int:
    """Cityscapes label id (the value in `*_gtFine_labelIds.png`) of any label by name.

    Unlike `train_id_of`, void labels have one too (e.g. 'ego vehicle' -> 1).

    Raises:
        ValueError: if the Cityscapes table has no label `name`.
    """
    for label in _cityscapes_labels():
        if label.name == name:
            return int(label.id)
    raise ValueError(f'{name!r} is not a Cityscapes label')


def label_id_to_train_id_table() -> np.ndarray:
    """Lookup table from Cityscapes label id to train id.

    Returns:
        (256,) uint8: entry `label.id` holds `label.trainId` for the 19 evaluated classes and
        `VOID_ID` for every other id (unlabeled, ego vehicle, ..., license plate).
    """
    table = np.full(256, VOID_ID, dtype=np.uint8)
    for info, label_id in zip(cityscapes_classes(), _evaluated_label_ids(), strict=True):
        table[label_id] = info.train_id
    return table


def label_ids_to_train_ids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes label-id map (`*_gtFine_labelIds.png`) to train ids.

    Args:
        label_ids: (H, W) integer label ids (0..33; -1 = license plate). A CPU tensor works too.

    Returns:
        (H, W) uint8 train ids 0..18, `VOID_ID` for every id that is not evaluated.

    Raises:
        ValueError: on a non-integer map or ids above 255.
    """
    ids = np.asarray(label_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f'label ids must be integers, got dtype {ids.dtype}')
    if ids.size and ids.max() > 255:
        raise ValueError(f'Cityscapes label ids are at most 33, got {ids.max()}')
    # Negative ids (license plate, -1) are not evaluated either.
    return np.where(ids < 0, VOID_ID, label_id_to_train_id_table()[np.clip(ids, 0, 255)]).astype(
        np.uint8
    )


def _evaluated_label_ids() -> tuple[int, ...]:
    """Cityscapes label id of each train id 0..18, in train-id order."""
    by_train_id = {
        int(label.trainId): int(label.id)
        for label in _cityscapes_labels()
        if not label.ignoreInEval and 0 <= label.trainId < VOID_ID
    }
    return tuple(by_train_id[i] for i in range(NUM_CITYSCAPES_CLASSES))


def semantic_palette() -> np.ndarray:
    """Colour lookup table for label maps.

    Returns:
        (256, 3) uint8 RGB: rows 0..18 the Cityscapes colours, row `UNKNOWN_ID` magenta, every
        other row (including `VOID_ID`) black. Index it with a uint8 label map.
    """
    palette = np.zeros((256, 3), dtype=np.uint8)
    for info in cityscapes_classes():
        palette[info.train_id] = info.color
    palette[UNKNOWN_ID] = UNKNOWN_COLOR
    palette[VOID_ID] = VOID_COLOR
    return palette
