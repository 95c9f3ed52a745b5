"""The authors' processed outlier folder (`images/*.jpg`, `ood_annotations/*.png`) as a pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_training.data.anomaly_mix import (
    AnomalyMix,
    build_outlier_pool,
    folder_image_path,
)
from m2a_training.data.augment import OUTLIER_LABEL, AnnotatedImage


def _write_folder(root: Path) -> dict[str, np.ndarray]:
    """Three images: two with objects (254), one with an empty mask, as the authors ship them."""
    masks = {}
    rng = np.random.default_rng(0)
    for index, (name, box) in enumerate(
        [('000000000009', (2, 3, 10, 12)), ('000000000025', None), ('000000000030', (0, 0, 4, 5))]
    ):
        mask = np.zeros((16, 20), dtype=np.uint8)
        if box is not None:
            top, left, bottom, right = box
            mask[top:bottom, left:right] = 254
        masks[name] = mask
        (root / 'ood_annotations').mkdir(parents=True, exist_ok=True)
        (root / 'images').mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / 'ood_annotations' / f'{name}.png')
        image = rng.integers(0, 256, size=(16, 20, 3), dtype=np.uint8)
        image[...] = (40 * index, 200, 90)  # flat colours survive JPEG closely
        Image.fromarray(image).save(root / 'images' / f'{name}.jpg', quality=100)
    return masks


def test_folder_pool_reads_masks_and_keeps_empty_ones(tmp_path: Path) -> None:
    root = tmp_path / 'COCO_S1'  # "png" or "ood_annotations" above the root are not rewritten
    masks = _write_folder(root)
    pool = build_outlier_pool(root, None, pool_size=None)
    assert len(pool) == 3  # the empty mask stays, as in the official glob
    names = [entry.image_path.name for entry in pool.entries]
    assert names == ['000000000009.jpg', '000000000025.jpg', '000000000030.jpg']
    for index, name in enumerate(sorted(masks)):
        image, mask = pool.load(index)
        assert image.shape == (16, 20, 3)
        np.testing.assert_array_equal(mask, masks[name] == 254)
    assert not pool.load(1)[1].any()

    strict = build_outlier_pool(root, None, pool_size=None, keep_empty_masks=False)
    assert [e.image_path.name for e in strict.entries] == ['000000000009.jpg', '000000000030.jpg']
    assert len(build_outlier_pool(root, None, pool_size=2, seed=1)) == 2


def test_empty_mask_draw_pastes_nothing(tmp_path: Path) -> None:
    root = tmp_path / 'ood'
    _write_folder(root)
    pool = build_outlier_pool(root, None, pool_size=None)
    only_empty = type(pool)((pool.entries[1],))
    scene = AnnotatedImage(
        image=np.zeros((32, 40, 3), np.uint8),
        semantic=np.zeros((32, 40), np.uint8),
        ood_mask=np.zeros((32, 40), bool),
    )
    mixed = AnomalyMix(only_empty, probability=1.0)(scene, np.random.default_rng(0))
    assert not mixed.ood_mask.any()
    object_pool = type(pool)((pool.entries[0],))
    mixed = AnomalyMix(object_pool, probability=1.0)(scene, np.random.default_rng(0))
    assert int(mixed.ood_mask.sum()) == 8 * 9
    assert bool((mixed.semantic[mixed.ood_mask] == OUTLIER_LABEL).all())


def test_image_path_rule_and_errors(tmp_path: Path) -> None:
    root = tmp_path / 'png_ood_annotations'
    assert folder_image_path(root / 'ood_annotations' / 'a_png.png', root) == (
        root / 'images' / 'a_jpg.jpg'  # every "png" below the root, as the official replace
    )
    root.mkdir()
    with pytest.raises(FileNotFoundError, match='no outlier masks'):
        build_outlier_pool(root, None)
    _write_folder(root)
    (root / 'images' / '000000000025.jpg').unlink()
    with pytest.raises(FileNotFoundError, match='has no image'):
        build_outlier_pool(root, None)
