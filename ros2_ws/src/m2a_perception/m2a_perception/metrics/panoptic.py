"""Panoptic quality (PQ, SQ, RQ) with panopticapi conventions, plus the open-set protocol.

Per image (panopticapi `pq_compute_single_core`, copied into cityscapesScripts):

- segment id 0 is VOID; predicted areas are counted from the id map, ground-truth areas come from
  the annotation (`PanopticSegment.area`, the JSON `area` field) when given;
- a GT and a predicted segment of the same category (GT not crowd) match iff
  IoU = |g ∩ p| / (|p| + |g| - |g ∩ p| - |p ∩ VOID|) > 0.5 (strict);
- unmatched non-crowd GT segments are FNs; crowd GT segments are never matched, and the last crowd
  segment of each category is remembered;
- an unmatched prediction is an FP unless (|p ∩ VOID| + |p ∩ crowd of its category|) / |p| > 0.5.

Per category PQ = ΣIoU / (TP + FP/2 + FN/2), SQ = ΣIoU / TP (0 without TP), RQ = TP / (TP + FP/2
+ FN/2); categories with TP + FP + FN = 0 are left out of the averages, which are unweighted means
over categories (groups by `is_thing`).

Open-set panoptic (EOPSN, Hwang et al. 2021; the protocol of Mask2Anomaly's Table 4): the GT
segments of the unknown classes are relabelled to one "unknown" thing category
(`relabel_unknown_segments`), predictions of unknown objects carry that id, and the groups are
`things` (known things), `stuff`, `all` (known things + stuff) and `unknown`.

Allowed dependencies: numpy, torch (tensor inputs only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from m2a_perception.metrics._common import check_2d, check_same_shape, to_numpy

VOID_SEGMENT_ID = 0
UNKNOWN_CATEGORY_ID = -1
"""Category id of the single "unknown" class in the open-set protocol (EOPSN uses -1)."""

# Segment ids come from 24-bit RGB, so a pair (gt, pred) fits in one int64 code.
_ID_OFFSET = 1 << 24


@dataclass(frozen=True)
class PanopticCategory:
    """A panoptic category: COCO / Cityscapes `categories` entry."""

    id: int
    name: str
    is_thing: bool


@dataclass(frozen=True)
class PanopticSegment:
    """One entry of `segments_info`.

    Attributes:
        id: segment id in the id map (> 0).
        category_id: category of the segment.
        is_crowd: crowd region (GT only).
        area: GT area from the annotation; None = count it in the id map.
    """

    id: int
    category_id: int
    is_crowd: bool = False
    area: int | None = None


@dataclass(frozen=True)
class PQGroupResult:
    """PQ, SQ, RQ averaged over the `num_categories` categories of a group (NaN if none)."""

    pq: float
    sq: float
    rq: float
    num_categories: int


@dataclass(frozen=True)
class PQCategoryResult:
    """PQ, SQ, RQ and the raw counts of one category."""

    pq: float
    sq: float
    rq: float
    true_positives: int
    false_positives: int
    false_negatives: int
    iou_sum: float


@dataclass(frozen=True)
class PanopticMetrics:
    """Group and per-category results.

    Attributes:
        groups: 'all', 'things', 'stuff' and, in the open-set protocol, 'unknown'.
        per_category: category id -> result, for categories with TP + FP + FN > 0.
    """

    groups: dict[str, PQGroupResult]
    per_category: dict[int, PQCategoryResult]

    def as_dict(self) -> dict[str, object]:
        """Plain dict for JSON reports."""
        return dataclasses.asdict(self)


def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 panoptic PNG in RGB order -> (H, W) int64 ids R + 256 G + 256² B."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f'panoptic PNG must be (H, W, 3), got shape {rgb.shape}')
    color = rgb.astype(np.int64)
    return color[..., 0] + 256 * color[..., 1] + 65536 * color[..., 2]


def panoptic_id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids in [0, 2**24) -> (H, W, 3) uint8 RGB (inverse of `rgb_to_panoptic_id`)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= _ID_OFFSET):
        raise ValueError('panoptic ids must lie in [0, 2**24)')
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def open_set_categories(
    categories: Sequence[PanopticCategory], unknown_names: Collection[str]
) -> tuple[list[PanopticCategory], frozenset[int]]:
    """Split categories for the open-set protocol.

    Args:
        categories: all categories of the dataset.
        unknown_names: names of the classes treated as unknown (e.g. COCO K5: car, cow, ...).

    Returns:
        The known categories plus one "unknown" thing category (`UNKNOWN_CATEGORY_ID`), and the
        ids of the original unknown categories.

    Raises:
        ValueError: if a name is not a category, an unknown class is stuff, or the unknown id
            is taken.
    """
    by_name = {category.name: category for category in categories}
    missing = sorted(set(unknown_names) - set(by_name))
    if missing:
        raise ValueError(f'unknown-class names not among the categories: {missing}')
    if any(category.id == UNKNOWN_CATEGORY_ID for category in categories):
        raise ValueError(f'category id {UNKNOWN_CATEGORY_ID} is reserved for "unknown"')
    stuff = sorted(name for name in unknown_names if not by_name[name].is_thing)
    if stuff:
        raise ValueError(f'unknown classes must be things (EOPSN assumption), got stuff {stuff}')
    unknown_ids = frozenset(by_name[name].id for name in unknown_names)
    known = [category for category in categories if category.id not in unknown_ids]
    known.append(PanopticCategory(id=UNKNOWN_CATEGORY_ID, name='unknown', is_thing=True))
    return known, unknown_ids


def relabel_unknown_segments(
    segments: Iterable[PanopticSegment],
    unknown_category_ids: Collection[int],
    unknown_category_id: int = UNKNOWN_CATEGORY_ID,
) -> tuple[PanopticSegment, ...]:
    """GT segments of unknown classes get the single unknown category (crowd flags kept)."""
    return tuple(
        dataclasses.replace(segment, category_id=unknown_category_id)
        if segment.category_id in unknown_category_ids
        else segment
        for segment in segments
    )


def _index_segments(segments: Iterable[PanopticSegment], name: str) -> dict[int, PanopticSegment]:
    by_id: dict[int, PanopticSegment] = {}
    for segment in segments:
        if segment.id == VOID_SEGMENT_ID:
            raise ValueError(f'{name} segment id 0 is reserved for VOID')
        if segment.id in by_id:
            raise ValueError(f'{name} segment id {segment.id} is listed twice')
        by_id[segment.id] = segment
    return by_id


class PanopticAccumulator:
    """Streams images into per-category PQ statistics.

    Usage:
        accumulator = PanopticAccumulator(categories)  # or open_set_categories(...)[0]
        for gt_ids, gt_segments, pred_ids, pred_segments in images:
            accumulator.update(gt_ids, gt_segments, pred_ids, pred_segments)
        accumulator.compute().groups['all'].pq
    """

    def __init__(
        self, categories: Sequence[PanopticCategory], unknown_category_id: int | None = None
    ) -> None:
        self.categories = {category.id: category for category in categories}
        if len(self.categories) != len(categories):
            raise ValueError('category ids must be unique')
        if unknown_category_id is not None and unknown_category_id not in self.categories:
            raise ValueError(
                f'unknown_category_id {unknown_category_id} is not among the categories; build '
                'them with open_set_categories()'
            )
        self.unknown_category_id = unknown_category_id
        self.true_positives = dict.fromkeys(self.categories, 0)
        self.false_positives = dict.fromkeys(self.categories, 0)
        self.false_negatives = dict.fromkeys(self.categories, 0)
        self.iou_sum = dict.fromkeys(self.categories, 0.0)
        self.num_images = 0

    def update(
        self,
        gt_ids: np.ndarray | torch.Tensor,
        gt_segments: Iterable[PanopticSegment],
        pred_ids: np.ndarray | torch.Tensor,
        pred_segments: Iterable[PanopticSegment],
    ) -> None:
        """Add one image.

        Args:
            gt_ids: (H, W) integer GT segment ids (0 = VOID).
            gt_segments: GT `segments_info`; ids in the map but not listed are neither matched
                nor VOID (panopticapi skips them).
            pred_ids: (H, W) integer predicted segment ids (0 = VOID).
            pred_segments: predicted `segments_info`; must list exactly the non-zero ids of
                `pred_ids`.

        Raises:
            ValueError: on shape mismatch, inconsistent segment lists or unknown categories.
        """
        gt_map = to_numpy(gt_ids, 'gt_ids')
        pred_map = to_numpy(pred_ids, 'pred_ids')
        check_2d(gt_map, 'gt_ids')
        check_2d(pred_map, 'pred_ids')
        check_same_shape(gt_map, pred_map, ('gt_ids', 'pred_ids'))
        gt_map = gt_map.astype(np.int64)
        pred_map = pred_map.astype(np.int64)
        for array, name in ((gt_map, 'gt_ids'), (pred_map, 'pred_ids')):
            if array.size and (array.min() < 0 or array.max() >= _ID_OFFSET):
                raise ValueError(f'{name} must lie in [0, 2**24)')
        gt_by_id = _index_segments(gt_segments, 'GT')
        pred_by_id = _index_segments(pred_segments, 'predicted')
        for segment in (*gt_by_id.values(), *pred_by_id.values()):
            if segment.category_id not in self.categories:
                raise ValueError(
                    f'segment {segment.id} has category {segment.category_id}, which is not '
                    'among the categories (relabel unknown classes first in the open-set case)'
                )

        pred_present, pred_counts = np.unique(pred_map, return_counts=True)
        pred_area = dict(zip(pred_present.tolist(), pred_counts.tolist(), strict=True))
        pred_area.pop(VOID_SEGMENT_ID, None)
        not_listed = sorted(set(pred_area) - set(pred_by_id))
        if not_listed:
            raise ValueError(f'predicted ids {not_listed[:10]} are in the map but not listed')
        not_drawn = sorted(set(pred_by_id) - set(pred_area))
        if not_drawn:
            raise ValueError(f'predicted segments {not_drawn[:10]} are listed but not in the map')

        pair_codes, pair_counts = np.unique(gt_map * _ID_OFFSET + pred_map, return_counts=True)
        pairs = {
            (int(code // _ID_OFFSET), int(code % _ID_OFFSET)): int(count)
            for code, count in zip(pair_codes, pair_counts, strict=True)
        }
        gt_present, gt_counts = np.unique(gt_map, return_counts=True)
        counted_gt_area = dict(zip(gt_present.tolist(), gt_counts.tolist(), strict=True))
        gt_area = {
            gt_id: segment.area if segment.area is not None else counted_gt_area.get(gt_id, 0)
            for gt_id, segment in gt_by_id.items()
        }

        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (gt_id, pred_id), intersection in pairs.items():
            gt_segment = gt_by_id.get(gt_id)
            pred_segment = pred_by_id.get(pred_id)
            if gt_segment is None or pred_segment is None or gt_segment.is_crowd:
                continue
            if gt_segment.category_id != pred_segment.category_id:
                continue
            union = (
                pred_area[pred_id]
                + gt_area[gt_id]
                - intersection
                - pairs.get((VOID_SEGMENT_ID, pred_id), 0)
            )
            iou = intersection / union
            if iou > 0.5:
                self.true_positives[gt_segment.category_id] += 1
                self.iou_sum[gt_segment.category_id] += iou
                gt_matched.add(gt_id)
                pred_matched.add(pred_id)

        crowd_by_category: dict[int, int] = {}
        for gt_id, gt_segment in gt_by_id.items():
            if gt_id in gt_matched:
                continue
            if gt_segment.is_crowd:
                crowd_by_category[gt_segment.category_id] = gt_id
                continue
            self.false_negatives[gt_segment.category_id] += 1

        for pred_id, pred_segment in pred_by_id.items():
            if pred_id in pred_matched:
                continue
            ignored = pairs.get((VOID_SEGMENT_ID, pred_id), 0)
            crowd_id = crowd_by_category.get(pred_segment.category_id)
            if crowd_id is not None:
                ignored += pairs.get((crowd_id, pred_id), 0)
            if ignored / pred_area[pred_id] > 0.5:
                continue
            self.false_positives[pred_segment.category_id] += 1
        self.num_images += 1

    def merge(self, other: PanopticAccumulator) -> None:
        """Fold in another accumulator over the same categories."""
        if other.categories != self.categories:
            raise ValueError('cannot merge panoptic accumulators over different categories')
        for category_id in self.categories:
            self.true_positives[category_id] += other.true_positives[category_id]
            self.false_positives[category_id] += other.false_positives[category_id]
            self.false_negatives[category_id] += other.false_negatives[category_id]
            self.iou_sum[category_id] += other.iou_sum[category_id]
        self.num_images += other.num_images

    def _category_result(self, category_id: int) -> PQCategoryResult | None:
        tp = self.true_positives[category_id]
        fp = self.false_positives[category_id]
        fn = self.false_negatives[category_id]
        if tp + fp + fn == 0:
            return None
        iou = self.iou_sum[category_id]
        denominator = tp + 0.5 * fp + 0.5 * fn
        return PQCategoryResult(
            pq=iou / denominator,
            sq=iou / tp if tp else 0.0,
            rq=tp / denominator,
            true_positives=tp,
            false_positives=fp,
            false_negatives=fn,
            iou_sum=iou,
        )

    def compute(self) -> PanopticMetrics:
        """Group averages and per-category results."""
        per_category: dict[int, PQCategoryResult] = {}
        for category_id in self.categories:
            result = self._category_result(category_id)
            if result is not None:
                per_category[category_id] = result
        unknown = self.unknown_category_id
        members = {
            'all': [c for c in self.categories.values() if c.id != unknown],
            'things': [c for c in self.categories.values() if c.is_thing and c.id != unknown],
            'stuff': [c for c in self.categories.values() if not c.is_thing],
        }
        if unknown is not None:
            members['unknown'] = [self.categories[unknown]]
        groups = {}
        for name, group in members.items():
            results = [per_category[c.id] for c in group if c.id in per_category]
            count = len(results)
            groups[name] = PQGroupResult(
                pq=sum(r.pq for r in results) / count if count else float('nan'),
                sq=sum(r.sq for r in results) / count if count else float('nan'),
                rq=sum(r.rq for r in results) / count if count else float('nan'),
                num_categories=count,
            )
        return PanopticMetrics(groups=groups, per_category=per_category)
