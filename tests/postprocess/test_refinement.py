"""Refinement (Eq. 13): each mode suppresses exactly the pixels it should."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.postprocess import (
    compute_anomaly_map,
    compute_class_scores,
    compute_query_probabilities,
    compute_refinement_mask,
    default_refinement_class_ids,
)
from tests.postprocess.postprocess_builders import (
    BUILDING,
    CAR,
    ROAD,
    SIDEWALK,
    SKY,
    box_mask,
    confident,
    mask_logit,
    quiet_config,
    spread,
    stack_queries,
    with_probability,
)

SIZE = (10, 20)
# Five vertical bands of four columns: building, sidewalk, road, car, unsure building.
BANDS = [box_mask(SIZE, 0, 4 * i, SIZE[0], 4 * i + 4) for i in range(5)]


def _scene() -> tuple[torch.Tensor, torch.Tensor]:
    queries = [
        (confident(BUILDING), mask_logit(BANDS[0])),
        (confident(SIDEWALK), mask_logit(BANDS[1])),
        (confident(ROAD), mask_logit(BANDS[2])),
        (confident(CAR), mask_logit(BANDS[3])),
        # Building, but only 0.6 sure: below the 0.95 class threshold, never refines.
        (with_probability(BUILDING, 0.6), mask_logit(BANDS[4])),
    ]
    class_logits, mask_logits = stack_queries(queries, SIZE)
    return compute_query_probabilities(class_logits, mask_logits)


def _suppressed(mode: str, **kwargs: object) -> np.ndarray:
    class_probs, mask_probs = _scene()
    ids = default_refinement_class_ids(mode)
    return compute_refinement_mask(class_probs, mask_probs, mode, ids, **kwargs).numpy()


def test_default_class_ids_per_mode():
    assert default_refinement_class_ids('code') == tuple(range(2, 11))
    assert default_refinement_class_ids('paper') == tuple(range(1, 11))
    assert default_refinement_class_ids('paper_literal') == (0, *range(11, 19))
    assert default_refinement_class_ids('off') == ()


def test_code_mode_suppresses_confident_stuff_except_road_and_sidewalk():
    np.testing.assert_array_equal(_suppressed('code'), BANDS[0])


def test_paper_mode_also_suppresses_sidewalk():
    np.testing.assert_array_equal(_suppressed('paper'), BANDS[0] | BANDS[1])


def test_paper_literal_mode_keeps_only_thing_and_road_masks():
    np.testing.assert_array_equal(_suppressed('paper_literal'), ~(BANDS[2] | BANDS[3]))


def test_off_mode_suppresses_nothing():
    assert not _suppressed('off').any()


def test_min_queries_reproduces_the_official_two_query_quirk():
    # 'code': one taking-part query (the building) -> the quirk skips refinement.
    assert not _suppressed('code', min_queries=2).any()
    # 'paper': building and sidewalk take part -> two queries, refinement applies.
    np.testing.assert_array_equal(_suppressed('paper', min_queries=2), BANDS[0] | BANDS[1])


def test_code_mode_weights_the_mask_by_the_class_probability():
    # p = 0.96 and sigmoid = 0.515: p * sigmoid = 0.494 < 0.5, so 'code' keeps the pixel while
    # the paper's binarised mask (sigmoid > 0.5) suppresses it.
    region = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    soft = float(np.log(0.515 / 0.485))
    class_logits, mask_logits = stack_queries(
        [(with_probability(SKY, 0.96), mask_logit(region, inside=soft))], SIZE
    )
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    code = compute_refinement_mask(class_probs, mask_probs, 'code', (SKY,))
    paper = compute_refinement_mask(class_probs, mask_probs, 'paper', (SKY,))
    assert not code.any()
    np.testing.assert_array_equal(paper.numpy(), region)


@pytest.mark.parametrize('mode', ['code', 'paper', 'paper_literal'])
def test_refined_anomaly_is_zero_exactly_on_suppressed_pixels(mode):
    class_probs, mask_probs = _scene()
    class_scores = compute_class_scores(class_probs, mask_probs)
    raw = compute_anomaly_map(
        class_scores, class_probs, mask_probs, quiet_config(refinement='off')
    )
    refined = compute_anomaly_map(
        class_scores, class_probs, mask_probs, quiet_config(refinement=mode)
    )
    suppressed = _suppressed(mode)
    assert (refined.numpy()[suppressed] == 0.0).all()
    np.testing.assert_array_equal(refined.numpy()[~suppressed], raw.numpy()[~suppressed])
    # The unsure band keeps a real score, so the comparison above is not vacuous.
    assert raw.numpy()[BANDS[4]].min() > 0.3


def test_signed_scorers_are_suppressed_to_their_floor():
    class_probs, mask_probs = _scene()
    class_scores = compute_class_scores(class_probs, mask_probs)
    refined = compute_anomaly_map(
        class_scores, class_probs, mask_probs, quiet_config(scorer='max_logit')
    )
    np.testing.assert_array_equal(refined.numpy()[BANDS[0]], -1.0)


def test_refinement_rejects_bad_arguments():
    class_probs, mask_probs = _scene()
    with pytest.raises(ValueError, match='unknown refinement mode'):
        compute_refinement_mask(class_probs, mask_probs, 'both', (2,))
    with pytest.raises(ValueError, match='out of range'):
        compute_refinement_mask(class_probs, mask_probs, 'code', (25,))
    with pytest.raises(ValueError, match='min_queries'):
        compute_refinement_mask(class_probs, mask_probs, 'code', (2,), min_queries=0)


def test_no_confident_query_means_no_refinement():
    class_logits, mask_logits = stack_queries([(spread(), mask_logit(BANDS[0]))], SIZE)
    class_probs, mask_probs = compute_query_probabilities(class_logits, mask_logits)
    for mode in ('code', 'paper'):
        ids = default_refinement_class_ids(mode)
        assert not compute_refinement_mask(class_probs, mask_probs, mode, ids).any()
