"""Open-set semantic segmentation (Eq. 14) and output resolution handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.classes import UNKNOWN_ID
from m2a_perception.postprocess import compute_open_set_semantic, postprocess
from m2a_perception.preprocess import PreprocessRecord
from tests.postprocess.postprocess_builders import (
    CAR,
    ROAD,
    VEGETATION,
    box_mask,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    spread,
    stack_queries,
)

SIZE = (6, 8)


def test_unknown_exactly_where_the_score_reaches_the_threshold():
    class_scores = torch.zeros(19, *SIZE)
    class_scores[CAR] = 0.7
    class_scores[ROAD, :, :4] = 0.9
    anomaly = torch.linspace(0.0, 1.0, SIZE[0] * SIZE[1]).reshape(SIZE)
    threshold = float(anomaly[3, 2])  # an exact value of the map: '>=' must include it
    labels, confidence = compute_open_set_semantic(class_scores, anomaly, threshold, UNKNOWN_ID)
    unknown = anomaly.numpy() >= threshold
    expected = np.where(np.arange(SIZE[1])[None] < 4, ROAD, CAR).repeat(SIZE[0], 0)
    expected = np.where(unknown, UNKNOWN_ID, expected)
    assert labels.dtype == torch.uint8
    np.testing.assert_array_equal(labels.numpy(), expected)
    best = np.where(np.arange(SIZE[1])[None] < 4, 0.9, 0.7).repeat(SIZE[0], 0)
    np.testing.assert_allclose(confidence.numpy(), np.where(unknown, 1.0 - best, best), atol=1e-6)


def test_no_threshold_gives_a_closed_set_map():
    class_scores = torch.zeros(19, *SIZE)
    class_scores[VEGETATION] = 0.5
    labels, _ = compute_open_set_semantic(class_scores, torch.ones(SIZE), None, UNKNOWN_ID)
    assert (labels == VEGETATION).all()


def test_semantic_output_through_postprocess_marks_unknown_where_anomalous():
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    class_logits, mask_logits = stack_queries(
        [(confident(ROAD), mask_logit(left)), (spread(), mask_logit(~left))], SIZE
    )
    output = postprocess(
        class_logits, mask_logits, identity_record(SIZE), quiet_config(anomaly_threshold=0.5)
    )
    semantic = output.semantic.numpy()
    assert output.unknown_id == UNKNOWN_ID
    np.testing.assert_array_equal(semantic[left], ROAD)
    np.testing.assert_array_equal(semantic[~left], UNKNOWN_ID)
    np.testing.assert_array_equal(semantic == UNKNOWN_ID, output.anomaly_map.numpy() >= 0.5)
    assert output.confidence.min() >= 0.0
    assert output.confidence.max() <= 1.0


@pytest.mark.parametrize('upsampling', ['nearest', 'bilinear'])
def test_outputs_are_mapped_to_source_and_model_resolution(upsampling):
    # Mask resolution 6x8 = 1/4 of a 24x32 padded input holding a 20x30 resized image, which came
    # from a 40x60 source.
    record = PreprocessRecord(source_size=(40, 60), resized_size=(20, 30), padded_size=(24, 32))
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    class_logits, mask_logits = stack_queries(
        [(confident(ROAD), mask_logit(left)), (confident(CAR), mask_logit(~left))], SIZE
    )
    for resolution, size in (('source', (40, 60)), ('model', (20, 30))):
        config = quiet_config(output_resolution=resolution, label_upsampling=upsampling)
        output = postprocess(class_logits, mask_logits, record, config)
        assert output.output_size == size
        assert output.source_size == (40, 60)
        for name in ('anomaly_map', 'semantic', 'confidence', 'panoptic'):
            assert tuple(getattr(output, name).shape) == size, name
        assert output.anomaly_map.dtype == torch.float32
        assert output.panoptic.dtype == torch.int32
        # The road/car boundary is at column 16 of the padded input (model resolution).
        semantic = output.semantic.numpy()
        scale = size[1] / 30
        assert (semantic[:, : int(14 * scale)] == ROAD).all()
        assert (semantic[:, int(18 * scale) :] == CAR).all()


def test_semantic_and_panoptic_can_be_switched_off():
    class_logits, mask_logits = stack_queries(
        [(confident(ROAD), mask_logit(np.ones(SIZE, bool)))], SIZE
    )
    output = postprocess(
        class_logits,
        mask_logits,
        identity_record(SIZE),
        quiet_config(semantic=False, panoptic=False),
    )
    assert output.semantic is None
    assert output.confidence is None
    assert output.panoptic is None
    assert output.segments == ()
    assert output.anomaly_map.shape == SIZE


@pytest.mark.parametrize('upsampling', ['nearest', 'bilinear'])
def test_unknown_pixels_match_the_published_anomaly_map_at_any_resolution(upsampling):
    record = PreprocessRecord(source_size=(37, 53), resized_size=(20, 30), padded_size=(24, 32))
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    class_logits, mask_logits = stack_queries(
        [(confident(ROAD), mask_logit(left, inside=3.0)), (spread(), mask_logit(~left))], SIZE
    )
    config = quiet_config(label_upsampling=upsampling, anomaly_threshold=0.6)
    output = postprocess(class_logits, mask_logits, record, config)
    unknown = output.semantic.numpy() == UNKNOWN_ID
    assert unknown.any()
    assert not unknown.all()
    np.testing.assert_array_equal(unknown, output.anomaly_map.numpy() >= 0.6)
