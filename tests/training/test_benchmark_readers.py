"""Benchmark readers on tiny synthetic folders: layouts, label remaps and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_perception.metrics import ANOMALY_TRACK, OBSTACLE_TRACK, UNKNOWN_CATEGORY_ID
from m2a_perception.metrics.panoptic import panoptic_id_to_rgb
from m2a_training.data.benchmarks import (
    BenchmarkDatasetError,
    BenchmarkOptions,
    coco_panoptic,
    coco_unknown_class_names,
    fishyscapes_lost_and_found,
    fishyscapes_static,
    lost_and_found,
    open_anomaly_benchmark,
    road_anomaly,
    smiyc_road_anomaly21,
    smiyc_road_obstacle21,
    street_hazards,
)

SHAPE = (6, 8)


def _image(path: Path, shape: tuple[int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, **({'lossless': True} if path.suffix == '.webp' else {}))
    return rgb


def _label(path: Path, values: list[int], shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """Grey label PNG whose pixels cycle through `values`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.resize(np.asarray(values, dtype=np.uint8), shape)
    Image.fromarray(label).save(path)
    return label


# ------------------------------------------------------------------------------------------
# Road Anomaly


def test_road_anomaly_official_layout(tmp_path: Path) -> None:
    (tmp_path / 'frames').mkdir()
    (tmp_path / 'frame_list.json').write_text(json.dumps(['b_cow.webp', 'a_sheep.jpg']))
    rgb = _image(tmp_path / 'frames' / 'b_cow.webp')
    _image(tmp_path / 'frames' / 'a_sheep.jpg')
    _label(tmp_path / 'frames' / 'b_cow.labels' / 'labels_semantic.png', [0, 2])
    _label(tmp_path / 'frames' / 'a_sheep.labels' / 'labels_semantic.png', [2, 0, 0])
    dataset = road_anomaly(tmp_path)
    assert dataset.frame_names == ('a_sheep', 'b_cow')
    assert dataset.component_track == ANOMALY_TRACK
    image, label, name = dataset[1]
    assert name == 'b_cow' and image.dtype == np.uint8 and image.shape == (*SHAPE, 3)
    np.testing.assert_array_equal(image, rgb)  # lossless webp, RGB order
    np.testing.assert_array_equal(label, np.resize(np.array([0, 1], np.uint8), SHAPE))
    assert [sample.name for sample in dataset] == ['a_sheep', 'b_cow']


def test_road_anomaly_bundle_layout_and_bad_values(tmp_path: Path) -> None:
    _image(tmp_path / 'images' / 'x.jpg')
    _label(tmp_path / 'labels_masks' / 'x.png', [0, 2, 7])
    dataset = road_anomaly(tmp_path)
    with pytest.raises(BenchmarkDatasetError, match=r'unexpected label values \[7\]'):
        dataset[0]
    lenient = road_anomaly(tmp_path, strict_labels=False)
    assert set(np.unique(lenient[0].label).tolist()) == {0, 1, 255}


def test_road_anomaly_missing_files_are_all_listed(tmp_path: Path) -> None:
    (tmp_path / 'frames').mkdir()
    (tmp_path / 'frame_list.json').write_text(json.dumps(['a.jpg', 'b.jpg']))
    _image(tmp_path / 'frames' / 'a.jpg')
    with pytest.raises(BenchmarkDatasetError) as error:
        road_anomaly(tmp_path)
    message = str(error.value)
    assert '3 problems' in message
    assert 'a.labels/labels_semantic.png' in message and 'b.jpg' in message


def test_road_anomaly_invalid_frame_list(tmp_path: Path) -> None:
    (tmp_path / 'frames').mkdir()
    (tmp_path / 'frame_list.json').write_text('{not json')
    with pytest.raises(BenchmarkDatasetError, match=r'frame_list\.json: missing or invalid JSON'):
        road_anomaly(tmp_path)


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkDatasetError, match='does not exist'):
        road_anomaly(tmp_path / 'nowhere')
    with pytest.raises(BenchmarkDatasetError, match='missing folder'):
        lost_and_found(tmp_path)


# ------------------------------------------------------------------------------------------
# Fishyscapes


