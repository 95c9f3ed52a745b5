"""Label and outlier-mask resizing picks the pixels detectron2 picks (torch nearest)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from m2a_training.data.augment import AnnotatedImage, nearest_indices, resize_sample

SIZE_PAIRS = [
    (1024, 512),
    (1024, 2048),
    (2048, 1945),
    (1024, 1331),
    (380, 614),
    (2048, 921),
    (7, 3),
    (3, 7),
    (64, 64),
    (97, 1000),
]


def _torch_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """What detectron2's ResizeTransform does with a float64 label map."""
    tensor = torch.from_numpy(array.astype(np.float64))[None, None]
    return F.interpolate(tensor, size=size, mode='nearest')[0, 0].numpy()


@pytest.mark.parametrize(('source', 'target'), SIZE_PAIRS)
def test_indices_equal_torch_nearest(source: int, target: int) -> None:
    ramp = np.arange(source, dtype=np.float64)[:, None]
    expected = _torch_nearest(ramp, (target, 1))[:, 0].astype(np.int64)
    np.testing.assert_array_equal(nearest_indices(source, target), expected)


def test_pixel_centre_rule_is_the_other_convention() -> None:
    # 1024 -> 1331 (a short side of the official list): torch picks floor(i * s).
    source, target = 1024, 1331
    centre = np.minimum(np.floor((np.arange(target) + 0.5) * source / target), source - 1)
    np.testing.assert_array_equal(nearest_indices(source, target, 'pixel_centre'), centre)
    assert (nearest_indices(source, target) != centre).mean() > 0.2


def test_resized_labels_and_outlier_mask_equal_torch_nearest() -> None:
    rng = np.random.default_rng(5)
    height, width = 37, 53
    semantic = rng.integers(0, 19, size=(height, width)).astype(np.uint8)
    semantic[5:15, 10:30] = 254
    sample = AnnotatedImage(
        image=rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8),
        semantic=semantic,
        ood_mask=semantic == 254,
        instance=rng.integers(0, 30000, size=(height, width)).astype(np.int32),
    )
    for size in ((61, 88), (20, 31)):
        resized = resize_sample(sample, size)
        np.testing.assert_array_equal(resized.semantic, _torch_nearest(semantic, size))
        np.testing.assert_array_equal(resized.ood_mask, _torch_nearest(semantic, size) == 254)
        assert sample.instance is not None and resized.instance is not None
        np.testing.assert_array_equal(resized.instance, _torch_nearest(sample.instance, size))
