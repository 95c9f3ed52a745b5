"""Unknown-instance mining (Section 6): background map, components, IoU and entropy rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.postprocess import (
    compute_background_map,
    compute_query_probabilities,
    find_connected_components,
    mine_unknown_instances,
    postprocess,
)
from m2a_perception.postprocess.panoptic import compute_group_entropy
from m2a_perception.types import SegmentKind
from tests.postprocess.postprocess_builders import (
    CAR,
    NO_OBJECT,
    NUM_CLASSES,
    ROAD,
    VEGETATION,
    box_mask,
    check_segments_match_map,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    stack_queries,
)

SIZE = (20, 30)
THINGS = tuple(range(11, 19))
BLOB_A = box_mask(SIZE, 3, 4, 8, 10)  # 5x6
BLOB_B = box_mask(SIZE, 12, 18, 16, 26)  # 4x8


def thing_like() -> torch.Tensor:
    """A query that predicts "no object" (so it is not a known query for Eq. 15) whose class
    distribution is flat over stuff and peaked on car among things: E_S = 1 > E_T."""
    logits = torch.zeros(NUM_CLASSES + 1)
    logits[CAR] = 4.0
    logits[NO_OBJECT] = 6.0
    return logits


def stuff_like() -> torch.Tensor:
    """Like `thing_like`, but peaked on vegetation among stuff and flat over things: E_S < E_T."""
    logits = torch.zeros(NUM_CLASSES + 1)
    logits[VEGETATION] = 4.0
    logits[NO_OBJECT] = 6.0
    return logits


def _scene(blob_queries):
    road = np.ones(SIZE, dtype=bool) & ~BLOB_A & ~BLOB_B
    queries = [(confident(ROAD), mask_logit(road)), *blob_queries]
    return stack_queries(queries, SIZE)


def _mine(class_logits, mask_logits, **kwargs):
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    background = compute_background_map(class_probs, mask_probs)
    return mine_unknown_instances(background, class_probs, mask_probs, THINGS, **kwargs)


def test_background_map_is_high_only_where_no_known_query_is_confident():
    class_logits, mask_logits = _scene([(thing_like(), mask_logit(BLOB_A))])
    background = compute_background_map(*compute_query_probabilities(class_logits, mask_logits))
    blobs = BLOB_A | BLOB_B
    assert background.numpy()[blobs].min() > 0.99
    assert background.numpy()[~blobs].max() < 1e-3


def test_group_entropy_is_normalised():
    uniform = torch.full((1, NUM_CLASSES), 1.0 / NUM_CLASSES)
    peaked = torch.zeros(1, NUM_CLASSES)
    peaked[0, CAR] = 1.0
    assert compute_group_entropy(uniform, THINGS).item() == pytest.approx(1.0)
    assert compute_group_entropy(peaked, THINGS).item() == pytest.approx(0.0)


def test_two_anomalous_blobs_give_two_unknown_instances_with_the_right_boxes():
    class_logits, mask_logits = _scene(
        [(thing_like(), mask_logit(BLOB_A)), (thing_like(), mask_logit(BLOB_B))]
    )
    output = postprocess(
        class_logits, mask_logits, identity_record(SIZE), quiet_config(mining=True)
    )
    unknown = [s for s in output.segments if s.kind is SegmentKind.UNKNOWN_THING]
    assert len(unknown) == 2
    assert {s.bbox for s in unknown} == {(4, 3, 10, 8), (18, 12, 26, 16)}
    assert {s.area for s in unknown} == {30, 32}
    assert all(s.class_id == output.unknown_id == 19 for s in unknown)
    assert all(s.class_score > 0.99 for s in unknown)
    ids = output.panoptic.numpy()
    for segment, blob in zip(sorted(unknown, key=lambda s: s.area), (BLOB_A, BLOB_B), strict=True):
        np.testing.assert_array_equal(ids == segment.id, blob)
    # The road is the only known segment and keeps every other pixel.
    (road,) = [s for s in output.segments if s.kind is SegmentKind.STUFF]
    assert road.area == SIZE[0] * SIZE[1] - 62
    check_segments_match_map(output)


def test_entropy_rule_rejects_a_stuff_like_query():
    class_logits, mask_logits = _scene(
        [(thing_like(), mask_logit(BLOB_A)), (stuff_like(), mask_logit(BLOB_B))]
    )
    mined = _mine(class_logits, mask_logits)
    assert mined.num_instances == 1
    np.testing.assert_array_equal(mined.label_map.numpy() == 1, BLOB_A)
    assert int(mined.query_indices[0]) == 1
    assert _mine(class_logits, mask_logits, entropy_rule=False).num_instances == 2


def test_iou_threshold_needs_an_overlapping_query():
    # No query covers blob B: it has IoU 0 with every mask.
    class_logits, mask_logits = _scene([(thing_like(), mask_logit(BLOB_A))])
    assert _mine(class_logits, mask_logits).num_instances == 1
    # A mask twice the blob's size has IoU 0.5: accepted at 0.5, rejected at 0.6.
    wide = box_mask(SIZE, 3, 4, 8, 16)
    class_logits, mask_logits = _scene([(thing_like(), mask_logit(wide))])
    assert _mine(class_logits, mask_logits, iou_threshold=0.5).num_instances == 1
    assert _mine(class_logits, mask_logits, iou_threshold=0.6).num_instances == 0


def test_min_area_and_max_instances():
    class_logits, mask_logits = _scene(
        [(thing_like(), mask_logit(BLOB_A)), (thing_like(), mask_logit(BLOB_B))]
    )
    assert _mine(class_logits, mask_logits, min_area=31).num_instances == 1
    largest = _mine(class_logits, mask_logits, max_instances=1)
    assert largest.num_instances == 1
    np.testing.assert_array_equal(largest.label_map.numpy() == 1, BLOB_B)


def test_query_region_split_separates_touching_objects():
    # One component made of two touching halves, each won by its own thing-like query.
    left = box_mask(SIZE, 5, 5, 10, 10)
    right = box_mask(SIZE, 5, 10, 10, 15)
    road = ~(left | right)
    class_logits, mask_logits = stack_queries(
        [
            (confident(ROAD), mask_logit(road)),
            (thing_like(), mask_logit(left)),
            (thing_like(), mask_logit(right)),
        ],
        SIZE,
    )
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    regions = (mask_probs * (1.0 - class_probs[:, -1])[:, None, None]).argmax(0)
    whole = _mine(class_logits, mask_logits, iou_threshold=0.3)
    split = _mine(class_logits, mask_logits, iou_threshold=0.3, regions=regions)
    assert whole.num_instances == 1
    assert split.num_instances == 2
    pieces = {tuple(np.argwhere(split.label_map.numpy() == i).min(0)) for i in (1, 2)}
    assert pieces == {(5, 5), (5, 10)}
    config = quiet_config(mining=True, mining_split='query_regions')
    output = postprocess(class_logits, mask_logits, identity_record(SIZE), config)
    assert sum(s.kind is SegmentKind.UNKNOWN_THING for s in output.segments) == 2


def test_query_region_split_merges_slivers():
    blob = box_mask(SIZE, 5, 5, 10, 15)
    regions = torch.zeros(SIZE, dtype=torch.long)
    regions[5:10, 5:14] = 1
    regions[5:10, 14] = 2  # a one-column sliver: 5 of 50 pixels
    labels = torch.from_numpy(blob.astype(np.int64))
    from m2a_perception.postprocess.panoptic import split_by_regions

    merged, count = split_by_regions(labels, regions, 3, min_fraction=0.2)
    assert count == 1
    np.testing.assert_array_equal(merged.numpy() == 1, blob)
    _, count = split_by_regions(labels, regions, 3, min_fraction=0.05)
    assert count == 2


def test_iterative_components_match_opencv_once_converged():
    mask = torch.from_numpy(BLOB_A | BLOB_B)
    exact, count = find_connected_components(mask)
    propagated, count_iterative = find_connected_components(
        mask, backend='iterative', iterations=20
    )
    assert count == count_iterative == 2
    # Same partition (label numbers may differ).
    pairs = {(int(a), int(b)) for a, b in zip(exact.flatten(), propagated.flatten(), strict=True)}
    assert len(pairs) == 3


def test_iterative_components_split_long_shapes_when_not_converged():
    bar = torch.from_numpy(box_mask(SIZE, 10, 0, 11, 30))
    _, few = find_connected_components(bar, backend='iterative', iterations=2)
    _, exact = find_connected_components(bar)
    assert exact == 1
    assert few > 1


def test_four_connectivity_separates_diagonal_neighbours():
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = True
    assert find_connected_components(mask, connectivity=8)[1] == 1
    assert find_connected_components(mask, connectivity=4)[1] == 2
    assert find_connected_components(mask, connectivity=4, backend='iterative')[1] == 2


def test_mining_on_the_anomaly_map():
    class_logits, mask_logits = _scene([(thing_like(), mask_logit(BLOB_A))])
    config = quiet_config(mining=True, mining_map='anomaly', refinement='off')
    output = postprocess(class_logits, mask_logits, identity_record(SIZE), config)
    unknown = [s for s in output.segments if s.kind is SegmentKind.UNKNOWN_THING]
    assert [s.bbox for s in unknown] == [(4, 3, 10, 8)]