def test_fishyscapes_lost_and_found_layout(tmp_path: Path) -> None:
    frame = '04_Maurener_Weg_8_000000_000030'
    _label(tmp_path / 'fishyscapes_lostandfound' / f'0000_{frame}_labels.png', [0, 1, 255])
    _image(tmp_path / 'laf_images' / f'{frame}_leftImg8bit.png')
    dataset = fishyscapes_lost_and_found(tmp_path)
    sample = dataset[0]
    assert sample.name == frame
    assert set(np.unique(sample.label).tolist()) == {0, 1, 255}
    (tmp_path / 'laf_images' / f'{frame}_leftImg8bit.png').unlink()
    with pytest.raises(BenchmarkDatasetError, match='missing image'):
        fishyscapes_lost_and_found(tmp_path)


def test_fishyscapes_static_versions(tmp_path: Path) -> None:
    for version in (1, 2):
        _label(tmp_path / f'fs_val_v{version}' / '0_labels.png', [0, 1])
        _image(tmp_path / f'fs_static_images_v{version}' / '0_rgb.png')
    with pytest.raises(BenchmarkDatasetError, match='pass version=N'):
        fishyscapes_static(tmp_path)
    dataset = fishyscapes_static(tmp_path, version=2)
    assert dataset.name == 'fishyscapes_static_v2' and dataset.frame_names == ('0',)
    assert dataset[0].label.max() == 1


def test_grey_rgb_and_palette_labels_are_read(tmp_path: Path) -> None:
    values = np.resize(np.array([0, 1, 255], np.uint8), SHAPE)
    for stem, image in (
        ('rgb', Image.fromarray(np.repeat(values[..., None], 3, axis=2))),
        ('palette', Image.fromarray(values).convert('P')),
        ('colour', Image.fromarray(np.stack([values, values, 0 * values], axis=2))),
    ):
        _image(tmp_path / 'images' / f'{stem}.jpg')
        (tmp_path / 'labels_masks').mkdir(exist_ok=True)
        image.save(tmp_path / 'labels_masks' / f'{stem}.png')
    dataset = fishyscapes_static(tmp_path)
    assert dataset.frame_names == ('colour', 'palette', 'rgb')
    for index in (1, 2):
        np.testing.assert_array_equal(dataset[index].label, values)
    with pytest.raises(BenchmarkDatasetError, match='colour label image'):
        dataset[0]


def test_label_image_size_mismatch(tmp_path: Path) -> None:
    _image(tmp_path / 'images' / 'a.jpg', shape=(6, 8))
    _label(tmp_path / 'labels_masks' / 'a.png', [0, 1], shape=(6, 9))
    with pytest.raises(BenchmarkDatasetError, match='does not match image'):
        fishyscapes_static(tmp_path)[0]


# ------------------------------------------------------------------------------------------
# SegmentMeIfYouCan


def test_smiyc_tracks_skip_hidden_labels(tmp_path: Path) -> None:
    anomaly, obstacle = tmp_path / 'dataset_AnomalyTrack', tmp_path / 'dataset_ObstacleTrack'
    _image(anomaly / 'images' / 'validation0.jpg')
    _image(anomaly / 'images' / 'test1.jpg')  # hidden label: skipped
    _label(anomaly / 'labels_masks' / 'validation0_labels_semantic.png', [0, 1, 255])
    dataset = smiyc_road_anomaly21(anomaly)
    assert dataset.frame_names == ('validation0',) and dataset.component_track == ANOMALY_TRACK
    _image(obstacle / 'images' / 'validation_1.webp')
    _label(obstacle / 'labels_masks' / 'validation_1_labels_semantic.png', [255, 0, 1])
    dataset = smiyc_road_obstacle21(obstacle)
    assert dataset.component_track == OBSTACLE_TRACK
    assert dataset[0].label[0, :3].tolist() == [255, 0, 1]


def test_smiyc_without_any_label_is_an_error(tmp_path: Path) -> None:
    _image(tmp_path / 'images' / 'test1.jpg')
    (tmp_path / 'labels_masks').mkdir()
    with pytest.raises(BenchmarkDatasetError, match='no image with a label'):
        smiyc_road_anomaly21(tmp_path)


# ------------------------------------------------------------------------------------------
# Lost & Found


