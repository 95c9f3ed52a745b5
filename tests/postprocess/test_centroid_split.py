"""`mining_split: centroid_head`: mined components split by the instance head's centroids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from m2a_perception.config import load_model_config
from m2a_perception.model import build_model
from m2a_perception.model.instance_head import centroid_positional_embedding
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig, postprocess
from m2a_perception.postprocess.panoptic import compute_centroid_regions, decode_centroids
from m2a_perception.types import SegmentKind
from tests.postprocess.postprocess_builders import (
    ROAD,
    box_mask,
    check_segments_match_map,
    confident,
    identity_record,
    mask_logit,
    quiet_config,
    stack_queries,
)
from tests.postprocess.test_mining import thing_like

SIZE = (20, 30)
HARMONICS = 4
LEFT = box_mask(SIZE, 5, 5, 10, 10)  # rows 5..9, columns 5..9
RIGHT = box_mask(SIZE, 5, 10, 10, 15)  # touching on the right: one component together


def _centroid(mask: np.ndarray) -> tuple[float, float]:
    """(u, v) in [-1, 1] of a mask's centre of mass (cell centres)."""
    rows, columns = np.nonzero(mask)
    height, width = mask.shape
    return (2 * columns.mean() + 1) / width - 1, (2 * rows.mean() + 1) / height - 1


def _embedding(*blobs: np.ndarray) -> torch.Tensor:
    """(4L, h, w): each blob's pixels carry γ of its centroid, every other pixel 0."""
    embedding = torch.zeros(4 * HARMONICS, *SIZE)
    for blob in blobs:
        code = centroid_positional_embedding(
            torch.tensor(_centroid(blob), dtype=torch.float32), HARMONICS
        )
        embedding[:, torch.from_numpy(blob)] = code[:, None]
    return embedding


def _scene():
    """Road plus one thing-like query covering both blobs: a single mined component."""
    both = LEFT | RIGHT
    return stack_queries(
        [(confident(ROAD), mask_logit(~both)), (thing_like(), mask_logit(both))], SIZE
    )


def test_decoding_finds_the_nearest_grid_centroid():
    codes = centroid_positional_embedding(torch.tensor([[0.12, -0.52], [-0.93, 0.86]]), HARMONICS)
    decoded = decode_centroids(codes, (10, 20))
    # Grid centres: columns at -0.95, -0.85, ..., rows at -0.9, -0.7, ...
    torch.testing.assert_close(decoded, torch.tensor([[0.15, -0.5], [-0.95, 0.9]]))


def test_centroid_regions_separate_two_blobs_and_merge_within_the_radius():
    embedding = _embedding(LEFT, RIGHT)
    candidates = torch.from_numpy(LEFT | RIGHT)
    regions, count = compute_centroid_regions(embedding, candidates, (160, 320), radius=4.0)
    assert count == 2
    left, right = regions[torch.from_numpy(LEFT)], regions[torch.from_numpy(RIGHT)]
    assert left.unique().numel() == 1 and right.unique().numel() == 1
    assert int(left[0]) != int(right[0])
    # The centroids are 5 mask pixels apart: a 6-pixel NMS radius makes them one instance.
    _, merged = compute_centroid_regions(embedding, candidates, (160, 320), radius=6.0)
    assert merged == 1


def test_centroid_head_split_gives_two_unknown_instances_where_components_give_one():
    class_logits, mask_logits = _scene()
    record = identity_record(SIZE)
    whole = postprocess(class_logits, mask_logits, record, quiet_config(mining=True))
    assert sum(s.kind is SegmentKind.UNKNOWN_THING for s in whole.segments) == 1

    config = quiet_config(mining=True, mining_split='centroid_head')
    output = postprocess(
        class_logits, mask_logits, record, config, instance_embedding=_embedding(LEFT, RIGHT)
    )
    unknown = [s for s in output.segments if s.kind is SegmentKind.UNKNOWN_THING]
    assert len(unknown) == 2
    check_segments_match_map(output)
    assert output.panoptic is not None
    for blob in (LEFT, RIGHT):
        ids = np.unique(output.panoptic.numpy()[blob])
        assert len(ids) == 1
        assert ids[0] in {s.id for s in unknown}
        assert next(s for s in unknown if s.id == ids[0]).area == int(blob.sum())
    # A batched (1, 4L, h, w) embedding is taken as the single image's.
    batched = postprocess(
        class_logits,
        mask_logits,
        record,
        config,
        instance_embedding=_embedding(LEFT, RIGHT)[None],
    )
    assert torch.equal(batched.panoptic, output.panoptic)


def test_centroid_head_split_without_an_embedding_is_a_clear_config_error():
    class_logits, mask_logits = _scene()
    config = quiet_config(mining=True, mining_split='centroid_head')
    with pytest.raises(ValueError, match="mining_split 'centroid_head' needs a model with"):
        postprocess(class_logits, mask_logits, identity_record(SIZE), config)
    torch.manual_seed(0)
    plain = load_model_config('tiny')
    with pytest.raises(ValueError, match=r'instance_head\.kind: centroid'):
        Segmenter.from_model(build_model(plain), plain, 'cpu', config)
    # With mining off the split is never used, so nothing is needed.
    Segmenter.from_model(build_model(plain), plain, 'cpu', quiet_config())


def test_embedding_of_the_wrong_size_is_refused():
    class_logits, mask_logits = _scene()
    config = quiet_config(mining=True, mining_split='centroid_head')
    with pytest.raises(ValueError, match='instance_embedding must be'):
        postprocess(
            class_logits,
            mask_logits,
            identity_record(SIZE),
            config,
            instance_embedding=torch.zeros(16, 10, 15),
        )


@pytest.mark.parametrize(
    ('overrides', 'message'),
    [
        ({'centroid_grid': (0, 320)}, 'centroid_grid must be two integers'),
        ({'centroid_grid': (160,)}, 'centroid_grid must be two integers'),
        ({'centroid_radius': -1.0}, 'centroid_radius must be finite and >= 0'),
        ({'mining_split': 'centroids'}, 'mining_split must be one of'),
    ],
)
def test_bad_centroid_settings(overrides, message):
    with pytest.raises(ValueError, match=message):
        PostprocessConfig(**overrides)
