"""Cityscapes reader, mask targets and batch collation for training.

Standard on-disk layout (what `cityscapesscripts` and the official download produce):

    root/leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png
    root/gtFine/<split>/<city>/<stem>_gtFine_labelIds.png
    root/gtFine/<split>/<city>/<stem>_gtFine_instanceIds.png   (panoptic mode)

Label ids are mapped to the 19 train ids with `m2a_perception.classes.label_id_to_train_id_table`
(the `cityscapesscripts.helpers.labels` table; everything else becomes 255, void). A missing or
malformed dataset raises one `DatasetError` that lists every problem found.

Target modes (`TargetMode`):
- 'semantic': one mask per train id present (the official mapper);
- 'mask_split': every class mask split into its 8-connected components, one target each (CSL's
  mask split, for open-set panoptic training without instance labels);
- 'panoptic': one mask per stuff class and one per thing instance from the instance ids; thing
  pixels without an instance id (Cityscapes "group" regions, crowd in COCO terms) get no mask,
  as in Mask2Former's panoptic mapper.
Void (255) and pasted outlier pixels (254) are in no target mask in any mode.

Allowed dependencies: numpy, Pillow, scipy, torch, m2a_perception.classes,
m2a_perception.preprocess.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from m2a_perception.classes import (
    NUM_CITYSCAPES_CLASSES,
    VOID_ID,
    label_id_to_train_id_table,
    thing_train_ids,
)
from m2a_perception.preprocess import normalize_and_pad
from m2a_training.data.augment import OUTLIER_LABEL, AnnotatedImage, Transform
from m2a_training.losses.targets import MaskTargets

logger = logging.getLogger(__name__)

TargetMode = Literal['semantic', 'mask_split', 'panoptic']
TARGET_MODES = ('semantic', 'mask_split', 'panoptic')
IMAGE_SUFFIX = '_leftImg8bit.png'
LABEL_SUFFIX = '_gtFine_labelIds.png'
INSTANCE_SUFFIX = '_gtFine_instanceIds.png'
# Listing every missing file of a broken 3000-image dataset helps nobody; show the first few.
_MAX_LISTED = 10


class DatasetError(ValueError):
    """A dataset is missing or malformed; the message lists every problem found."""

    def __init__(self, root: Path, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = '\n'.join(f'  - {problem}' for problem in self.problems)
        super().__init__(
            f'dataset at {root} is not usable ({len(self.problems)} problems):\n{lines}'
        )


@dataclass(frozen=True)
class CityscapesRecord:
    """Paths of one image and its annotation files."""

    name: str
    image_path: Path
    label_path: Path
    instance_path: Path | None


def _list_problems(paths: Sequence[Path], what: str) -> list[str]:
    shown = [f'missing {what}: {path}' for path in paths[:_MAX_LISTED]]
    if len(paths) > _MAX_LISTED:
        shown.append(f'... and {len(paths) - _MAX_LISTED} more missing {what} files')
    return shown


def find_cityscapes_records(
    root: str | Path, split: str, *, need_instances: bool = False, check_headers: bool = True
) -> list[CityscapesRecord]:
    """Index a Cityscapes split and check that it is complete.

    Args:
        root: dataset root holding `leftImg8bit/` and `gtFine/`.
        split: 'train', 'val' or 'test'.
        need_instances: also require `*_gtFine_instanceIds.png` (panoptic mode).
        check_headers: open every file's header and check that it is a PNG of the image's size
            (cheap: no pixel data is decoded).

    Returns:
        Records sorted by name.

    Raises:
        DatasetError: listing every missing folder, missing annotation, unreadable file or size
            mismatch.
    """
    root = Path(root)
    image_dir = root / 'leftImg8bit' / split
    label_dir = root / 'gtFine' / split
    problems = []
    if not root.is_dir():
        raise DatasetError(root, ['the dataset root does not exist'])
    for folder in (image_dir, label_dir):
        if not folder.is_dir():
            problems.append(f'missing folder {folder}')
    if problems:
        raise DatasetError(root, problems)
    image_paths = sorted(image_dir.glob(f'*/*{IMAGE_SUFFIX}'))
    if not image_paths:
        raise DatasetError(root, [f'no */*{IMAGE_SUFFIX} images in {image_dir}'])

    records = []
    missing_labels: list[Path] = []
    missing_instances: list[Path] = []
    for image_path in image_paths:
        stem = image_path.name[: -len(IMAGE_SUFFIX)]
        city_dir = label_dir / image_path.parent.name
        label_path = city_dir / f'{stem}{LABEL_SUFFIX}'
        instance_path = city_dir / f'{stem}{INSTANCE_SUFFIX}'
        if not label_path.is_file():
            missing_labels.append(label_path)
        if need_instances and not instance_path.is_file():
            missing_instances.append(instance_path)
        records.append(
            CityscapesRecord(
                stem, image_path, label_path, instance_path if need_instances else None
            )
        )
    problems += _list_problems(missing_labels, 'label')
    problems += _list_problems(missing_instances, 'instance')
    if not problems and check_headers:
        problems += _check_headers(records)
    if problems:
        raise DatasetError(root, problems)
    return records


def _check_headers(records: Sequence[CityscapesRecord]) -> list[str]:
    problems: list[str] = []
    for record in records:
        sizes = {}
        paths = [record.image_path, record.label_path]
        if record.instance_path is not None:
            paths.append(record.instance_path)
        for path in paths:
            try:
                with Image.open(path) as image:
                    sizes[path] = image.size
                    if path != record.image_path and image.mode not in ('L', 'P', 'I', 'I;16'):
                        problems.append(f'{path}: label PNG has mode {image.mode}, not grey')
            except OSError as error:
                problems.append(f'{path}: unreadable ({error})')
        if len(set(sizes.values())) > 1:
            problems.append(
                f'{record.name}: sizes differ: '
                + ', '.join(f'{p.name} {w}x{h}' for p, (w, h) in sizes.items())
            )
        if len(problems) > _MAX_LISTED:
            problems.append('... stopped checking after too many problems')
            break
    return problems


def read_cityscapes_sample(record: CityscapesRecord, train_id_lut: np.ndarray) -> AnnotatedImage:
    """Load one image with train-id semantics, optional instance ids and an empty outlier mask.

    Raises:
        DatasetError: the files cannot be decoded or their sizes differ.
    """
    try:
        with Image.open(record.image_path) as image:
            rgb = np.asarray(image.convert('RGB'))
        with Image.open(record.label_path) as label:
            label_ids = np.asarray(label)
        instance = None
        if record.instance_path is not None:
            with Image.open(record.instance_path) as instance_image:
                instance = np.asarray(instance_image).astype(np.int32)
    except OSError as error:
        raise DatasetError(record.image_path.parents[2], [f'{record.name}: {error}']) from error
    if label_ids.ndim != 2 or label_ids.shape != rgb.shape[:2]:
        raise DatasetError(
            record.image_path.parents[2],
            [f'{record.name}: label {label_ids.shape} does not match image {rgb.shape}'],
        )
    semantic = train_id_lut[label_ids.astype(np.int64).clip(0, 255)]
    return AnnotatedImage(
        image=rgb,
        semantic=semantic,
        ood_mask=np.zeros(semantic.shape, dtype=bool),
        instance=instance,
        name=record.name,
    )


# ---------------------------------------------------------------- targets


def _empty_targets(size: tuple[int, int]) -> MaskTargets:
    return MaskTargets(torch.zeros(0, dtype=torch.int64), torch.zeros(0, *size, dtype=torch.bool))


def _stack_targets(
    labels: list[int], masks: list[np.ndarray], size: tuple[int, int]
) -> MaskTargets:
    if not labels:
        return _empty_targets(size)
    return MaskTargets(torch.tensor(labels, dtype=torch.int64), torch.from_numpy(np.stack(masks)))


def build_mask_targets(
    semantic: np.ndarray,
    instance: np.ndarray | None = None,
    mode: TargetMode = 'semantic',
    *,
    num_classes: int = NUM_CITYSCAPES_CLASSES,
    things: Collection[int] | None = None,
) -> MaskTargets:
    """Per-segment binary masks from a train-id map.

    Args:
        semantic: (H, W) uint8 train ids; 255 void and 254 pasted outliers get no mask.
        instance: (H, W) int32 Cityscapes instance ids; required for 'panoptic'.
        mode: 'semantic', 'mask_split' or 'panoptic'.
        num_classes: ids at or above this (other than void/outlier) are an error.
        things: train ids that have instances (default: Cityscapes 11..18).

    Returns:
        Targets with (N,) labels and (N, H, W) bool masks, ordered by class then instance.
    """
    if mode not in TARGET_MODES:
        raise ValueError(f'target mode must be one of {TARGET_MODES}, got {mode!r}')
    size = (int(semantic.shape[0]), int(semantic.shape[1]))
    present = [int(c) for c in np.unique(semantic) if c not in (VOID_ID, OUTLIER_LABEL)]
    if present and max(present) >= num_classes:
        raise ValueError(f'semantic map holds class {max(present)} >= num_classes {num_classes}')
    labels: list[int] = []
    masks: list[np.ndarray] = []
    if mode == 'semantic':
        for class_id in present:
            labels.append(class_id)
            masks.append(semantic == class_id)
    elif mode == 'mask_split':
        structure = np.ones((3, 3), dtype=bool)
        for class_id in present:
            components, count = ndimage.label(semantic == class_id, structure=structure)
            for k in range(1, count + 1):
                labels.append(class_id)
                masks.append(components == k)
    else:
        if instance is None:
            raise ValueError("target mode 'panoptic' needs the instance id map")
        thing_ids = thing_train_ids() if things is None else things
        for class_id in present:
            class_mask = semantic == class_id
            if class_id not in thing_ids:
                labels.append(class_id)
                masks.append(class_mask)
                continue
            ids = np.unique(instance[class_mask])
            for instance_id in ids[ids >= 1000]:
                labels.append(class_id)
                masks.append(class_mask & (instance == instance_id))
    return _stack_targets(labels, masks, size)


# ---------------------------------------------------------------- dataset


@dataclass(frozen=True)
class TrainingSample:
    """One network-ready training example (before batching).

    Attributes:
        image: (3, H, W) uint8 RGB.
        targets: masks (N, H, W) bool and labels (N,).
        ood_mask: (H, W) bool outlier mask M_OOD.
        semantic: (H, W) int64 train ids (255 void, 254 outlier) for evaluation.
        name: source image name.
    """

    image: torch.Tensor
    targets: MaskTargets
    ood_mask: torch.Tensor
    semantic: torch.Tensor
    name: str


def to_training_sample(sample: AnnotatedImage, mode: TargetMode) -> TrainingSample:
    """Convert an (augmented) annotated image into tensors and targets."""
    targets = build_mask_targets(sample.semantic, sample.instance, mode)
    return TrainingSample(
        image=torch.from_numpy(np.ascontiguousarray(sample.image.transpose(2, 0, 1))),
        targets=targets,
        ood_mask=torch.from_numpy(np.ascontiguousarray(sample.ood_mask)),
        semantic=torch.from_numpy(sample.semantic.astype(np.int64)),
        name=sample.name,
    )


class CityscapesDataset(torch.utils.data.Dataset):
    """Cityscapes split as `TrainingSample`s, with an optional `(sample, rng)` transform.

    Randomness is stateless: item `i` uses `np.random.default_rng([seed, i])`, and item
    `(i, draw)` uses `np.random.default_rng([seed, i, draw])`, so a sampler that yields
    `(index, draw)` pairs (e.g. draw = epoch or iteration) makes every augmentation reproducible
    and resumable without hidden state.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = 'train',
        *,
        mode: TargetMode = 'semantic',
        transform: Transform | None = None,
        seed: int = 0,
        check_headers: bool = True,
    ) -> None:
        if mode not in TARGET_MODES:
            raise ValueError(f'target mode must be one of {TARGET_MODES}, got {mode!r}')
        self.root = Path(root)
        self.split = split
        self.mode: TargetMode = mode
        self.transform = transform
        self.seed = seed
        self.records = find_cityscapes_records(
            root, split, need_instances=mode == 'panoptic', check_headers=check_headers
        )
        self.train_id_lut = label_id_to_train_id_table()
        logger.info('Cityscapes %s: %d images from %s', split, len(self.records), root)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> AnnotatedImage:
        """The raw (untransformed) annotated image `index`."""
        return read_cityscapes_sample(self.records[index], self.train_id_lut)

    def __getitem__(self, key: int | tuple[int, int]) -> TrainingSample:
        index, draw = key if isinstance(key, tuple) else (key, None)
        sample = self.load(int(index))
        if self.transform is not None:
            entropy = (
                [self.seed, int(index)] if draw is None else [self.seed, int(index), int(draw)]
            )
            sample = self.transform(sample, np.random.default_rng(entropy))
        return to_training_sample(sample, self.mode)


