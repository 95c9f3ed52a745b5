"""The `official` scoring protocol (anomaly_utils/anomaly_inference.py) against known answers.

Each switch is checked alone: source-resolution scoring, the two-query refinement rule and the
official flip geometry (mirror the source image, padding stays on the right).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.config import PreprocessConfig
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig, flip_network_input, postprocess
from m2a_perception.preprocess import Preprocessor, PreprocessRecord
from m2a_perception.types import NetworkOutput
from tests.postprocess.postprocess_builders import (
    BUILDING,
    NUM_CLASSES,
    ROAD,
    SKY,
    box_mask,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    spread,
    stack_queries,
)

# Mask resolution 1x2, padded input 1x8 (x4), resized and source 1x6: two padding columns.
PADDED_RECORD = PreprocessRecord(source_size=(1, 6), resized_size=(1, 6), padded_size=(1, 8))
# Bilinear x4 (align_corners False) of the mask logits [-4, 4], worked by hand: output column x
# samples (x + 0.5) / 4 - 0.5 = -0.375, -0.125 (clamped to 0), 0.125, 0.375, 0.625, 0.875, ...
UPSAMPLED_LOGITS = np.array([-4.0, -4.0, -3.0, -1.0, 1.0, 3.0, 4.0, 4.0])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _one_road_query(left: float, right: float) -> tuple[torch.Tensor, torch.Tensor]:
    return confident(ROAD)[None], torch.tensor([[[left, right]]])


def _scoring_only(**overrides: object) -> PostprocessConfig:
    return quiet_config(refinement='off', panoptic=False, semantic=False, **overrides)


def test_source_scoring_upsamples_the_logits_before_the_sigmoid() -> None:
    class_logits, mask_logits = _one_road_query(-4.0, 4.0)
    output = postprocess(
        class_logits, mask_logits, PADDED_RECORD, _scoring_only(scoring_resolution='source')
    )
    # One certain road query: S_road = sigmoid(upsampled logit), score 1 - S_road; the two
    # padding columns are cropped off.
    expected = 1.0 - _sigmoid(UPSAMPLED_LOGITS[:6])
    np.testing.assert_allclose(output.anomaly_map.numpy()[0], expected, rtol=0, atol=1e-6)


def test_mask_scoring_resizes_the_score_instead() -> None:
    class_logits, mask_logits = _one_road_query(-4.0, 4.0)
    output = postprocess(class_logits, mask_logits, PADDED_RECORD, _scoring_only())
    low, high = 1.0 - _sigmoid(-4.0), 1.0 - _sigmoid(4.0)
    weights = np.array([0.0, 0.0, 0.125, 0.375, 0.625, 0.875])
    expected = (1.0 - weights) * low + weights * high
    np.testing.assert_allclose(output.anomaly_map.numpy()[0], expected, rtol=0, atol=1e-6)
    # The two protocols differ most at the step: column 3 is 0.24 lower with source scoring.
    source = postprocess(
        class_logits, mask_logits, PADDED_RECORD, _scoring_only(scoring_resolution='source')
    )
    gap = output.anomaly_map[0, 3] - source.anomaly_map[0, 3]
    assert float(gap) == pytest.approx(0.625 * low + 0.375 * high - (1 - _sigmoid(-1.0)), 1e-6)


def test_source_scoring_labels_follow_the_official_bilinear_order() -> None:
    # Road on the left, sky on the right at mask resolution: with source scoring the label
    # boundary sits where the upsampled logits cross (between columns 3 and 4 of 8).
    class_logits = torch.stack([confident(ROAD), confident(SKY)])
    mask_logits = torch.tensor([[[4.0, -4.0]], [[-4.0, 4.0]]])
    config = quiet_config(
        refinement='off', panoptic=False, scoring_resolution='source', anomaly_threshold=None
    )
    output = postprocess(class_logits, mask_logits, PADDED_RECORD, config)
    assert output.semantic is not None
    np.testing.assert_array_equal(output.semantic.numpy()[0], [ROAD] * 4 + [SKY] * 2)


def _stuff_scene(num_confident: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left half building, right half sky (confident or unsure), on a 4x8 mask grid."""
    size = (4, 8)
    left = box_mask(size, 0, 0, 4, 4)
    right_class = confident(SKY) if num_confident == 2 else spread()
    return stack_queries(
        [(confident(BUILDING), mask_logit(left)), (right_class, mask_logit(~left))], size
    )


