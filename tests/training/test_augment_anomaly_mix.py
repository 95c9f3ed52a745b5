"""Augmentation and AnomalyMix: the outlier mask M_OOD stays aligned with the image."""

from __future__ import annotations

import json
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from m2a_training.data.anomaly_mix import (
    CITYSCAPES_OVERLAP_CATEGORIES,
    AnomalyMix,
    OutlierEntry,
    OutlierPool,
    build_outlier_pool,
    decode_union_mask,
    mask_bounding_box,
    paste_outlier,
)
from m2a_training.data.augment import (
    OUTLIER_LABEL,
    AnnotatedImage,
    AugmentConfig,
    Augmenter,
    augment_sample,
    compose_transforms,
    flip_sample,
    jitter_colors,
    resize_shortest_edge_size,
)
from m2a_training.data.cityscapes import CityscapesDataset
from m2a_training.data.synthetic import PROBE_KINDS, SyntheticWorld, generate_synthetic_world

SCENE_COLOUR = (90, 90, 90)
OBJECT_COLOUR = (250, 20, 230)


def _scene(height: int = 120, width: int = 240) -> AnnotatedImage:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = SCENE_COLOUR
    return AnnotatedImage(
        image=image,
        semantic=np.zeros((height, width), np.uint8),
        ood_mask=np.zeros((height, width), bool),
        instance=np.full((height, width), 7, np.int32),
        name='scene',
    )


def _outlier() -> tuple[np.ndarray, np.ndarray]:
    """A 50×60 outlier image: two objects (an L shape and a blob) on a green background."""
    image = np.zeros((50, 60, 3), np.uint8)
    image[:] = (0, 200, 0)
    mask = np.zeros((50, 60), bool)
    mask[10:30, 8:14] = True
    mask[24:30, 8:30] = True
    mask[35:44, 40:52] = True
    image[mask] = OBJECT_COLOUR
    return image, mask


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> SyntheticWorld:
    return generate_synthetic_world(
        tmp_path_factory.mktemp('mixworld'),
        num_train=3,
        num_val=0,
        num_anomaly_val=0,
        num_outlier_images=24,
        size=(64, 128),
        seed=2,
    )


# ---------------------------------------------------------------- AnomalyMix paste


def test_paste_copies_the_union_box_without_rescaling() -> None:
    outlier_image, outlier_mask = _outlier()
    mixed = paste_outlier(_scene(), outlier_image, outlier_mask, np.random.default_rng(0))
    assert mixed.ood_mask.sum() == outlier_mask.sum()
    # The pasted mask is the union box of all objects, shifted, unscaled.
    top, left, bottom, right = mask_bounding_box(mixed.ood_mask)
    o_top, o_left, o_bottom, o_right = mask_bounding_box(outlier_mask)
    assert (bottom - top, right - left) == (o_bottom - o_top, o_right - o_left)
    np.testing.assert_array_equal(
        mixed.ood_mask[top:bottom, left:right], outlier_mask[o_top:o_bottom, o_left:o_right]
    )
    # Only object pixels are copied; labels follow the official convention.
    assert (mixed.image[mixed.ood_mask] == OBJECT_COLOUR).all()
    assert (mixed.image[~mixed.ood_mask] == SCENE_COLOUR).all()
    np.testing.assert_array_equal(mixed.semantic == OUTLIER_LABEL, mixed.ood_mask)
    assert (mixed.instance[mixed.ood_mask] == 0).all()
    assert (mixed.instance[~mixed.ood_mask] == 7).all()


def test_paste_position_is_uniform_over_valid_offsets() -> None:
    outlier_image, outlier_mask = _outlier()
    corners = set()
    for seed in range(200):
        mixed = paste_outlier(
            _scene(60, 60), outlier_image, outlier_mask, np.random.default_rng(seed)
        )
        top, left, _, _ = mask_bounding_box(mixed.ood_mask)
        corners.add((top, left))
    box_h, box_w = 44 - 10, 52 - 8
    tops, lefts = zip(*corners, strict=True)
    assert min(tops) >= 0
    assert max(tops) <= 60 - box_h
    assert max(lefts) <= 60 - box_w
    assert len(corners) > 50


def test_paste_handles_boxes_larger_than_the_scene() -> None:
    outlier_image, outlier_mask = _outlier()
    mixed = paste_outlier(_scene(20, 20), outlier_image, outlier_mask, np.random.default_rng(0))
    assert mixed.size == (20, 20)
    assert (mixed.image[mixed.ood_mask] == OBJECT_COLOUR).all()


def test_anomaly_mix_probability_is_per_image() -> None:
    tiny = np.zeros((4, 4), bool)
    tiny[1:3, 1:3] = True
    pool = _single_image_pool(tiny)
    mix = AnomalyMix(pool, probability=0.2)
    rng = np.random.default_rng(0)
    pasted = sum(bool(mix(_scene(8, 8), rng).ood_mask.any()) for _ in range(2000))
    assert 0.17 < pasted / 2000 < 0.23
    with pytest.raises(ValueError, match='probability'):
        AnomalyMix(pool, probability=1.5)