def _laf(root: Path, frames: dict[str, list[int]]) -> None:
    for frame, values in frames.items():
        sequence = '_'.join(frame.split('_')[:-2])
        _image(root / 'leftImg8bit' / 'test' / sequence / f'{frame}_leftImg8bit.png')
        _label(root / 'gtCoarse' / 'test' / sequence / f'{frame}_gtCoarse_labelIds.png', values)


def test_lost_and_found_remap_and_frame_filter(tmp_path: Path) -> None:
    _laf(
        tmp_path,
        {
            '02_Hanns_Klemm_Str_44_000000_000010': [0, 1, 2, 200],
            '02_Hanns_Klemm_Str_44_000001_000020': [1],
        },
    )
    dataset = lost_and_found(tmp_path)
    assert len(dataset) == 2 and dataset.component_track == OBSTACLE_TRACK
    assert dataset[0].label[0, :4].tolist() == [255, 0, 1, 1]
    only = lost_and_found(tmp_path, frame_names={'02_Hanns_Klemm_Str_44_000001_000020'})
    assert only.frame_names == ('02_Hanns_Klemm_Str_44_000001_000020',)
    with pytest.raises(BenchmarkDatasetError, match='requested frame not found: nope'):
        lost_and_found(tmp_path, frame_names={'nope'})


def test_lost_and_found_values_above_200_are_malformed(tmp_path: Path) -> None:
    _laf(tmp_path, {'seq_000000_000010': [1, 201]})
    with pytest.raises(BenchmarkDatasetError, match=r'\[201\] \(expected'):
        lost_and_found(tmp_path)[0]


# ------------------------------------------------------------------------------------------
# StreetHazards


def _street_hazards(root: Path) -> None:
    for town, index in (('t5', 300), ('t6', 900)):
        _image(root / 'test' / 'images' / 'test' / town / f'{index}.png')
        # Raw values: 1 unlabelled, 2 building, 4 other, 5 pedestrian, 13 sign, 14 anomaly.
        _label(
            root / 'test' / 'annotations' / 'test' / town / f'{index}.png', [1, 2, 4, 5, 13, 14]
        )


@pytest.mark.parametrize(
    ('convention', 'expected'),
    [
        ('mask2anomaly', [255, 0, 255, 0, 0, 1]),
        ('densehybrid', [0, 0, 255, 0, 0, 1]),
        ('caos', [0, 0, 0, 0, 0, 1]),
    ],
)
def test_street_hazards_conventions(tmp_path: Path, convention: str, expected: list[int]) -> None:
    _street_hazards(tmp_path)
    dataset = street_hazards(tmp_path, convention=convention)  # type: ignore[arg-type]
    assert dataset.frame_names == ('t5/300', 't6/900')
    assert dataset[0].label[0, :6].tolist() == expected
    assert dataset.component_track is None


def test_street_hazards_open_set_labels_and_towns(tmp_path: Path) -> None:
    _street_hazards(tmp_path)
    dataset = street_hazards(tmp_path / 'test')  # the test/ folder itself works too
    sample = dataset.open_set_sample(1)
    # DenseHybrid: raw 1 -> 0, 2 -> 1, 4 -> ignore, 5 -> 3, 13 -> 11, 14 -> 12 (anomaly).
    assert sample.label[0, :6].tolist() == [0, 1, 255, 3, 11, 12]
    assert sample.town == 't6' and sample.name == 't6/900'
    assert dataset.town_indices('t5') == [0]
    assert len(list(dataset.open_set())) == 2
    assert len(street_hazards(tmp_path, towns=('t6',))) == 1
    with pytest.raises(ValueError, match='convention'):
        street_hazards(tmp_path, convention='other')  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# COCO panoptic


def _coco(root: Path, categories: list[dict]) -> None:
    ids = np.zeros(SHAPE, dtype=np.int64)
    ids[:, :3], ids[:, 3:6] = 5, 70000  # car (id 3), road (id 100); rest VOID
    (root / 'annotations' / 'panoptic_val2017').mkdir(parents=True)
    Image.fromarray(panoptic_id_to_rgb(ids)).save(
        root / 'annotations' / 'panoptic_val2017' / '000000000139.png'
    )
    _image(root / 'val2017' / '000000000139.jpg')
    data = {
        'images': [{'id': 139, 'file_name': '000000000139.jpg', 'height': 6, 'width': 8}],
        'annotations': [
            {
                'image_id': 139,
                'file_name': '000000000139.png',
                'segments_info': [
                    {'id': 5, 'category_id': 3, 'iscrowd': 0, 'area': 18},
                    {'id': 70000, 'category_id': 100, 'iscrowd': 0, 'area': 18},
                ],
            }
        ],
        'categories': categories,
    }
    (root / 'annotations' / 'panoptic_val2017.json').write_text(json.dumps(data))


