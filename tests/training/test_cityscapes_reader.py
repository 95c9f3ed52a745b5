"""Cityscapes reader: train ids, target modes, collation and clear errors for broken datasets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.classes import class_names, label_id_to_train_id_table, thing_train_ids
from m2a_perception.config import PIXEL_MEAN_RGB, PIXEL_STD_RGB
from m2a_training.data.augment import AugmentConfig, Augmenter
from m2a_training.data.cityscapes import (
    CityscapesDataset,
    DatasetError,
    build_mask_targets,
    collate_training_batch,
    find_cityscapes_records,
)
from m2a_training.data.synthetic import generate_synthetic_world


@pytest.fixture(scope='module')
def cityscapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = generate_synthetic_world(
        tmp_path_factory.mktemp('cs'),
        num_train=4,
        num_val=2,
        num_anomaly_val=0,
        num_outlier_images=0,
        size=(64, 128),
        seed=5,
    )
    return world.cityscapes_root


@pytest.fixture
def broken_root(cityscapes_root: Path, tmp_path: Path) -> Path:
    copy = tmp_path / 'cs'
    shutil.copytree(cityscapes_root, copy)
    return copy


def test_label_table_and_class_names() -> None:
    lut = label_id_to_train_id_table()
    assert lut[7] == 0  # road
    assert lut[8] == 1  # sidewalk
    assert lut[26] == 13  # car
    assert lut[1] == 255  # ego vehicle is void
    assert lut[0] == 255
    assert (lut < 19).sum() == 19
    assert thing_train_ids() == tuple(range(11, 19))
    assert class_names()[0] == 'road'
    assert class_names()[18] == 'bicycle'


def test_reads_the_synthetic_world(cityscapes_root: Path) -> None:
    dataset = CityscapesDataset(cityscapes_root, 'train')
    assert len(dataset) == 4
    sample = dataset[0]
    assert sample.image.shape == (3, 64, 128)
    assert sample.image.dtype == torch.uint8
    assert set(sample.semantic.unique().tolist()) <= {0, 1, 2, 8, 10, 11, 13, 255}
    assert not sample.ood_mask.any()
    # Semantic mode: one mask per present class, masks partition the labelled pixels.
    labels = sample.targets.labels.tolist()
    assert labels == sorted(set(labels))
    union = sample.targets.masks.sum(0)
    assert (union <= 1).all()
    np.testing.assert_array_equal(union.bool().numpy(), (sample.semantic != 255).numpy())


def test_target_modes_on_hand_built_maps() -> None:
    semantic = np.array(
        [
            [0, 0, 255, 13, 13],
            [0, 254, 1, 1, 13],
            [2, 2, 1, 13, 255],
            [2, 0, 0, 13, 13],
        ],
        dtype=np.uint8,
    )
    instance = np.array(
        [
            [7, 7, 0, 26001, 26001],
            [7, 0, 8, 8, 26001],
            [11, 11, 8, 26002, 0],
            [11, 7, 7, 26, 26002],
        ],
        dtype=np.int32,
    )
    semantic_targets = build_mask_targets(semantic, mode='semantic')
    assert semantic_targets.labels.tolist() == [0, 1, 2, 13]
    np.testing.assert_array_equal(semantic_targets.masks[0].numpy(), semantic == 0)
    # Void (255) and pasted outliers (254) are in no mask.
    covered = semantic_targets.masks.any(0).numpy()
    assert not covered[semantic >= 254].any()

    split = build_mask_targets(semantic, mode='mask_split')
    # Road: the top-left blob and the bottom blob are separate; car: (0,3)-(1,4) and the rest
    # touch through (1,4)-(2,3) diagonally, so 8-connectivity keeps them together.
    assert split.labels.tolist() == [0, 0, 1, 2, 13]
    assert sorted(int(m.sum()) for m in split.masks[:2]) == [2, 3]

    panoptic = build_mask_targets(semantic, instance, mode='panoptic')
    # Stuff: one mask per class; car: one per instance id; the crowd pixel (26) gets none.
    assert panoptic.labels.tolist() == [0, 1, 2, 13, 13]
    np.testing.assert_array_equal(panoptic.masks[3].numpy(), instance == 26001)
    np.testing.assert_array_equal(panoptic.masks[4].numpy(), instance == 26002)
    assert not panoptic.masks[:, 3, 3].any()

    with pytest.raises(ValueError, match='instance'):
        build_mask_targets(semantic, None, mode='panoptic')
    with pytest.raises(ValueError, match='mode'):
        build_mask_targets(semantic, mode='instance')  # type: ignore[arg-type]
    empty = build_mask_targets(np.full((3, 3), 255, np.uint8))
    assert empty.masks.shape == (0, 3, 3)


def test_panoptic_dataset_uses_instance_ids(cityscapes_root: Path) -> None:
    dataset = CityscapesDataset(cityscapes_root, 'train', mode='panoptic')
    total = 0
    for index, record in enumerate(dataset.records):
        instance = np.asarray(Image.open(record.instance_path))
        thing_ids = set(np.unique(instance[instance >= 1000]).tolist())
        targets = dataset[index].targets
        assert int((targets.labels >= 11).sum()) == len(thing_ids)
        total += len(thing_ids)
    assert total > 0


def test_transform_randomness_is_keyed_and_reproducible(cityscapes_root: Path) -> None:
    augment = Augmenter(AugmentConfig(crop_size=(32, 64), short_side_base=64))
    dataset = CityscapesDataset(cityscapes_root, 'train', transform=augment, seed=11)
    first, again = dataset[(1, 0)], dataset[(1, 0)]
    assert torch.equal(first.image, again.image)
    assert torch.equal(first.semantic, again.semantic)
    assert not all(torch.equal(first.image, dataset[(1, draw)].image) for draw in (1, 2, 3))
    assert torch.equal(dataset[2].image, dataset[2].image)


def test_collate_pads_images_targets_and_semantics(cityscapes_root: Path) -> None:
    augment = Augmenter(AugmentConfig(crop_size=(40, 70), short_side_base=64))
    dataset = CityscapesDataset(cityscapes_root, 'train', transform=augment)
    samples = [dataset[(0, 0)], dataset[(1, 0)]]
    batch = collate_training_batch(samples, pixel_mean=PIXEL_MEAN_RGB, pixel_std=PIXEL_STD_RGB)
    assert batch.images.shape == (2, 3, 64, 96)
    assert batch.semantic.shape == (2, 64, 96)
    assert batch.ood_masks.shape == (2, 40, 70)
    assert batch.image_sizes == [(40, 70), (40, 70)]
    assert (batch.images[:, :, 40:] == 0).all()
    assert (batch.semantic[:, :, 70:] == 255).all()
    mean = torch.tensor(PIXEL_MEAN_RGB).view(3, 1, 1)
    std = torch.tensor(PIXEL_STD_RGB).view(3, 1, 1)
    torch.testing.assert_close(
        batch.images[0, :, :40, :70], (samples[0].image.float() - mean) / std
    )
    for target, sample in zip(batch.targets, samples, strict=True):
        assert target.masks.shape[1:] == (64, 96)
        assert not target.masks[:, 40:].any()
        assert torch.equal(target.masks[:, :40, :70], sample.targets.masks)


# ---------------------------------------------------------------- clear errors


def test_missing_root_and_folders_are_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match='does not exist'):
        CityscapesDataset(tmp_path / 'nowhere')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DatasetError) as error:
        CityscapesDataset(tmp_path / 'empty', 'train')
    message = str(error.value)
    assert 'leftImg8bit/train' in message
    assert 'gtFine/train' in message
    assert len(error.value.problems) == 2


def test_every_missing_annotation_is_listed(broken_root: Path) -> None:
    labels = sorted((broken_root / 'gtFine' / 'train').glob('*/*_labelIds.png'))
    for path in labels[:2]:
        path.unlink()
    with pytest.raises(DatasetError) as error:
        CityscapesDataset(broken_root, 'train')
    message = str(error.value)
    assert all(path.name in message for path in labels[:2])
    assert '2 problems' in message


def test_panoptic_mode_requires_instance_files(broken_root: Path) -> None:
    next((broken_root / 'gtFine' / 'val').glob('*/*_instanceIds.png')).unlink()
    CityscapesDataset(broken_root, 'val')  # semantic mode does not need them
    with pytest.raises(DatasetError, match='missing instance'):
        CityscapesDataset(broken_root, 'val', mode='panoptic')


def test_malformed_files_are_reported(broken_root: Path) -> None:
    labels = sorted((broken_root / 'gtFine' / 'train').glob('*/*_labelIds.png'))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(labels[0])
    labels[1].write_bytes(b'not a png')
    Image.fromarray(np.zeros((64, 128, 3), np.uint8)).save(labels[2])
    with pytest.raises(DatasetError) as error:
        find_cityscapes_records(broken_root, 'train')
    message = str(error.value)
    assert 'sizes differ' in message
    assert 'unreadable' in message
    assert 'not grey' in message


def test_no_images_is_reported(tmp_path: Path) -> None:
    for folder in ('leftImg8bit/train/x', 'gtFine/train/x'):
        (tmp_path / folder).mkdir(parents=True)
    with pytest.raises(DatasetError, match=r'no \*/\*_leftImg8bit\.png images'):
        find_cityscapes_records(tmp_path, 'train')