@dataclass(frozen=True)
class TrainingBatch:
    """A padded batch.

    Attributes:
        images: (B, 3, H_pad, W_pad) float32, normalised with the model mean/std, zero padded
            bottom/right to multiples of the size divisibility (the model input).
        targets: B per-image targets with masks padded to (H_pad, W_pad).
        ood_masks: (B, H_max, W_max) bool outlier masks of the unpadded images (padded with
            False to the largest image of the batch; all equal for fixed-size crops).
        semantic: (B, H_pad, W_pad) int64 train ids, padding 255.
        image_sizes: B unpadded (H, W).
        names: B image names.
    """

    images: torch.Tensor
    targets: list[MaskTargets]
    ood_masks: torch.Tensor
    semantic: torch.Tensor
    image_sizes: list[tuple[int, int]]
    names: list[str]

    def to(self, device: torch.device | str) -> TrainingBatch:
        """A copy with every tensor on `device`."""
        return TrainingBatch(
            images=self.images.to(device),
            targets=[t.to(device) for t in self.targets],
            ood_masks=self.ood_masks.to(device),
            semantic=self.semantic.to(device),
            image_sizes=self.image_sizes,
            names=self.names,
        )


def collate_training_batch(
    samples: Sequence[TrainingSample],
    *,
    pixel_mean: tuple[float, float, float],
    pixel_std: tuple[float, float, float],
    size_divisibility: int = 32,
) -> TrainingBatch:
    """Normalise, pad and stack samples (usable as a DataLoader `collate_fn` via partial)."""
    if not samples:
        raise ValueError('cannot collate an empty batch')
    sizes = [(int(s.image.shape[-2]), int(s.image.shape[-1])) for s in samples]
    max_h, max_w = max(h for h, _ in sizes), max(w for _, w in sizes)
    pad_h = -(-max_h // size_divisibility) * size_divisibility
    pad_w = -(-max_w // size_divisibility) * size_divisibility
    images = []
    targets = []
    semantic = []
    ood_masks = []
    for sample, (height, width) in zip(samples, sizes, strict=True):
        normalized = normalize_and_pad(sample.image[None], pixel_mean, pixel_std, 1)
        images.append(F.pad(normalized[0], (0, pad_w - width, 0, pad_h - height), value=0.0))
        padded_masks = F.pad(sample.targets.masks, (0, pad_w - width, 0, pad_h - height))
        targets.append(MaskTargets(sample.targets.labels, padded_masks))
        semantic.append(
            F.pad(sample.semantic, (0, pad_w - width, 0, pad_h - height), value=VOID_ID)
        )
        ood_masks.append(F.pad(sample.ood_mask, (0, max_w - width, 0, max_h - height)))
    return TrainingBatch(
        images=torch.stack(images),
        targets=targets,
        ood_masks=torch.stack(ood_masks),
        semantic=torch.stack(semantic),
        image_sizes=sizes,
        names=[s.name for s in samples],
    )