def _coco_categories() -> list[dict]:
    names = {1: 'person', 3: 'car', 4: 'cow', 5: 'pizza', 6: 'toilet'}  # K5 = car .. toilet
    categories = [{'id': i, 'name': name, 'isthing': 1} for i, name in names.items()]
    return [*categories, {'id': 100, 'name': 'road', 'isthing': 0}]


def test_coco_panoptic_closed_and_open_set(tmp_path: Path) -> None:
    _coco(tmp_path, _coco_categories())
    closed = coco_panoptic(tmp_path)
    sample = closed[0]
    assert sample.name == '000000000139' and sample.image.shape == (*SHAPE, 3)
    assert sample.panoptic[0, :7].tolist() == [5, 5, 5, 70000, 70000, 70000, 0]
    assert [s.category_id for s in sample.segments] == [3, 100]
    assert sample.segments[0].area == 18 and closed.unknown_category_id is None
    open_set = coco_panoptic(tmp_path, unknown_percent=5)
    assert [s.category_id for s in open_set[0].segments] == [UNKNOWN_CATEGORY_ID, 100]
    assert open_set.unknown_category_id == UNKNOWN_CATEGORY_ID
    assert 'car' not in {c.name for c in open_set.categories}
    assert 'unknown' in {c.name for c in open_set.categories}


def test_coco_unknown_splits_are_cumulative() -> None:
    k5, k10, k20 = (coco_unknown_class_names(p) for p in (5, 10, 20))
    assert (len(k5), len(k10), len(k20)) == (4, 8, 16)
    assert set(k5) < set(k10) < set(k20)
    assert set(k20) - set(k10) == {
        'dining table',
        'banana',
        'bicycle',
        'cake',
        'sink',
        'cat',
        'keyboard',
        'bear',
    }
    with pytest.raises(ValueError, match='one of'):
        coco_unknown_class_names(15)


def test_coco_panoptic_errors(tmp_path: Path) -> None:
    _coco(
        tmp_path,
        [{'id': 3, 'name': 'car', 'isthing': 1}, {'id': 100, 'name': 'road', 'isthing': 0}],
    )
    with pytest.raises(BenchmarkDatasetError, match='not among the categories'):
        coco_panoptic(tmp_path, unknown_percent=5)  # cow, pizza, toilet missing
    (tmp_path / 'annotations' / 'panoptic_val2017' / '000000000139.png').unlink()
    with pytest.raises(BenchmarkDatasetError, match=r'missing file: .*000000000139\.png'):
        coco_panoptic(tmp_path)
    (tmp_path / 'annotations' / 'panoptic_val2017.json').write_text('[]')
    with pytest.raises(BenchmarkDatasetError, match='needs "images"'):
        coco_panoptic(tmp_path)
    with pytest.raises(BenchmarkDatasetError, match='missing folder'):
        coco_panoptic(tmp_path, split='train2017')


def test_coco_segment_with_unknown_category(tmp_path: Path) -> None:
    _coco(tmp_path, [{'id': 3, 'name': 'car', 'isthing': 1}])
    with pytest.raises(BenchmarkDatasetError, match='unknown category 100'):
        coco_panoptic(tmp_path)


def test_open_by_name(tmp_path: Path) -> None:
    _laf(tmp_path, {'seq_000000_000010': [1, 2]})
    test_split = BenchmarkOptions(lost_and_found_split='test')
    assert open_anomaly_benchmark('lost_and_found', tmp_path, test_split).name == (
        'lost_and_found_test'
    )
    # the default is SMIYC's LostAndFound-testNoKnown, which needs the full test split
    with pytest.raises(BenchmarkDatasetError, match='full 1203-frame test split, found 1'):
        open_anomaly_benchmark('lost_and_found', tmp_path)
    with pytest.raises(ValueError, match='unknown benchmark'):
        open_anomaly_benchmark('cityscapes', tmp_path)