@pytest.mark.parametrize('num_confident', [1, 2])
def test_two_query_refinement_rule(num_confident: int) -> None:
    class_logits, mask_logits = _stuff_scene(num_confident)
    record = identity_record((4, 8))
    official = PostprocessConfig.for_protocol('official', flip=False, mining=False)
    node = PostprocessConfig.for_protocol('node', mining=False)
    assert official.refinement_min_queries == 2 and node.refinement_min_queries == 1
    got = postprocess(class_logits, mask_logits, record, official).anomaly_map.numpy()
    fast = postprocess(class_logits, mask_logits, record, node).anomaly_map.numpy()
    unrefined = 1.0 - _sigmoid(12.0)  # a certain building query, not suppressed
    # The node refines with one confident stuff query: the building half is 0.
    np.testing.assert_array_equal(fast[:, :4], 0.0)
    if num_confident == 1:
        # Official: `shape[0] > 1` fails with one confident query, nothing is suppressed.
        # (float32: 1 - sigmoid(12) rounds to 5.9e-6; the unsure query adds ~3e-7.)
        np.testing.assert_allclose(got[:, :4], unrefined, rtol=0, atol=5e-7)
        assert bool((got[:, :4] > 5e-6).all())
    else:
        np.testing.assert_array_equal(got, 0.0)


def test_official_flip_crops_before_flipping_back() -> None:
    plain = _one_road_query(-4.0, 4.0)
    mirrored = _one_road_query(4.0, -4.0)
    config = _scoring_only(scoring_resolution='source', flip=True)
    output = postprocess(*plain, PADDED_RECORD, config, flipped=NetworkOutput(*mirrored))
    plain_map = 1.0 - _sigmoid(UPSAMPLED_LOGITS[:6])
    # The mirrored pass has its padding on the right too: crop its first 6 columns, then flip.
    mirrored_map = (1.0 - _sigmoid(-UPSAMPLED_LOGITS[:6]))[::-1]
    np.testing.assert_allclose(
        output.anomaly_map.numpy()[0], 0.5 * (plain_map + mirrored_map), rtol=0, atol=1e-6
    )
    # Flipping the padded map back before cropping (padding on the left) is not the same.
    padded_flip = (1.0 - _sigmoid(-UPSAMPLED_LOGITS))[::-1][:6]
    assert np.abs(padded_flip - mirrored_map).max() > 0.2


def test_flip_network_input_equals_preprocessing_the_mirrored_source() -> None:
    # 45x70 with short side 64 -> 64x100, padded to 64x128: 28 padding columns.
    preprocessor = Preprocessor(PreprocessConfig(short_side=64, max_size=1000))
    rng = np.random.default_rng(3)
    source = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    images, record = preprocessor(source)
    assert record.resized_size == (64, 100) and record.padded_size == (64, 128)
    mirrored, _ = preprocessor(np.ascontiguousarray(source[:, ::-1]))
    flipped = flip_network_input(images, record)
    torch.testing.assert_close(flipped, mirrored, rtol=0, atol=0)
    assert bool((flipped[..., 100:] == 0).all())


def test_segmenter_feeds_the_mirrored_source_to_the_second_pass() -> None:
    preprocess_config = PreprocessConfig(short_side=64, max_size=1000)
    calls: list[torch.Tensor] = []

    def backend(images: torch.Tensor) -> NetworkOutput:
        calls.append(images.clone())
        batch = images.shape[0]
        class_logits = confident(ROAD).expand(batch, 1, NUM_CLASSES + 1).clone()
        # Mask logits from the red channel, so the anomaly map follows the image content.
        mask_logits = torch.nn.functional.avg_pool2d(images[:, :1], 4)
        return NetworkOutput(class_logits, mask_logits)

    config = PostprocessConfig.for_protocol('official', mining=False, panoptic=False)
    segmenter = Segmenter(backend, preprocess_config, config)
    rng = np.random.default_rng(4)
    source = rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)
    output = segmenter(source)
    mirrored_input, _ = Preprocessor(preprocess_config)(np.ascontiguousarray(source[:, ::-1]))
    assert len(calls) == 2
    torch.testing.assert_close(calls[1], mirrored_input, rtol=0, atol=0)
    assert output.anomaly_map.shape == (45, 70)


def test_protocol_presets_and_overrides() -> None:
    official = PostprocessConfig.for_protocol('official')
    assert (official.scoring_resolution, official.flip, official.label_upsampling) == (
        'source',
        True,
        'bilinear',
    )
    assert PostprocessConfig.for_protocol('node') == PostprocessConfig()
    alone = PostprocessConfig.for_protocol('node', scoring_resolution='source')
    assert alone.scoring_resolution == 'source' and not alone.flip
    with pytest.raises(ValueError, match='protocol must be one of'):
        PostprocessConfig.for_protocol('paper')
