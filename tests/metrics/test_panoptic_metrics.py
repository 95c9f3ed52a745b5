"""Panoptic quality: hand-computed images, open-set protocol, parity with cityscapesScripts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_perception.metrics.panoptic import (
    UNKNOWN_CATEGORY_ID,
    PanopticAccumulator,
    PanopticCategory,
    PanopticSegment,
    open_set_categories,
    panoptic_id_to_rgb,
    relabel_unknown_segments,
    rgb_to_panoptic_id,
)

PERSON, CAR, ROAD, COW = 1, 2, 3, 4
CATEGORIES = [
    PanopticCategory(PERSON, 'person', True),
    PanopticCategory(CAR, 'car', True),
    PanopticCategory(ROAD, 'road', False),
]


def _row(spans: dict[int, tuple[int, int]], width: int = 60) -> np.ndarray:
    """A 1 x width id map with id -> [start, stop) spans; everything else 0 (VOID)."""
    ids = np.zeros((1, width), dtype=np.int64)
    for segment_id, (start, stop) in spans.items():
        ids[0, start:stop] = segment_id
    return ids


def test_closed_set_image_by_hand() -> None:
    gt = _row({1: (0, 10), 2: (10, 16), 3: (16, 36), 4: (36, 44)})  # 44..59 VOID
    gt_segments = [
        PanopticSegment(1, PERSON),
        PanopticSegment(2, PERSON),
        PanopticSegment(3, ROAD),
        PanopticSegment(4, CAR, is_crowd=True),
    ]
    pred = _row({11: (0, 9), 12: (9, 13), 13: (16, 34), 16: (34, 36), 14: (36, 43), 15: (47, 53)})
    pred[0, 44] = 11  # one pixel of p11 on VOID
    pred_segments = [
        PanopticSegment(11, PERSON),  # IoU with gt 1 = 9 / (10 + 10 - 9 - 1) = 0.9: TP
        PanopticSegment(12, PERSON),  # IoU with gt 2 = 3 / 7: no match -> FP; gt 2 -> FN
        PanopticSegment(13, ROAD),  # IoU with gt 3 = 18 / 20: TP
        PanopticSegment(16, CAR),  # on road, no void / crowd: FP
        PanopticSegment(14, CAR),  # inside the car crowd region: ignored
        PanopticSegment(15, CAR),  # on VOID: ignored
    ]
    accumulator = PanopticAccumulator(CATEGORIES)
    accumulator.update(gt, gt_segments, pred, pred_segments)
    metrics = accumulator.compute()
    person, road, car = (metrics.per_category[c] for c in (PERSON, ROAD, CAR))
    # person: PQ = 0.9 / (1 + 0.5 + 0.5); road: 0.9 / 1; car: one FP, no TP -> 0 (counted).
    assert (person.true_positives, person.false_positives, person.false_negatives) == (1, 1, 1)
    assert (person.pq, person.sq, person.rq) == pytest.approx((0.45, 0.9, 0.5))
    assert (road.pq, road.sq, road.rq) == pytest.approx((0.9, 0.9, 1.0))
    assert (car.pq, car.sq, car.rq, car.false_positives) == (0.0, 0.0, 0.0, 1)
    things, stuff, everything = (metrics.groups[g] for g in ('things', 'stuff', 'all'))
    assert (things.pq, things.sq, things.rq, things.num_categories) == pytest.approx(
        (0.225, 0.45, 0.25, 2)
    )
    assert (stuff.pq, stuff.sq, stuff.rq) == pytest.approx((0.9, 0.9, 1.0))
    assert (everything.pq, everything.sq, everything.rq) == pytest.approx((0.45, 0.6, 0.5))


def test_gt_area_from_annotation_is_used() -> None:
    # panopticapi takes GT areas from the JSON: a larger annotated area lowers the IoU.
    gt, pred = _row({1: (0, 10)}), _row({5: (0, 10)})
    accumulator = PanopticAccumulator(CATEGORIES)
    accumulator.update(gt, [PanopticSegment(1, ROAD, area=16)], pred, [PanopticSegment(5, ROAD)])
    assert accumulator.compute().per_category[ROAD].sq == pytest.approx(10 / 16)


def test_open_set_protocol_by_hand() -> None:
    categories, unknown_ids = open_set_categories(
        [*CATEGORIES, PanopticCategory(COW, 'cow', True)], ['cow']
    )
    assert unknown_ids == {COW}
    assert [c.id for c in categories] == [PERSON, CAR, ROAD, UNKNOWN_CATEGORY_ID]
    gt = _row({1: (0, 10), 2: (10, 20), 3: (20, 30)})
    gt_segments = relabel_unknown_segments(
        [PanopticSegment(1, COW), PanopticSegment(2, COW), PanopticSegment(3, ROAD)], unknown_ids
    )
    pred = _row({7: (0, 10), 8: (10, 20), 9: (20, 30)})
    pred_segments = [
        PanopticSegment(7, UNKNOWN_CATEGORY_ID),  # finds cow 1
        PanopticSegment(8, PERSON),  # a known label on cow 2: FP person, FN unknown
        PanopticSegment(9, ROAD),
    ]
    accumulator = PanopticAccumulator(categories, unknown_category_id=UNKNOWN_CATEGORY_ID)
    accumulator.update(gt, gt_segments, pred, pred_segments)
    groups = accumulator.compute().groups
    assert (groups['unknown'].pq, groups['unknown'].sq, groups['unknown'].rq) == pytest.approx(
        (2 / 3, 1.0, 2 / 3)
    )
    assert groups['things'].pq == 0.0 and groups['things'].num_categories == 1  # person only
    assert groups['stuff'].pq == 1.0
    assert groups['all'].pq == pytest.approx(0.5)  # person and road; unknown excluded


def test_inconsistent_segments_raise() -> None:
    accumulator = PanopticAccumulator(CATEGORIES)
    gt = _row({1: (0, 10)})
    segments = [PanopticSegment(1, ROAD)]
    with pytest.raises(ValueError, match='not listed'):
        accumulator.update(gt, segments, _row({5: (0, 10)}), [])
    with pytest.raises(ValueError, match='not in the map'):
        accumulator.update(gt, segments, _row({}), [PanopticSegment(5, ROAD)])
    with pytest.raises(ValueError, match='not among the categories'):
        accumulator.update(gt, [PanopticSegment(1, COW)], _row({}), [])
    with pytest.raises(ValueError, match='reserved for VOID'):
        accumulator.update(gt, [PanopticSegment(0, ROAD)], _row({}), [])
    with pytest.raises(ValueError, match='not among the categories'):
        open_set_categories(CATEGORIES, ['zebra'])


def test_rgb_id_round_trip() -> None:
    ids = np.array([[0, 1, 255, 256, 65536 + 7, (1 << 24) - 1]])
    rgb = panoptic_id_to_rgb(ids)
    assert rgb[0, 3].tolist() == [0, 1, 0]
    np.testing.assert_array_equal(rgb_to_panoptic_id(rgb), ids)


# ------------------------------------------------------------------------------------------
# Parity with cityscapesScripts' copy of panopticapi (pq_compute_single_core + average_pq)

PARITY_CATEGORIES = [
    PanopticCategory(24, 'person', True),
    PanopticCategory(26, 'car', True),
    PanopticCategory(7, 'road', False),
    PanopticCategory(21, 'vegetation', False),
]


def _random_image(rng: np.random.Generator):
    """Blocky GT with crowd and VOID, and a perturbed prediction; returns maps and segments."""
    blocks = rng.integers(0, 10, size=(6, 8))
    gt = np.kron(blocks, np.ones((4, 4), dtype=np.int64))  # id 0 = VOID
    gt_segments = []
    for segment_id in np.unique(gt[gt > 0]).tolist():
        category = PARITY_CATEGORIES[rng.integers(0, 4)]
        is_crowd = category.is_thing and rng.random() < 0.2
        area = int((gt == segment_id).sum()) + (3 if rng.random() < 0.2 else 0)
        gt_segments.append(PanopticSegment(segment_id, category.id, bool(is_crowd), area))
    pred = np.where(gt > 0, gt + 100, 0)
    noise = rng.random(gt.shape) < 0.25
    pred[noise] = rng.choice([0, 150, 151, *np.unique(pred[pred > 0])], size=int(noise.sum()))
    category_of_gt = {s.id + 100: s.category_id for s in gt_segments}
    pred_segments = []
    for segment_id in np.unique(pred[pred > 0]).tolist():
        category = category_of_gt.get(segment_id)
        if category is None or rng.random() < 0.15:
            category = PARITY_CATEGORIES[rng.integers(0, 4)].id
        pred_segments.append(PanopticSegment(segment_id, category))
    return gt, gt_segments, pred, pred_segments


def _annotation(image_id: str, segments: list[PanopticSegment], with_area: bool) -> dict:
    infos = []
    for segment in segments:
        info = {
            'id': segment.id,
            'category_id': segment.category_id,
            'iscrowd': int(segment.is_crowd),
        }
        if with_area:
            info['area'] = segment.area
        infos.append(info)
    return {'image_id': image_id, 'file_name': f'{image_id}.png', 'segments_info': infos}


def test_pq_matches_cityscapesscripts(tmp_path: Path) -> None:
    from cityscapesscripts.evaluation import evalPanopticSemanticLabeling

    rng = np.random.default_rng(0)
    gt_folder, pred_folder = tmp_path / 'gt', tmp_path / 'pred'
    gt_folder.mkdir()
    pred_folder.mkdir()
    accumulator = PanopticAccumulator(PARITY_CATEGORIES)
    pairs = []
    for index in range(8):
        gt, gt_segments, pred, pred_segments = _random_image(rng)
        image_id = f'frankfurt_000000_{index:06d}'
        Image.fromarray(panoptic_id_to_rgb(gt)).save(gt_folder / f'{image_id}.png')
        Image.fromarray(panoptic_id_to_rgb(pred)).save(pred_folder / f'{image_id}.png')
        pairs.append(
            (_annotation(image_id, gt_segments, True), _annotation(image_id, pred_segments, False))
        )
        accumulator.update(gt, gt_segments, pred, pred_segments)
    # Round-trip through JSON like the real evaluation inputs.
    pairs = json.loads(json.dumps(pairs))
    categories = {
        c.id: {'id': c.id, 'name': c.name, 'isthing': int(c.is_thing)} for c in PARITY_CATEGORIES
    }
    stats = evalPanopticSemanticLabeling.pq_compute_single_core(
        0, pairs, str(gt_folder), str(pred_folder), categories
    )
    reference = evalPanopticSemanticLabeling.average_pq(stats, categories)
    ours = accumulator.compute()
    for theirs, mine in (('All', 'all'), ('Things', 'things'), ('Stuff', 'stuff')):
        group = ours.groups[mine]
        assert reference[theirs]['n'] == group.num_categories
        for key in ('pq', 'sq', 'rq'):
            assert getattr(group, key) == pytest.approx(reference[theirs][key], abs=1e-12)
    for category_id, result in reference['per_class'].items():
        mine = ours.per_category.get(category_id)
        expected = (0.0, 0.0, 0.0) if mine is None else (mine.pq, mine.sq, mine.rq)
        assert expected == pytest.approx((result['pq'], result['sq'], result['rq']), abs=1e-12)
