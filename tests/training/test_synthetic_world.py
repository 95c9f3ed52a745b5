"""Synthetic road world: determinism, Cityscapes/COCO/anomaly formats, and non-triviality."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from m2a_training.cli.synthetic_world import main
from m2a_training.data import synthetic
from m2a_training.data.synthetic import (
    FULL_FRAME_LABELS,
    HELD_OUT_KINDS,
    OUTLIER_KINDS,
    PROBE_KINDS,
    SyntheticWorld,
    generate_synthetic_world,
    load_synthetic_world,
)

SIZE = (64, 128)
# Cityscapes label ids the world may use: ego vehicle, road, sidewalk, building, vegetation,
# sky, person, car.
WORLD_LABEL_IDS = {1, 7, 8, 11, 21, 23, 24, 26}


def _generate(root: Path, **overrides: int) -> SyntheticWorld:
    counts = {'num_train': 6, 'num_val': 2, 'num_anomaly_val': 3, 'num_outlier_images': 10}
    counts.update(overrides)
    return generate_synthetic_world(root, size=SIZE, seed=3, **counts)


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> SyntheticWorld:
    return _generate(tmp_path_factory.mktemp('world'))


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()
    }


def test_same_seed_gives_identical_files(world: SyntheticWorld, tmp_path: Path) -> None:
    again = _generate(tmp_path / 'again')
    assert _files(world.root) == _files(again.root)


def test_other_seed_differs_and_splits_are_independent(
    world: SyntheticWorld, tmp_path: Path
) -> None:
    other = generate_synthetic_world(
        tmp_path / 'other',
        num_train=1,
        num_val=0,
        num_anomaly_val=0,
        num_outlier_images=0,
        size=SIZE,
        seed=4,
    )
    # Fewer val/anomaly/outlier images must not change the train images of the same seed.
    fewer = _generate(tmp_path / 'fewer', num_val=0, num_anomaly_val=0, num_outlier_images=1)
    name = 'leftImg8bit/train/synthtown/synthtown_000000_000000_leftImg8bit.png'
    original = (world.cityscapes_root / name).read_bytes()
    assert (fewer.cityscapes_root / name).read_bytes() == original
    assert (other.cityscapes_root / name).read_bytes() != original


def test_cityscapes_layout_and_label_format(world: SyntheticWorld) -> None:
    images = sorted((world.cityscapes_root / 'leftImg8bit' / 'train').glob('*/*_leftImg8bit.png'))
    assert len(images) == 6
    assert len(list((world.cityscapes_root / 'leftImg8bit' / 'val').glob('*/*.png'))) == 2
    seen_ids: set[int] = set()
    instance_count = 0
    for image_path in images:
        stem = image_path.name[: -len('_leftImg8bit.png')]
        gt_dir = world.cityscapes_root / 'gtFine' / 'train' / image_path.parent.name
        with Image.open(image_path) as image:
            assert image.mode == 'RGB'
            assert image.size == (SIZE[1], SIZE[0])
        label = np.asarray(Image.open(gt_dir / f'{stem}_gtFine_labelIds.png'))
        instance = np.asarray(Image.open(gt_dir / f'{stem}_gtFine_instanceIds.png'))
        assert label.dtype == np.uint8
        assert instance.dtype == np.uint16
        assert set(np.unique(label).tolist()) <= WORLD_LABEL_IDS
        seen_ids |= set(np.unique(label).tolist())
        things = instance >= 1000
        # Cityscapes convention: instance id = label id · 1000 + k, stuff carries its label id.
        np.testing.assert_array_equal(instance[things] // 1000, label[things])
        np.testing.assert_array_equal(instance[~things], label[~things])
        assert set(np.unique(label[things]).tolist()) <= {24, 26}
        instance_count += len(np.unique(instance[things]))
    assert {7, 8, 11, 23} <= seen_ids
    assert instance_count > 0


def test_coco_outlier_set_loads_with_pycocotools(world: SyntheticWorld) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(world.coco_annotation_file))
    names = {c['name'] for c in coco.loadCats(coco.getCatIds())}
    assert names == set(OUTLIER_KINDS) | set(PROBE_KINDS)
    assert len(coco.getImgIds()) == 10
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        with Image.open(world.coco_image_dir / info['file_name']) as image:
            assert image.size == (info['width'], info['height'])
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert annotations
        for annotation in annotations:
            mask = coco.annToMask(annotation)
            assert mask.shape == (info['height'], info['width'])
            assert mask.sum() > 0
            assert annotation['area'] == pytest.approx(mask.sum(), rel=0.01)


def test_anomaly_validation_set_layout(world: SyntheticWorld) -> None:
    images = sorted((world.anomaly_root / 'images').glob('*.png'))
    assert len(images) == 3
    for image_path in images:
        label_path = Path(str(image_path).replace('images', 'labels_masks'))
        label = np.asarray(Image.open(label_path))
        assert label.shape == SIZE
        assert set(np.unique(label).tolist()) <= {0, 1, 255}
        assert (label == 1).sum() >= 12
        full_frame = np.asarray(
            Image.open(world.anomaly_root / FULL_FRAME_LABELS / label_path.name)
        )
        # Same obstacle; the road-only labels are the full-frame ones with off-road pixels void.
        np.testing.assert_array_equal(full_frame == 1, label == 1)
        assert ((label == 0) <= (full_frame == 0)).all()
        assert (label == 255).sum() > (full_frame == 255).sum()
    objects = json.loads((world.anomaly_root / 'objects.json').read_text())
    assert set(objects['kinds']) == set(HELD_OUT_KINDS) | set(OUTLIER_KINDS)
    assert not set(objects['kinds']) & set(PROBE_KINDS)


def test_scenes_are_not_colour_trivial(world: SyntheticWorld) -> None:
    # A nearest-mean-colour pixel classifier must not solve the scenes: classes overlap in colour.
    pixels, labels = [], []
    for image_path in sorted((world.cityscapes_root / 'leftImg8bit').glob('*/*/*.png')):
        stem = image_path.name[: -len('_leftImg8bit.png')]
        gt = image_path.parents[3] / 'gtFine' / image_path.parts[-3] / image_path.parent.name
        pixels.append(np.asarray(Image.open(image_path)).reshape(-1, 3).astype(np.float32))
        labels.append(np.asarray(Image.open(gt / f'{stem}_gtFine_labelIds.png')).reshape(-1))
    colours, classes = np.concatenate(pixels), np.concatenate(labels)
    ids = sorted(set(classes.tolist()) - {1})
    means = np.stack([colours[classes == i].mean(0) for i in ids])
    predicted = np.asarray(ids)[np.argmin(((colours[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    valid = classes != 1
    accuracy = (predicted[valid] == classes[valid]).mean()
    assert accuracy < 0.75


@pytest.mark.parametrize(
    ('size', 'warning'),
    [
        (['--size', '64x96'], ''),
        (
            ['--height', '64', '--width', '96'],
            'm2a-synthetic-world: warning: --height/--width are deprecated; use --size HxW\n',
        ),
    ],
)
def test_cli_writes_a_world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: list[str], warning: str
) -> None:
    args = [
        str(tmp_path / 'cli'),
        '--num-train',
        '1',
        '--num-val',
        '1',
        '--num-anomaly-val',
        '1',
        '--num-outlier-images',
        '1',
        *size,
        '--seed',
        '1',
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert 'coco json' in captured.out
    assert captured.err == warning
    manifest = json.loads((tmp_path / 'cli' / 'manifest.json').read_text())
    assert manifest['size'] == [64, 96]


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='anomaly_kinds'):
        generate_synthetic_world(tmp_path, num_train=0, anomaly_kinds=('car',))
    with pytest.raises(ValueError, match='size'):
        generate_synthetic_world(tmp_path, size=(16, 16))


def test_load_describes_a_generated_world(world: SyntheticWorld, tmp_path: Path) -> None:
    assert load_synthetic_world(world.root) == world
    with pytest.raises(FileNotFoundError, match='no synthetic world'):
        load_synthetic_world(tmp_path)


def test_anomaly_targets_judge_the_road_only() -> None:
    """Known answer on a 2x4 scene: road, sidewalk, car, obstacle, hood."""
    ids = synthetic._label_ids()
    obstacle = synthetic._ANOMALY_LABEL
    label = np.array(
        [
            [ids.road, ids.road, ids.sidewalk, ids.car],
            [obstacle, ids.road, ids.ego_vehicle, ids.sky],
        ],
        dtype=np.uint8,
    )
    full_frame, road_only = synthetic.anomaly_targets(label, ids)
    assert full_frame.tolist() == [[0, 0, 0, 0], [1, 0, 255, 0]]
    assert road_only.tolist() == [[0, 0, 255, 255], [1, 0, 255, 255]]


def test_a_world_of_an_older_format_is_not_current(world: SyntheticWorld) -> None:
    assert synthetic.synthetic_world_is_current(world.root)
    manifest = json.loads((world.root / 'manifest.json').read_text())
    manifest.pop('format')
    (world.root / 'manifest.json').write_text(json.dumps(manifest))
    try:
        assert not synthetic.synthetic_world_is_current(world.root)
    finally:
        manifest['format'] = synthetic.WORLD_FORMAT
        (world.root / 'manifest.json').write_text(json.dumps(manifest))
