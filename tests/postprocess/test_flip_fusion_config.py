"""Flip averaging, CSL structure-constrained fusion and configuration validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.postprocess import (
    PostprocessConfig,
    apply_structure_constrained_fusion,
    compute_soft_regions,
    postprocess,
    predict_with_flip,
)
from m2a_perception.preprocess import PreprocessRecord
from m2a_perception.types import NetworkOutput
from tests.postprocess.postprocess_builders import (
    NUM_CLASSES,
    ROAD,
    box_mask,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    spread,
    stack_queries,
)

SIZE = (8, 12)


def test_predict_with_flip_mirrors_the_resized_region_and_keeps_the_padding_right():
    calls = []

    def predict(images: torch.Tensor) -> NetworkOutput:
        calls.append(images.clone())
        masks = torch.nn.functional.avg_pool2d(images, 4)
        return NetworkOutput(torch.zeros(images.shape[0], 3, NUM_CLASSES + 1), masks)

    # 16x24 resized image padded to 16x32: the official script mirrors the source image, so
    # the padding stays on the right of the mirrored input.
    record = PreprocessRecord(source_size=(16, 24), resized_size=(16, 24), padded_size=(16, 32))
    images = torch.rand(2, 3, 16, 32)
    images[..., 24:] = 0.0
    (class_logits, _), (flip_class, flip_masks) = predict_with_flip(predict, images, record)
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], images)
    torch.testing.assert_close(calls[1][..., :24], images[..., :24].flip(-1))
    assert bool((calls[1][..., 24:] == 0).all())
    assert class_logits.shape == flip_class.shape == (2, 3, NUM_CLASSES + 1)
    # The flipped pass comes back as the network returned it (postprocess flips it back).
    torch.testing.assert_close(flip_masks, torch.nn.functional.avg_pool2d(calls[1], 4))
    with pytest.raises(ValueError, match='B, 3, H, W'):
        predict_with_flip(predict, images[0], record)
    with pytest.raises(ValueError, match='padded size'):
        predict_with_flip(predict, images[..., :24], record)


def _two_passes():
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    plain = stack_queries(
        [(confident(ROAD), mask_logit(left)), (spread(), mask_logit(~left))], SIZE
    )
    # The second pass is unsure everywhere.
    other = stack_queries([(spread(), mask_logit(np.ones(SIZE, dtype=bool)))], SIZE)
    other = NetworkOutput(torch.cat([other[0], other[0]]), torch.cat([other[1], other[1]]))
    return plain, other


def test_flip_averages_the_anomaly_maps_of_both_passes():
    plain, other = _two_passes()
    record = identity_record(SIZE)
    single = postprocess(*plain, record, quiet_config(refinement='off')).anomaly_map
    second = postprocess(*other, record, quiet_config(refinement='off')).anomaly_map
    averaged = postprocess(
        *plain, record, quiet_config(refinement='off', flip=True), flipped=other
    )
    torch.testing.assert_close(averaged.anomaly_map, 0.5 * (single + second))
    # The pass on the mirrored image of the same scene, flipped back, changes nothing.
    mirrored = NetworkOutput(plain[0], plain[1].flip(-1))
    same = postprocess(*plain, record, quiet_config(flip=True), flipped=mirrored)
    torch.testing.assert_close(
        same.anomaly_map, postprocess(*plain, record, quiet_config()).anomaly_map
    )


def test_flip_without_a_flipped_pass_is_an_error():
    plain, _ = _two_passes()
    with pytest.raises(ValueError, match='flipped pass'):
        postprocess(*plain, identity_record(SIZE), quiet_config(flip=True))


def test_structure_constrained_fusion_matches_the_formula():
    anomaly = torch.tensor([[0.2, 0.4, 0.9], [0.1, 0.6, 0.8]])
    regions = torch.tensor([[0, 0, 1], [0, 2, 1]])
    fused = apply_structure_constrained_fusion(anomaly, regions, num_regions=4)
    means = {0: (0.2 + 0.4 + 0.1) / 3, 1: (0.9 + 0.8) / 2, 2: 0.6}
    expected = anomaly.numpy() * np.vectorize(means.get)(regions.numpy())
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-6)
    squared = apply_structure_constrained_fusion(anomaly, regions, 4, exponent=2.0)
    np.testing.assert_allclose(
        squared.numpy(), anomaly.numpy() * np.vectorize(means.get)(regions.numpy()) ** 2, rtol=1e-6
    )


def test_soft_regions_pick_the_most_valid_query():
    mask_probs = torch.tensor([[[0.9, 0.2]], [[0.5, 0.6]]])
    validity = torch.tensor([0.5, 1.0])
    np.testing.assert_array_equal(compute_soft_regions(mask_probs, validity).numpy(), [[1, 1]])


def test_fusion_in_postprocess_lowers_isolated_scores():
    left = box_mask(SIZE, 0, 0, SIZE[0], SIZE[1] // 2)
    class_logits, mask_logits = stack_queries(
        [(confident(ROAD), mask_logit(left)), (spread(), mask_logit(~left))], SIZE
    )
    record = identity_record(SIZE)
    plain = postprocess(class_logits, mask_logits, record, quiet_config(refinement='off'))
    fused = postprocess(
        class_logits, mask_logits, record, quiet_config(refinement='off', scf=True)
    )
    # Uniform scores per region: fusion squares them.
    torch.testing.assert_close(fused.anomaly_map, plain.anomaly_map * plain.anomaly_map)


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        ({'scorer': 'msp'}, 'scorer must be one of'),
        ({'refinement': 'strong'}, 'refinement must be one of'),
        ({'object_mask_threshold': 1.5}, r'object_mask_threshold must be in \[0, 1\]'),
        ({'anomaly_threshold': float('nan')}, 'anomaly_threshold must be finite'),
        ({'scf': True, 'scorer': 'rba'}, 'non-negative scorer'),
        ({'refinement_min_queries': 0}, 'refinement_min_queries'),
        ({'mining_connectivity': 6}, 'mining_connectivity'),
        ({'mining_max_instances': 0}, 'mining_max_instances'),
        ({'thing_class_ids': (11, 11)}, 'distinct'),
        ({'output_resolution': 'mask'}, 'output_resolution'),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        PostprocessConfig(**overrides)


def test_config_round_trips_through_a_dict():
    config = PostprocessConfig(scorer='rba', thing_class_ids=[11, 13], mining_max_instances=3)
    assert config.thing_class_ids == (11, 13)
    assert PostprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match='unknown post-processing keys'):
        PostprocessConfig.from_dict({'scorrer': 'rba'})


def test_defaults_follow_the_official_code():
    config = PostprocessConfig()
    assert config.scorer == 'mask2anomaly'
    assert config.refinement == 'code'
    assert config.refinement_class_threshold == 0.95
    assert config.refinement_min_queries == 1
    assert not config.flip
    assert not config.scf
    assert config.thing_class_ids == tuple(range(11, 19))