def _single_image_pool(mask: np.ndarray) -> OutlierPool:
    class _Pool(OutlierPool):
        def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
            image = np.zeros((*mask.shape, 3), np.uint8)
            image[mask] = OBJECT_COLOUR
            return image, mask

    entry = OutlierEntry(1, Path('unused.png'), *mask.shape, ())
    return _Pool((entry,))


# ---------------------------------------------------------------- alignment through augmentation


def _check_alignment(sample: AnnotatedImage) -> None:
    """Object pixels are exactly where M_OOD is: constant colour inside, another outside."""
    np.testing.assert_array_equal(sample.semantic == OUTLIER_LABEL, sample.ood_mask)
    valid = sample.semantic != 255
    # Resampling blurs colours across the boundary by at most a couple of pixels.
    inside = ndimage.binary_erosion(sample.ood_mask, iterations=2)
    outside = ndimage.binary_erosion(valid & ~sample.ood_mask, iterations=2)
    assert inside.any()
    assert outside.any()
    inside_colours = np.unique(sample.image[inside], axis=0)
    outside_colours = np.unique(sample.image[outside], axis=0)
    assert len(inside_colours) == 1
    assert len(outside_colours) == 1
    assert not np.array_equal(inside_colours, outside_colours)
    assert _colour_mismatch(sample.image, sample.ood_mask, valid) < 0.02


def _colour_mismatch(image: np.ndarray, ood_mask: np.ndarray, valid: np.ndarray) -> float:
    """Clearly-object pixels outside M_OOD plus clearly-scene pixels inside it, per mask pixel.

    Each pixel's colour is projected on the line from the scene colour (t = 0) to the object
    colour (t = 1); boundary pixels mixed by resampling fall in between and are not judged.
    Sharp enough to catch a two-pixel shift, which erosion-based checks would hide.
    """
    inside = ndimage.binary_erosion(ood_mask, iterations=2)
    outside = ndimage.binary_erosion(valid & ~ood_mask, iterations=2)
    colour_in = image[inside][0].astype(float)
    colour_out = image[outside][0].astype(float)
    direction = colour_in - colour_out
    t = ((image.astype(float) - colour_out) @ direction) / (direction @ direction)
    wrong = ((t > 0.9) & ~ood_mask) | ((t < 0.1) & ood_mask)
    return float(wrong[valid].sum() / max(ood_mask.sum(), 1))


@pytest.mark.parametrize('mode', ['official', 'lsj'])
def test_ood_mask_stays_aligned_through_augmentation(mode: str) -> None:
    outlier_image, outlier_mask = _outlier()
    config = AugmentConfig(
        mode=mode,
        crop_size=(96, 192),
        short_side_base=120,
        min_scale=0.8,
        max_scale=2.0,  # type: ignore[arg-type]
        # The register-keeping rule; detectron2's floor(i * s) (the default) shifts labels by up
        # to half a source pixel (tests/training/test_label_resize.py).
        label_resize='pixel_centre',
    )
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(seed)
        mixed = paste_outlier(_scene(), outlier_image, outlier_mask, rng)
        augmented = augment_sample(mixed, config, rng)
        if mode == 'lsj':
            assert augmented.size == (96, 192)
        if ndimage.binary_erosion(augmented.ood_mask, iterations=2).any():
            _check_alignment(augmented)
            # The check is sharp: the same mask shifted by two pixels fails it (one pixel can
            # be less than a source pixel after upsampling).
            valid = augmented.semantic != 255
            for axis in (0, 1):
                shifted = np.roll(augmented.ood_mask, 2, axis=axis)
                assert _colour_mismatch(augmented.image, shifted, valid) > 0.02
            checked += 1
    assert checked >= 4


def test_flip_moves_mask_and_image_together() -> None:
    outlier_image, outlier_mask = _outlier()
    mixed = paste_outlier(_scene(), outlier_image, outlier_mask, np.random.default_rng(3))
    flipped = flip_sample(mixed)
    np.testing.assert_array_equal(flipped.ood_mask, mixed.ood_mask[:, ::-1])
    assert (flipped.image[flipped.ood_mask] == OBJECT_COLOUR).all()


def test_official_resize_uses_the_scaled_short_side_list() -> None:
    config = AugmentConfig(short_side_base=1024)
    assert config.short_side_choices() == (
        512,
        614,
        716,
        819,
        921,
        1024,
        1126,
        1228,
        1331,
        1433,
        1536,
        1638,
        1740,
        1843,
        1945,
        2048,
    )
    assert resize_shortest_edge_size(1024, 2048, 512, 4096) == (512, 1024)
    assert resize_shortest_edge_size(1024, 2048, 2048, 4096) == (2048, 4096)
    assert resize_shortest_edge_size(100, 1000, 50, 300) == (30, 300)
    assert AugmentConfig(short_side_base=128).short_side_choices()[0] == 64


