"""m2a-eval on tiny StreetHazards and COCO panoptic folders: the Table 3 t5/t6 protocol and the
Table 4 open-set panoptic protocol, checked against direct metric computation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.config import load_model_config
from m2a_perception.metrics import (
    FISHYSCAPES_PROTOCOL,
    UNKNOWN_CATEGORY_ID,
    OpenSetConfusion,
    PanopticAccumulator,
    PanopticSegment,
    PixelCurveAccumulator,
    calibrate_threshold,
    downscale_for_calibration,
    panoptic_id_to_rgb,
    weighted_town_mean,
)
from m2a_perception.model import build_model
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.types import SegmentKind
from m2a_perception.weights import save_checkpoint
from m2a_training.cli.evaluate import main
from m2a_training.data.benchmarks import coco_panoptic, street_hazards
from m2a_training.evaluation.datasets import (
    STREETHAZARDS_REFINEMENT_IDS,
    STREETHAZARDS_THING_IDS,
)

SIZE = (64, 96)


pytestmark = pytest.mark.usefixtures('single_thread')


def _checkpoint(path: Path, num_classes: int) -> Path:
    torch.manual_seed(1)
    config = replace(load_model_config('tiny'), num_classes=num_classes)
    return save_checkpoint(path, build_model(config).state_dict(), config)


def _scene(rng: np.random.Generator) -> np.ndarray:
    image = rng.integers(0, 60, (*SIZE, 3), dtype=np.uint8)
    image[SIZE[0] // 2 :] += np.uint8(120)
    return image


def _write_street_hazards(root: Path) -> None:
    rng = np.random.default_rng(0)
    for town, count in (('t5', 2), ('t6', 3)):
        for index in range(count):
            label = np.full(SIZE, 2, dtype=np.uint8)  # building
            label[SIZE[0] // 2 :] = 7  # road
            label[:4] = 4  # "other": ignored
            top, left = int(rng.integers(34, 50)), int(rng.integers(0, 70))
            label[top : top + 10, left : left + 20] = 14  # anomaly
            image = _scene(rng)
            image[label == 14] = (220, 30, 200)
            for kind, array in (('images', image), ('annotations', label)):
                path = root / 'test' / kind / 'test' / town / f'{index}.png'
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)


def test_street_hazards_cross_town_protocol(tmp_path: Path) -> None:
    _write_street_hazards(tmp_path / 'sh')
    checkpoint = _checkpoint(tmp_path / 'sh12.safetensors', 12)
    out = tmp_path / 'out'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'street_hazards={tmp_path / "sh"}']
    args += ['--calibrate-on', 'street_hazards']  # adds a row; the towns keep their protocol
    args += ['--out', str(out), '--no-progress', '--gallery', '1', '--workers', '0']
    assert main(args) == 0
    report = json.loads((out / 'results.json').read_text())

    # Direct computation: each town's threshold comes from the other town's curve.
    # m2a-eval's default is the official scoring protocol.
    config = PostprocessConfig.for_protocol(
        'official',
        anomaly_threshold=None,
        panoptic=False,
        mining=False,
        thing_class_ids=STREETHAZARDS_THING_IDS,
        refinement_class_ids=STREETHAZARDS_REFINEMENT_IDS,
    )
    segmenter = Segmenter.from_checkpoint(checkpoint, 'cpu', config)
    dataset = street_hazards(tmp_path / 'sh')
    outputs, curves = {}, {}
    for index in range(len(dataset)):
        sample = dataset.open_set_sample(index)
        output = segmenter(sample.image)
        score, semantic = output.anomaly_map.numpy(), output.semantic.numpy()
        outputs.setdefault(sample.town, []).append((semantic, score, sample.label))
        binary = np.where(sample.label == 12, 1, np.where(sample.label == 255, 255, 0))
        curve = curves.setdefault(
            sample.town,
            PixelCurveAccumulator(replace(FISHYSCAPES_PROTOCOL, float32_mantissa_bits=16)),
        )
        curve.update(*downscale_for_calibration(score, binary.astype(np.uint8), 0.5))
    open_miou = {}
    for town, other in (('t5', 't6'), ('t6', 't5')):
        threshold = calibrate_threshold(curves[other].curve()).threshold
        confusion = OpenSetConfusion(12, threshold)
        for semantic, score, label in outputs[town]:
            confusion.update(semantic, score, label)
        metrics = confusion.compute()
        measured = report['datasets']['street_hazards']['open_set']['towns'][town]
        assert measured['threshold'] == threshold
        assert measured['open_miou'] == pytest.approx(metrics.open_miou)
        open_miou[town] = metrics.open_miou
    expected_mean = weighted_town_mean(open_miou, {'t5': 2, 't6': 3})
    data = report['datasets']['street_hazards']
    assert data['open_set']['towns_weighted_open_miou'] == pytest.approx(expected_mean)
    assert data['open_set']['town_frames'] == {'t5': 2, 't6': 3}
    assert data['semantic'] is not None and data['component'] is None

    table = report['tables']['table3']
    assert table['columns'][2:] == [
        'AuPRC ↑', 'FPR95 ↓', 'mIoU ↑', 'Open-IoU^t5 ↑', 'Open-IoU^t6 ↑', 'Open-IoU ↑',
    ]  # fmt: skip
    row = table['rows'][0]
    assert row[1] == 'StreetHazards' and row[-1] == f'{100 * expected_mean:.2f}'
    calibrated = data['open_set']['calibrated']
    assert table['rows'][1][1] == 'StreetHazards (threshold from street_hazards)'
    assert table['rows'][1][-1] == f'{100 * calibrated["open_miou"]:.2f}'
    assert 'table1' not in report['tables']  # StreetHazards pixel metrics live in Table 3


def test_street_hazards_with_a_cityscapes_model_reports_pixels_only(tmp_path: Path) -> None:
    _write_street_hazards(tmp_path / 'sh')
    checkpoint = _checkpoint(tmp_path / 'cs19.safetensors', 19)
    out = tmp_path / 'out'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'street_hazards={tmp_path / "sh"}']
    assert (
        main([*args, '--out', str(out), '--no-progress', '--gallery', '0', '--workers', '0']) == 0
    )
    data = json.loads((out / 'results.json').read_text())['datasets']['street_hazards']
    assert data['pixel']['auprc'] is not None
    assert data['semantic'] is None and data['open_set']['towns'] == {}
    assert any('12 classes, the model 19' in note for note in data['notes'])


CATEGORIES = [
    {'id': 1, 'name': 'person', 'isthing': 1},
    {'id': 3, 'name': 'car', 'isthing': 1},
    {'id': 21, 'name': 'cow', 'isthing': 1},
    {'id': 59, 'name': 'pizza', 'isthing': 1},
    {'id': 70, 'name': 'toilet', 'isthing': 1},
    {'id': 149, 'name': 'road', 'isthing': 0},
    {'id': 187, 'name': 'sky', 'isthing': 0},
]


def _write_coco(root: Path, count: int = 3) -> None:
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        ids = np.zeros(SIZE, dtype=np.int64)
        ids[: SIZE[0] // 2] = 10  # sky
        ids[SIZE[0] // 2 :] = 20  # road
        ids[20:50, 10:30] = 30  # person
        ids[36:60, 50:90] = 40  # car: unknown in the K5 split
        ids[:2] = 0  # VOID
        segments = [
            {'id': 10, 'category_id': 187, 'iscrowd': 0},
            {'id': 20, 'category_id': 149, 'iscrowd': 0},
            {'id': 30, 'category_id': 1, 'iscrowd': 0},
            {'id': 40, 'category_id': 3, 'iscrowd': 0},
        ]
        for segment in segments:
            segment['area'] = int((ids == segment['id']).sum())
        stem = f'{image_id:012d}'
        image = _scene(rng)
        (root / 'val2017').mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / 'val2017' / f'{stem}.png')
        png_dir = root / 'annotations' / 'panoptic_val2017'
        png_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(panoptic_id_to_rgb(ids)).save(png_dir / f'{stem}.png')
        images.append({'id': image_id, 'file_name': f'{stem}.png'})
        annotations.append(
            {'image_id': image_id, 'file_name': f'{stem}.png', 'segments_info': segments}
        )
    payload = {'images': images, 'annotations': annotations, 'categories': CATEGORIES}
    (root / 'annotations' / 'panoptic_val2017.json').write_text(json.dumps(payload))


def test_coco_open_set_panoptic(tmp_path: Path) -> None:
    _write_coco(tmp_path / 'coco')
    checkpoint = _checkpoint(tmp_path / 'coco3.safetensors', 3)  # person, road, sky
    out = tmp_path / 'out'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'coco_k5={tmp_path / "coco"}']
    args += ['--refinement', 'off']  # the official refinement ids are Cityscapes classes
    assert (
        main([*args, '--out', str(out), '--no-progress', '--gallery', '2', '--workers', '0']) == 0
    )
    report = json.loads((out / 'results.json').read_text())

    dataset = coco_panoptic(tmp_path / 'coco', unknown_percent=5)
    config = PostprocessConfig.for_protocol(
        'official',
        anomaly_threshold=None,
        refinement='off',
        semantic=False,
        thing_class_ids=(0,),
    )
    segmenter = Segmenter.from_checkpoint(checkpoint, 'cpu', config)
    accumulator = PanopticAccumulator(dataset.categories, UNKNOWN_CATEGORY_ID)
    class_to_category = (1, 149, 187)
    for sample in dataset:
        output = segmenter(sample.image)
        segments = [
            PanopticSegment(
                s.id,
                UNKNOWN_CATEGORY_ID
                if s.kind is SegmentKind.UNKNOWN_THING
                else class_to_category[s.class_id],
            )
            for s in output.segments
        ]
        accumulator.update(sample.panoptic, sample.segments, output.panoptic.numpy(), segments)
    expected = accumulator.compute().groups
    groups = report['datasets']['coco_k5']['panoptic']['groups']
    assert set(groups) == {'all', 'things', 'stuff', 'unknown'}
    for name, values in groups.items():
        assert values['num_categories'] == expected[name].num_categories
        for key in ('pq', 'sq', 'rq'):
            value = getattr(expected[name], key)
            assert values[key] == (None if np.isnan(value) else pytest.approx(value))
    table = report['tables']['table4']
    assert table['rows'][0][0] == 'COCO val K=5% (5)'
    assert len(table['rows'][0]) == len(table['columns']) == 14
    assert len(list((out / 'gallery' / 'coco_k5').glob('*.png'))) == 2


def test_coco_with_a_mismatched_model_skips_panoptic(tmp_path: Path) -> None:
    _write_coco(tmp_path / 'coco', count=1)
    checkpoint = _checkpoint(tmp_path / 'cs19.safetensors', 19)
    out = tmp_path / 'out'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'coco={tmp_path / "coco"}']
    assert main([*args, '--out', str(out), '--no-progress', '--workers', '0']) == 0
    report = json.loads((out / 'results.json').read_text())
    data = report['datasets']['coco']
    assert data['panoptic'] is None
    assert any('known categories but the model has 19' in note for note in data['notes'])
    assert report['tables'] == {}
    assert 'No metric could be computed' in (out / 'results.md').read_text()
