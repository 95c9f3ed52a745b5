"""AnomalyMix: paste COCO objects onto training images as outliers (official procedure).

The official mapper (shared/reference/mask2anomaly-reference.md §5), re-implemented:
1. with probability 0.2 per training image, pick a random image of the outlier pool;
2. its outlier mask marks *all* annotated instances of that image (crowd included);
3. cut the tight bounding box of the mask (the union of all instances) from the outlier image
   and mask, without rescaling;
4. paste it at a uniformly random top-left position where the box fits, copying only the
   object pixels: image pixels are overwritten, the semantic label becomes 254 and M_OOD True;
5. this happens at the original resolution, before any augmentation, so the object is later
   resized, cropped (possibly away), colour-jittered and flipped with the scene.
Pixels labelled 254 are excluded from the class targets (the target builder drops them) and
form the outlier mask of the mask contrastive loss.

The pool follows meta-OOD's COCO preparation: images containing any of person, bicycle, car,
motorcycle, bus, truck, traffic light or stop sign are excluded (note: "train" is not), both
sides must be at least `min_side` (480), and a random subset of `pool_size` images is kept (the
paper: 300; None keeps all, like the official code). Images without any annotation are left out
as well, because pasting them would be a no-op.

The pool can also be the authors' processed outlier folder (the "ood_dataset" they ship): a root
with `ood_annotations/*.png` masks (254 on outlier pixels, 0 elsewhere) and `images/*.jpg`. The
official mapper globs `.../ood_annotations/*.png` (`mask_former_semantic_dataset_mapper.py` line
142, default path `mask2former/config.py` line 121) and finds each image by replacing
`ood_annotations` with `images` and `png` with `jpg` (lines 213-215). The folder is already
filtered, so no class or size filter runs; masks without any 254 pixel stay in the pool as in the
official code, where they paste nothing (`keep_empty_masks=False` leaves them out instead).

Allowed dependencies: numpy, Pillow, pycocotools.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from m2a_training.data.augment import OUTLIER_LABEL, AnnotatedImage

logger = logging.getLogger(__name__)

# meta-OOD `prepare_coco_segmentation.py`: COCO classes that are also Cityscapes classes.
CITYSCAPES_OVERLAP_CATEGORIES = (
    'person',
    'bicycle',
    'car',
    'motorcycle',
    'bus',
    'truck',
    'traffic light',
    'stop sign',
)


# The label value of outlier pixels in the authors' `ood_annotations/*.png` masks.
FOLDER_OUTLIER_VALUE = 254


@dataclass(frozen=True)
class OutlierEntry:
    """One pool image: where it is and either the COCO segmentations of all its annotations or
    (authors' folder layout) the path of its mask PNG."""

    image_id: int
    image_path: Path
    height: int
    width: int
    segmentations: tuple[Any, ...]
    mask_path: Path | None = None


@dataclass(frozen=True)
class OutlierPool:
    """The images AnomalyMix can draw from."""

    entries: tuple[OutlierEntry, ...]

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image (H, W, 3) uint8 RGB and union mask (H, W) bool of pool entry `index`."""
        entry = self.entries[index]
        with Image.open(entry.image_path) as image:
            rgb = np.asarray(image.convert('RGB'))
        if rgb.shape[:2] != (entry.height, entry.width):
            raise ValueError(
                f'{entry.image_path}: image is {rgb.shape[:2]}, annotation says '
                f'{(entry.height, entry.width)}'
            )
        if entry.mask_path is not None:
            return rgb, read_folder_mask(entry.mask_path)
        return rgb, decode_union_mask(entry.segmentations, entry.height, entry.width)


def read_folder_mask(path: Path) -> np.ndarray:
    """(H, W) bool outlier mask of an `ood_annotations/*.png` file (pixels equal to 254)."""
    with Image.open(path) as mask:
        values = np.asarray(mask)
    if values.ndim != 2:
        raise ValueError(f'{path}: outlier mask must be single-channel, got shape {values.shape}')
    return values == FOLDER_OUTLIER_VALUE


def folder_image_path(mask_path: Path, root: Path) -> Path:
    """The image of a mask, as the official mapper derives it (lines 213-215): `ood_annotations`
    -> `images` and `png` -> `jpg`, applied to the path below `root` only, so that folder names
    above it cannot be rewritten."""
    relative = str(mask_path.relative_to(root))
    return root / relative.replace('ood_annotations', 'images').replace('png', 'jpg')


def build_folder_outlier_pool(
    root: str | Path,
    *,
    pool_size: int | None = None,
    seed: int = 0,
    keep_empty_masks: bool = True,
) -> OutlierPool:
    """Outlier pool from the authors' processed folder (`images/`, `ood_annotations/*.png`).

    Args:
        root: the folder holding `ood_annotations/` and `images/`.
        pool_size: random subset size (seeded), or None for all masks (official).
        seed: seed of the subset selection.
        keep_empty_masks: keep masks without outlier pixels (official: they stay in the glob and
            paste nothing); False leaves them out (reads every mask once).

    Returns:
        The pool in sorted mask-name order (image ids 0..N-1 in that order).

    Raises:
        FileNotFoundError: no `ood_annotations/*.png`, or a mask without its image.
        ValueError: a non-positive pool size, an image whose size differs from its mask, or no
            mask left.
    """
    root = Path(root)
    if pool_size is not None and pool_size <= 0:
        raise ValueError(f'pool_size must be positive or None, got {pool_size}')
    masks = sorted((root / 'ood_annotations').glob('*.png'))
    if not masks:
        raise FileNotFoundError(f'no outlier masks: {root / "ood_annotations"}/*.png is empty')
    entries: list[OutlierEntry] = []
    empty = 0
    for mask_path in masks:
        image_path = folder_image_path(mask_path, root)
        if not image_path.is_file():
            raise FileNotFoundError(f'outlier mask {mask_path} has no image {image_path}')
        with Image.open(mask_path) as mask, Image.open(image_path) as image:
            if mask.size != image.size:
                raise ValueError(
                    f'{image_path} is {image.size[1]}x{image.size[0]} but its mask {mask_path} '
                    f'is {mask.size[1]}x{mask.size[0]}'
                )
            width, height = mask.size
        if not keep_empty_masks and not read_folder_mask(mask_path).any():
            empty += 1
            continue
        entries.append(OutlierEntry(len(entries), image_path, height, width, (), mask_path))
    if not entries:
        raise ValueError(
            f'no outlier mask with a pixel equal to 254 in {root / "ood_annotations"}'
        )
    if pool_size is not None and pool_size < len(entries):
        keep = np.sort(np.random.default_rng(seed).choice(len(entries), pool_size, replace=False))
        entries = [entries[i] for i in keep]
    logger.info(
        'outlier pool (folder layout): %d images from %s; %d empty masks left out',
        len(entries),
        root,
        empty,
    )
    return OutlierPool(tuple(entries))


def decode_union_mask(segmentations: Sequence[Any], height: int, width: int) -> np.ndarray:
    """Union of COCO segmentations (polygons, uncompressed or compressed RLE).

    Args:
        segmentations: COCO `segmentation` fields of the annotations of one image.
        height, width: image size.

    Returns:
        (height, width) bool mask.
    """
    union = np.zeros((height, width), dtype=bool)
    for segmentation in segmentations:
        if isinstance(segmentation, list):
            rles = mask_utils.frPyObjects(segmentation, height, width)
            rle = mask_utils.merge(rles)
        elif isinstance(segmentation.get('counts'), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
        union |= mask_utils.decode(rle).astype(bool)
    return union


def build_outlier_pool(
    annotation_file: str | Path,
    image_dir: str | Path | None,
    *,
    pool_size: int | None = 300,
    excluded_categories: Sequence[str] = CITYSCAPES_OVERLAP_CATEGORIES,
    min_side: int = 480,
    seed: int = 0,
    keep_empty_masks: bool = True,
) -> OutlierPool:
    """Select the outlier pool from a COCO instances file (read with pycocotools), or read the
    authors' processed folder when `annotation_file` is a folder (`build_folder_outlier_pool`).

    Args:
        annotation_file: COCO `instances_*.json`, or the authors' folder holding
            `ood_annotations/` and `images/`.
        image_dir: folder holding the images named by `file_name` (unused for a folder).
        pool_size: number of images to keep (random, seeded), or None for all eligible ones.
        excluded_categories: category names whose presence excludes an image.
        min_side: minimum height and width of an eligible image.
        seed: seed of the subset selection.
        keep_empty_masks: folder layout only (see `build_folder_outlier_pool`).

    Returns:
        The pool, in ascending image-id order. It keeps only the segmentations of the selected
        images, not the COCO index, so it is cheap to send to data-loader workers.

    Raises:
        FileNotFoundError: the annotation file or the image folder is missing.
        ValueError: no eligible image, or a non-positive pool size.
    """
    annotation_file = Path(annotation_file)
    if annotation_file.is_dir():
        return build_folder_outlier_pool(
            annotation_file, pool_size=pool_size, seed=seed, keep_empty_masks=keep_empty_masks
        )
    if image_dir is None:
        raise ValueError('a COCO annotation file needs the image folder (image_dir)')
    image_dir = Path(image_dir)
    if not annotation_file.is_file():
        raise FileNotFoundError(f'COCO annotation file not found: {annotation_file}')
    if not image_dir.is_dir():
        raise FileNotFoundError(f'COCO image folder not found: {image_dir}')
    if pool_size is not None and pool_size <= 0:
        raise ValueError(f'pool_size must be positive or None, got {pool_size}')
    # pycocotools reports progress with print(); keep it out of the training logs.
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(annotation_file))
    excluded_ids = coco.getCatIds(catNms=list(excluded_categories))
    tainted: set[int] = set()
    for category_id in excluded_ids:
        tainted.update(coco.getImgIds(catIds=[category_id]))

    eligible: list[OutlierEntry] = []
    counts = {'excluded class': 0, 'too small': 0, 'no annotation': 0}
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        height, width = int(info['height']), int(info['width'])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=None))
        if image_id in tainted:
            counts['excluded class'] += 1
        elif min(height, width) < min_side:
            counts['too small'] += 1
        elif not annotations:
            counts['no annotation'] += 1
        else:
            eligible.append(
                OutlierEntry(
                    int(image_id),
                    image_dir / str(info['file_name']),
                    height,
                    width,
                    tuple(a['segmentation'] for a in annotations),
                )
            )
    summary = ', '.join(f'{n} skipped ({reason})' for reason, n in counts.items())
    if not eligible:
        raise ValueError(
            f'no eligible outlier image in {annotation_file}: {summary}; min_side={min_side}'
        )
    if pool_size is not None and pool_size < len(eligible):
        keep = np.sort(np.random.default_rng(seed).choice(len(eligible), pool_size, replace=False))
        eligible = [eligible[i] for i in keep]
    logger.info('outlier pool: %d images; %s', len(eligible), summary)
    return OutlierPool(tuple(eligible))


def mask_bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight box (top, left, bottom, right), bottom/right exclusive, or None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def paste_outlier(
    sample: AnnotatedImage,
    outlier_image: np.ndarray,
    outlier_mask: np.ndarray,
    rng: np.random.Generator,
) -> AnnotatedImage:
    """Cut the union box of `outlier_mask` and paste its object pixels at a random position.

    Args:
        sample: the training image and its label maps.
        outlier_image: (h, w, 3) uint8 RGB outlier image.
        outlier_mask: (h, w) bool, True on all annotated objects.
        rng: random generator (paste position).

    Returns:
        The sample with object pixels copied in, semantic 254, instance 0 and M_OOD True there.
        If the box is larger than the target image (impossible for COCO on Cityscapes, where
        the official code would fail), a random window of the box of the target size is used.
    """
    if outlier_image.shape[:2] != outlier_mask.shape:
        raise ValueError(
            f'outlier image {outlier_image.shape[:2]} and mask {outlier_mask.shape} differ'
        )
    box = mask_bounding_box(outlier_mask)
    if box is None:
        return sample
    top, left, bottom, right = box
    cut_image = outlier_image[top:bottom, left:right]
    cut_mask = outlier_mask[top:bottom, left:right]
    height, width = sample.size
    if cut_mask.shape[0] > height or cut_mask.shape[1] > width:
        dy = int(rng.integers(0, max(cut_mask.shape[0] - height, 0) + 1))
        dx = int(rng.integers(0, max(cut_mask.shape[1] - width, 0) + 1))
        cut_image = cut_image[dy : dy + height, dx : dx + width]
        cut_mask = cut_mask[dy : dy + height, dx : dx + width]
    y0 = int(rng.integers(0, height - cut_mask.shape[0] + 1))
    x0 = int(rng.integers(0, width - cut_mask.shape[1] + 1))
    window = (slice(y0, y0 + cut_mask.shape[0]), slice(x0, x0 + cut_mask.shape[1]))

    image = sample.image.copy()
    semantic = sample.semantic.copy()
    ood_mask = sample.ood_mask.copy()
    image[window][cut_mask] = cut_image[cut_mask]
    semantic[window][cut_mask] = OUTLIER_LABEL
    ood_mask[window][cut_mask] = True
    instance = sample.instance
    if instance is not None:
        instance = instance.copy()
        instance[window][cut_mask] = 0
    return replace(sample, image=image, semantic=semantic, ood_mask=ood_mask, instance=instance)


class AnomalyMix:
    """Callable `(sample, rng) -> sample` that pastes a pool object with a given probability."""

    def __init__(self, pool: OutlierPool, probability: float = 0.2) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f'AnomalyMix probability must be in [0, 1], got {probability}')
        if len(pool) == 0:
            raise ValueError('AnomalyMix needs a non-empty outlier pool')
        self.pool = pool
        self.probability = probability

    def __call__(self, sample: AnnotatedImage, rng: np.random.Generator) -> AnnotatedImage:
        # Drawn per image (not per batch), as in the official mapper.
        if rng.uniform() >= self.probability:
            return sample
        outlier_image, outlier_mask = self.pool.load(int(rng.integers(len(self.pool))))
        return paste_outlier(sample, outlier_image, outlier_mask, rng)
