"""Panoptic rule for known classes: things are instances, stuff merges per class."""

from __future__ import annotations

import numpy as np
import pytest

from m2a_perception.postprocess import (
    compute_known_panoptic,
    compute_query_probabilities,
    postprocess,
)
from m2a_perception.preprocess import PreprocessRecord
from m2a_perception.types import SegmentKind
from tests.postprocess.postprocess_builders import (
    BUILDING,
    CAR,
    NO_OBJECT,
    PERSON,
    ROAD,
    box_mask,
    check_segments_match_map,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    stack_queries,
    with_probability,
)

SIZE = (12, 16)


def _street() -> tuple[dict[str, np.ndarray], tuple]:
    regions = {
        'road_left': box_mask(SIZE, 6, 0, 12, 8),
        'road_right': box_mask(SIZE, 6, 8, 12, 16),
        'building': box_mask(SIZE, 0, 0, 6, 16),
        'car_a': box_mask(SIZE, 7, 1, 10, 4),
        'car_b': box_mask(SIZE, 7, 10, 10, 13),
    }
    queries = [
        (confident(ROAD), mask_logit(regions['road_left'])),
        (confident(CAR), mask_logit(regions['car_a'], inside=20.0)),
        (confident(BUILDING), mask_logit(regions['building'])),
        (confident(ROAD), mask_logit(regions['road_right'])),
        (confident(CAR), mask_logit(regions['car_b'], inside=20.0)),
        # Dropped: "no object" wins, and a person below the object-mask threshold.
        (confident(NO_OBJECT), mask_logit(regions['building'])),
        (with_probability(PERSON, 0.5), mask_logit(regions['car_a'])),
    ]
    return regions, stack_queries(queries, SIZE)


def test_things_are_separate_instances_and_stuff_merges_per_class():
    regions, (class_logits, mask_logits) = _street()
    output = postprocess(class_logits, mask_logits, identity_record(SIZE), quiet_config())
    ids = output.panoptic.numpy()
    by_class = {}
    for segment in output.segments:
        by_class.setdefault(segment.class_id, []).append(segment)
    assert sorted(by_class) == [ROAD, BUILDING, CAR]
    # One road segment covering both road queries minus the cars painted over it.
    (road,) = by_class[ROAD]
    road_pixels = (regions['road_left'] | regions['road_right']) & ~(
        regions['car_a'] | regions['car_b']
    )
    assert road.kind is SegmentKind.STUFF
    np.testing.assert_array_equal(ids == road.id, road_pixels)
    # Two car instances with their own boxes.
    cars = by_class[CAR]
    assert [c.kind for c in cars] == [SegmentKind.THING, SegmentKind.THING]
    assert {c.bbox for c in cars} == {(1, 7, 4, 10), (10, 7, 13, 10)}
    assert all(c.area == 9 for c in cars)
    (building,) = by_class[BUILDING]
    assert building.kind is SegmentKind.STUFF
    assert building.bbox == (0, 0, 16, 6)
    assert building.class_score == pytest.approx(1.0, abs=1e-6)
    check_segments_match_map(output)


def test_segment_ids_follow_query_order():
    _, (class_logits, mask_logits) = _street()
    output = postprocess(class_logits, mask_logits, identity_record(SIZE), quiet_config())
    # Query order: road (1), car a (2), building (3), road again (merged), car b (4).
    assert [(s.id, s.class_id) for s in output.segments] == [
        (1, ROAD),
        (2, CAR),
        (3, BUILDING),
        (4, CAR),
    ]


def test_overlap_threshold_drops_a_mostly_hidden_query():
    everything = np.ones(SIZE, dtype=bool)
    corner = box_mask(SIZE, 0, 0, 4, 4)
    class_logits, mask_logits = stack_queries(
        [
            (confident(ROAD), mask_logit(everything, inside=20.0)),
            # Covers the whole image but wins only the corner where the road mask is weak.
            (with_probability(CAR, 0.9), mask_logit(everything)),
        ],
        SIZE,
    )
    mask_logits[0][corner] = -20.0
    table = compute_known_panoptic(*compute_query_probabilities(class_logits, mask_logits), (CAR,))
    ids = table.id_map.numpy()
    # The car wins 16 of 192 pixels of its mask (< 0.8): dropped, its pixels stay empty.
    assert (ids[corner] == 0).all()
    assert (ids[~corner] == 1).all()
    lenient = compute_known_panoptic(
        *compute_query_probabilities(class_logits, mask_logits), (CAR,), overlap_threshold=0.05
    )
    assert (lenient.id_map.numpy()[corner] == 2).all()
    assert int(lenient.class_ids[2]) == CAR
    assert bool(lenient.is_thing[2])


def test_no_kept_query_gives_an_empty_map():
    class_logits, mask_logits = stack_queries(
        [(confident(NO_OBJECT), mask_logit(np.ones(SIZE, dtype=bool)))], SIZE
    )
    output = postprocess(class_logits, mask_logits, identity_record(SIZE), quiet_config())
    assert not output.panoptic.numpy().any()
    assert output.segments == ()


@pytest.mark.parametrize('resolution', ['source', 'model'])
def test_segment_list_agrees_with_upsampled_map(resolution):
    _, (class_logits, mask_logits) = _street()
    # Mask 12x16 -> padded 48x64, resized 45x61, source 90x122: odd scales on purpose.
    record = PreprocessRecord(source_size=(90, 122), resized_size=(45, 61), padded_size=(48, 64))
    output = postprocess(
        class_logits, mask_logits, record, quiet_config(output_resolution=resolution)
    )
    assert len(output.segments) == 4
    check_segments_match_map(output)
    for segment in output.segments:
        x0, y0, x1, y1 = segment.bbox
        assert 0 <= x0 < x1 <= 122
        assert 0 <= y0 < y1 <= 90


def test_thing_ids_out_of_range_are_rejected():
    _, (class_logits, mask_logits) = _street()
    with pytest.raises(ValueError, match='out of range'):
        compute_known_panoptic(*compute_query_probabilities(class_logits, mask_logits), (40,))