def test_lsj_pads_with_void_and_keeps_crop_size() -> None:
    config = AugmentConfig(
        mode='lsj',
        crop_size=(60, 120),
        min_scale=0.5,
        max_scale=0.5,
        color_jitter=False,
        flip_probability=0.0,
    )
    augmented = augment_sample(_scene(120, 240), config, np.random.default_rng(0))
    assert augmented.size == (60, 120)
    # Scale 0.5 of the crop-fitting size: the scene covers the top-left 30×60.
    assert (augmented.semantic[:30, :60] == 0).all()
    assert (augmented.semantic[30:] == 255).all()
    assert (augmented.semantic[:, 60:] == 255).all()
    assert (augmented.image[30:] == 128).all()
    assert not augmented.ood_mask.any()
    assert (augmented.instance[30:] == 0).all()


def test_color_jitter_is_seeded_and_keeps_flat_regions_flat() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (200, 30, 40)
    image[:, 4:] = (20, 120, 220)
    outputs = [jitter_colors(image, np.random.default_rng(seed)) for seed in range(20)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outputs)
    assert all(len(np.unique(o[:, :4].reshape(-1, 3), axis=0)) == 1 for o in outputs)
    assert len({o.tobytes() for o in outputs}) > 10
    np.testing.assert_array_equal(
        jitter_colors(image, np.random.default_rng(5)),
        jitter_colors(image, np.random.default_rng(5)),
    )


def test_augment_config_validation() -> None:
    with pytest.raises(ValueError, match='mode'):
        AugmentConfig(mode='random')  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='min_scale'):
        AugmentConfig(min_scale=2.0, max_scale=1.0)


# ---------------------------------------------------------------- COCO outlier pool


def test_pool_excludes_cityscapes_classes_and_is_seeded(world: SyntheticWorld) -> None:
    data = json.loads(world.coco_annotation_file.read_text())
    probe_ids = {c['id'] for c in data['categories'] if c['name'] in PROBE_KINDS}
    probe_images = {a['image_id'] for a in data['annotations'] if a['category_id'] in probe_ids}
    assert probe_images, 'the synthetic COCO set must contain probe images to exclude'
    assert set(PROBE_KINDS) <= set(CITYSCAPES_OVERLAP_CATEGORIES)

    pool = build_outlier_pool(
        world.coco_annotation_file, world.coco_image_dir, pool_size=None, min_side=64
    )
    ids = {entry.image_id for entry in pool.entries}
    assert not ids & probe_images
    assert len(ids) == 24 - len(probe_images)

    small = build_outlier_pool(
        world.coco_annotation_file, world.coco_image_dir, pool_size=5, min_side=64, seed=1
    )
    again = build_outlier_pool(
        world.coco_annotation_file, world.coco_image_dir, pool_size=5, min_side=64, seed=1
    )
    assert len(small) == 5
    assert small == again
    image, mask = small.load(0)
    assert image.shape[:2] == mask.shape
    assert mask.any()


def test_pool_errors_are_clear(world: SyntheticWorld, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='too small'):
        build_outlier_pool(world.coco_annotation_file, world.coco_image_dir)  # min_side 480
    with pytest.raises(FileNotFoundError, match='annotation'):
        build_outlier_pool(tmp_path / 'missing.json', world.coco_image_dir)


def test_decode_union_mask_polygon_and_rle() -> None:
    square = [[2.0, 2.0, 6.0, 2.0, 6.0, 6.0, 2.0, 6.0]]
    uncompressed = {'counts': [8 * 9, 4, 4], 'size': [8, 10]}  # column-major runs
    union = decode_union_mask([square, uncompressed], 8, 10)
    assert union.shape == (8, 10)
    assert union[3:6, 3:6].all()
    assert union[:4, 9].all()
    assert not union[0, 0]


def test_dataset_with_anomaly_mix_and_augmentation(world: SyntheticWorld) -> None:
    pool = build_outlier_pool(
        world.coco_annotation_file, world.coco_image_dir, pool_size=None, min_side=64
    )
    transform = compose_transforms(
        AnomalyMix(pool, probability=1.0),
        Augmenter(AugmentConfig(crop_size=(48, 96), short_side_base=64)),
    )
    dataset = CityscapesDataset(world.cityscapes_root, 'train', transform=transform)
    # Data-loader workers started with spawn/forkserver receive the dataset pickled.
    dataset = pickle.loads(pickle.dumps(dataset))
    with_outliers = 0
    for draw in range(4):
        sample = dataset[(0, draw)]
        assert sample.ood_mask.shape == sample.semantic.shape
        assert (sample.ood_mask == (sample.semantic == OUTLIER_LABEL)).all()
        # Pasted pixels are in no class target (they are "no object" for the mask losses).
        assert not (sample.targets.masks & sample.ood_mask).any()
        with_outliers += int(sample.ood_mask.any())
    assert with_outliers >= 1


def test_annotated_image_validates_shapes() -> None:
    scene = _scene(10, 10)
    with pytest.raises(ValueError, match='semantic'):
        replace(scene, semantic=np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match='bool'):
        replace(scene, ood_mask=np.zeros((10, 10), np.uint8))


def test_pool_image_size_mismatch_is_reported(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / 'a.png')
    pool = OutlierPool((OutlierEntry(1, tmp_path / 'a.png', 6, 6, ()),))
    with pytest.raises(ValueError, match='annotation says'):
        pool.load(0)
