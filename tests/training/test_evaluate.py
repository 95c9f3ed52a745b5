"""m2a-eval end to end on a small synthetic world: tables, plots, gallery, parity with direct
metric computation, threshold calibration, the ONNX backend and a two-process torchrun split."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from m2a_perception.classes import label_id_to_train_id_table
from m2a_perception.config import load_model_config
from m2a_perception.metrics import (
    FISHYSCAPES_PROTOCOL,
    OBSTACLE_TRACK,
    SMIYC_PROTOCOL,
    UNKNOWN_CATEGORY_ID,
    ComponentAccumulator,
    ConfusionMatrix,
    OpenSetConfusion,
    PanopticAccumulator,
    PanopticCategory,
    PanopticSegment,
    PixelCurveAccumulator,
    calibrate_threshold,
    downscale_for_calibration,
)
from m2a_perception.model import build_model
from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.types import SegmentKind
from m2a_perception.weights import save_checkpoint
from m2a_training.cli.evaluate import main
from m2a_training.data.benchmarks import smiyc_road_anomaly21
from m2a_training.data.cityscapes import (
    find_cityscapes_records,
    read_cityscapes_sample,
)
from m2a_training.data.synthetic import generate_synthetic_world

WORLD_SIZE = (64, 128)
NUM_VAL = 5
NUM_ANOMALY = 6
GALLERY = 3
# The tiny config resizes the short side to 256: 64x128 frames run at 256x512.
PADDED_SIZE = (256, 512)


pytestmark = pytest.mark.usefixtures('single_thread')


@pytest.fixture(scope='module')
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp('world')
    generate_synthetic_world(
        root,
        num_train=0,
        num_val=NUM_VAL,
        num_anomaly_val=NUM_ANOMALY,
        num_outlier_images=0,
        size=WORLD_SIZE,
        seed=3,
    )
    return root


@pytest.fixture(scope='module')
def checkpoint(world: Path) -> Path:
    torch.manual_seed(0)
    config = load_model_config('tiny')
    return save_checkpoint(world / 'tiny.safetensors', build_model(config).state_dict(), config)


def _eval_args(world: Path, out: Path, *extra: str) -> list[str]:
    return [
        '--dataset', f'synthetic={world}',
        '--dataset', f'cityscapes={world}',
        '--calibrate-on', 'synthetic',
        '--out', str(out),
        '--gallery', str(GALLERY),
        '--threads', '1',
        '--no-progress',
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope='module')
def torch_report(world: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp('eval_torch')
    # One DataLoader worker exercises the worker path (frames pickled across processes).
    code = main(['--checkpoint', str(checkpoint), *_eval_args(world, out, '--workers', '1')])
    assert code == 0
    return out, json.loads((out / 'results.json').read_text())


def _metrics(report: dict) -> dict:
    """Every metric of the report, without timings, paths and gallery data."""
    skip = {'seconds', 'gallery', 'description'}
    return {
        name: {key: value for key, value in data.items() if key not in skip}
        for name, data in report['datasets'].items()
    }


def _assert_close(actual, expected, tolerance: float, path: str = '') -> None:
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            _assert_close(actual[key], expected[key], tolerance, f'{path}/{key}')
    elif isinstance(expected, list):
        assert len(actual) == len(expected), path
        for position, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_close(a, e, tolerance, f'{path}[{position}]')
    elif isinstance(expected, float) and isinstance(actual, float):
        assert actual == pytest.approx(expected, abs=tolerance), path
    else:
        assert actual == expected, path


# ------------------------------------------------------------------------------------------
# End to end


def test_writes_tables_plots_gallery_and_per_frame_files(torch_report) -> None:
    out, report = torch_report
    markdown = (out / 'results.md').read_text()
    for title in ('Table 1: pixel-level', 'Table 2: component-level', 'Table 3: open-set semantic',
                  'Table 4: open-set panoptic'):  # fmt: skip
        assert title in markdown
    assert set(report['tables']) == {'table1', 'table2', 'table3', 'table4'}
    assert (
        'Protocol (pixel curve; component metrics binarise at its best-F1 threshold): '
        '`synthetic` smiyc.'
    ) in markdown
    table1 = report['tables']['table1']
    assert table1['columns'] == [
        'Method', 'Synthetic AuPRC ↑', 'Synthetic FPR95 ↓', 'Average AuPRC ↑', 'Average FPR95 ↓',
    ]  # fmt: skip
    assert table1['rows'][0][0] == 'tiny'
    table4 = report['tables']['table4']
    assert table4['columns'][2:5] == ['PQ_Th ↑', 'SQ_Th ↑', 'RQ_Th ↑']
    assert table4['columns'][-3:] == ['PQ_unk ↑', 'SQ_unk ↑', 'RQ_unk ↑']
    assert table4['rows'][0][0] == 'Cityscapes val (0)'
    # Same numbers in markdown and JSON tables.
    for row in (*table1['rows'], *table4['rows']):
        assert '| ' + ' | '.join(row) + ' |' in markdown

    for name in ('pr_curves.png', 'roc_curves.png'):
        with Image.open(out / 'plots' / name) as plot:
            assert plot.size[0] > 300
    for dataset, count in (('synthetic', NUM_ANOMALY), ('cityscapes', NUM_VAL)):
        panels = sorted((out / 'gallery' / dataset).glob('*.png'))
        assert len(panels) == GALLERY
        with Image.open(panels[0]) as panel:
            assert panel.mode == 'RGB' and panel.size[0] >= 2 * 384
        lines = (out / 'per_frame' / f'{dataset}.csv').read_text().strip().splitlines()
        assert len(lines) == count + 1
        errors = [entry['error'] for entry in report['datasets'][dataset]['gallery']]
        assert errors == sorted(errors, reverse=True)
    assert not (out / 'cache').exists()  # the score cache is removed after the run
    throughput = report['throughput']
    assert throughput['frames'] == NUM_ANOMALY + NUM_VAL
    assert throughput['frames_per_second_metrics_only'] > 0


def test_metrics_equal_direct_computation(world: Path, checkpoint: Path, torch_report) -> None:
    _, report = torch_report
    # m2a-eval's default is the official scoring protocol.
    base = PostprocessConfig.for_protocol('official', anomaly_threshold=None)
    anomaly_segmenter = Segmenter.from_checkpoint(
        checkpoint, 'cpu', replace(base, semantic=False, panoptic=False, mining=False)
    )
    city_segmenter = Segmenter.from_checkpoint(checkpoint, 'cpu', base)

    # Pixel, component and calibration curves on the anomaly set.
    pixel = PixelCurveAccumulator(SMIYC_PROTOCOL)
    calibration = PixelCurveAccumulator(replace(FISHYSCAPES_PROTOCOL, float32_mantissa_bits=16))
    frames = []
    for sample in smiyc_road_anomaly21(world / 'anomaly_val'):
        score = anomaly_segmenter(sample.image).anomaly_map.numpy()
        frames.append((score, sample.label))
        pixel.update(score, sample.label)
        calibration.update(*downscale_for_calibration(score, sample.label, 0.5))
    expected_pixel = pixel.compute()
    components = ComponentAccumulator(OBSTACLE_TRACK)
    for score, label in frames:
        components.update_from_scores(score, label, expected_pixel.best_f1_threshold)
    point = calibrate_threshold(calibration.curve())
    positives = sum(int(((s > point.threshold) & (y == 1)).sum()) for s, y in frames)
    negatives = sum(int(((s > point.threshold) & (y == 0)).sum()) for s, y in frames)

    synthetic = report['datasets']['synthetic']
    for key in ('auprc', 'fpr95', 'auroc', 'best_f1_threshold', 'num_positive_pixels'):
        assert synthetic['pixel'][key] == getattr(expected_pixel, key), key
    expected_components = components.compute()
    for key in ('siou', 'ppv', 'f1_star', 'num_gt_components', 'num_pred_components'):
        expected = getattr(expected_components, key)
        # results.json writes NaN as null (report.py); with the scenes judged on the road only,
        # the untrained model can leave no predicted component inside the road, where PPV and
        # F1* are undefined.
        if isinstance(expected, float) and math.isnan(expected):
            assert synthetic['component'][key] is None, key
        else:
            assert synthetic['component'][key] == pytest.approx(expected), key
    assert report['calibration']['threshold'] == point.threshold
    assert synthetic['transfer']['tpr'] == positives / expected_pixel.num_positive_pixels
    assert synthetic['transfer']['fpr'] == negatives / expected_pixel.num_negative_pixels

    # Closed-set mIoU, open-IoU at the transferred threshold and PQ on Cityscapes val.
    lut = label_id_to_train_id_table()
    categories = [
        PanopticCategory(train_id, f'c{train_id}', train_id >= 11) for train_id in range(19)
    ]
    categories.append(PanopticCategory(UNKNOWN_CATEGORY_ID, 'unknown', True))
    closed, open_set = ConfusionMatrix(19), OpenSetConfusion(19, point.threshold)
    panoptic = PanopticAccumulator(categories, UNKNOWN_CATEGORY_ID)
    for record in find_cityscapes_records(world / 'cityscapes', 'val', need_instances=True):
        sample = read_cityscapes_sample(record, lut)
        output = city_segmenter(sample.image)
        prediction = output.semantic.numpy()
        closed.update(prediction, sample.semantic)
        open_set.update(prediction, output.anomaly_map.numpy(), sample.semantic)
        gt_ids = np.where(sample.semantic == 255, 0, sample.instance).astype(np.int64)
        gt_segments = []
        for segment_id in np.unique(gt_ids[gt_ids > 0]).tolist():
            train_id = int(sample.semantic[gt_ids == segment_id][0])
            gt_segments.append(
                PanopticSegment(segment_id, train_id, train_id >= 11 and segment_id < 1000)
            )
        pred_segments = [
            PanopticSegment(
                s.id, UNKNOWN_CATEGORY_ID if s.kind is SegmentKind.UNKNOWN_THING else s.class_id
            )
            for s in output.segments
        ]
        panoptic.update(gt_ids, gt_segments, output.panoptic.numpy(), pred_segments)
    cityscapes = report['datasets']['cityscapes']
    assert cityscapes['semantic']['miou'] == pytest.approx(closed.compute().miou)
    assert cityscapes['semantic']['true_positives'] == list(closed.compute().true_positives)
    assert cityscapes['open_set']['calibrated']['open_miou'] == pytest.approx(
        open_set.compute().open_miou
    )
    expected_groups = panoptic.compute().groups
    for group, values in cityscapes['panoptic']['groups'].items():
        expected = expected_groups[group]
        assert values['num_categories'] == expected.num_categories
        for key in ('pq', 'sq', 'rq'):
            if math.isnan(getattr(expected, key)):
                assert values[key] is None
            else:
                assert values[key] == pytest.approx(getattr(expected, key))


def test_calibration_is_applied_to_the_other_dataset(torch_report) -> None:
    out, report = torch_report
    calibration = report['calibration']
    assert calibration['dataset'] == 'synthetic'
    assert calibration['tpr'] > 0.95
    assert (
        report['datasets']['cityscapes']['open_set']['calibrated']['threshold']
        == (calibration['threshold'])
    )
    row = next(r for r in report['tables']['table3']['rows'] if r[1].startswith('Cityscapes'))
    assert row[1] == 'Cityscapes val (threshold from synthetic)'
    open_miou = report['datasets']['cityscapes']['open_set']['calibrated']['open_miou']
    assert row[-1] == f'{100 * open_miou:.2f}'
    assert 'calibrated on `synthetic`' in (out / 'results.md').read_text()


# ------------------------------------------------------------------------------------------
# Other backends and processes


def _table_numbers(report: dict) -> list[float]:
    numbers = []
    for table in report['tables'].values():
        for row in table['rows']:
            numbers += [float(cell) for cell in row if re.fullmatch(r'-?\d+\.\d+', cell)]
    return numbers


def test_onnx_backend_gives_the_torch_tables(world, checkpoint, torch_report, tmp_path) -> None:
    from m2a_perception.deploy.build import provision_from_checkpoint

    # An engine as m2a-build-engine makes it: the ONNX file plus its sidecar (m2a-eval opens
    # engines only through their sidecar).
    engine = provision_from_checkpoint(
        checkpoint,
        backend='onnxruntime',
        precision='fp32',
        size=PADDED_SIZE,
        device='cpu',
        cache_dir=tmp_path / 'engines',
    ).paths.engine
    out = tmp_path / 'eval_onnx'
    args = ['--engine', str(engine), '--checkpoint', str(checkpoint), '--workers', '0']
    assert main([*args, *_eval_args(world, out)]) == 0
    report = json.loads((out / 'results.json').read_text())
    assert report['backend']['kind'] == 'onnxruntime'
    expected = _table_numbers(torch_report[1])
    actual = _table_numbers(report)
    assert len(actual) == len(expected)
    # Percentages; onnxruntime and eager torch differ by ~1e-5 in the logits.
    np.testing.assert_allclose(actual, expected, atol=0.2)
    assert report['datasets']['synthetic']['pixel']['auprc'] == pytest.approx(
        torch_report[1]['datasets']['synthetic']['pixel']['auprc'], abs=1e-3
    )


def test_torchrun_two_processes_match_one(world, checkpoint, torch_report, tmp_path) -> None:
    out = tmp_path / 'eval_torchrun'
    command = [
        sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
        '-m', 'm2a_training.cli.evaluate', '--checkpoint', str(checkpoint), '--workers', '0',
        *_eval_args(world, out),
    ]  # fmt: skip
    environment = {**os.environ, 'OMP_NUM_THREADS': '1'}
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=300, env=environment, check=False
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((out / 'results.json').read_text())
    assert report['throughput']['processes'] == 2
    _assert_close(_metrics(report), _metrics(torch_report[1]), tolerance=1e-12)
    assert report['tables'] == torch_report[1]['tables']
    gallery = [item['name'] for item in report['datasets']['synthetic']['gallery']]
    expected = [item['name'] for item in torch_report[1]['datasets']['synthetic']['gallery']]
    assert gallery == expected


# ------------------------------------------------------------------------------------------
# Errors


def test_smiyc_tracks_default_to_the_leaderboard_protocol(world, checkpoint, tmp_path, capsys):
    out = tmp_path / 'eval'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'smiyc_ra21={world / "anomaly_val"}']
    args += ['--out', str(out), '--limit', '2', '--gallery', '0', '--no-progress', '--no-panoptic']
    assert main(args) == 0
    assert f'dataset smiyc_ra21: {NUM_ANOMALY} frames' in capsys.readouterr().out
    report = json.loads((out / 'results.json').read_text())
    assert report['datasets']['smiyc_ra21']['pixel_protocol'] == 'smiyc_binned'
    assert report['tables']['table2']['rows'][0][0] == 'tiny'  # component metrics computed
    markdown = (out / 'results.md').read_text()
    assert '`smiyc_ra21` smiyc_binned.' in markdown


def test_missing_dataset_gives_a_clear_error(checkpoint, tmp_path, capsys) -> None:
    missing = tmp_path / 'nowhere'
    args = ['--checkpoint', str(checkpoint), '--out', str(tmp_path / 'out'), '--no-progress']
    assert main([*args, '--dataset', f'smiyc_ra21={missing}']) == 2
    message = capsys.readouterr().err
    assert f'dataset at {missing} is not usable' in message
    assert 'does not exist' in message
    assert not (tmp_path / 'out' / 'results.json').exists()

    (tmp_path / 'empty').mkdir()
    assert main([*args, '--dataset', f'synthetic={tmp_path / "empty"}']) == 2
    message = capsys.readouterr().err
    assert 'missing folder' in message and 'anomaly_val/' in message

    assert main([*args, '--dataset', f'fishyscapes={missing}']) == 2
    assert "unknown dataset 'fishyscapes'" in capsys.readouterr().err


def test_bad_calibration_and_protocol_arguments(world, checkpoint, tmp_path, capsys) -> None:
    args = ['--checkpoint', str(checkpoint), '--out', str(tmp_path), '--no-progress']
    data = ['--dataset', f'cityscapes={world}']
    assert main([*args, *data, '--calibrate-on', 'synthetic']) == 2
    assert 'not among the datasets' in capsys.readouterr().err
    assert main([*args, *data, '--calibrate-on', 'cityscapes']) == 2
    assert 'has no anomaly labels' in capsys.readouterr().err
    assert main([*args, *data, '--protocol', 'smiyc_ra21=fishyscapes']) == 2
    assert 'not evaluated' in capsys.readouterr().err
    assert main([*args, *data, '--protocol', 'roc']) == 2
    assert "unknown protocol 'roc'" in capsys.readouterr().err


def test_malformed_frame_in_a_worker_gives_a_clear_error(world, checkpoint, tmp_path, capsys):
    broken = tmp_path / 'anomaly_val'
    shutil.copytree(world / 'anomaly_val', broken)
    bad_label = broken / 'labels_masks' / 'anomaly_000002.png'
    bad_label.write_bytes(b'not a png')
    out = tmp_path / 'out'
    args = ['--checkpoint', str(checkpoint), '--dataset', f'synthetic={broken}', '--out', str(out)]
    assert main([*args, '--workers', '1', '--no-progress', '--threads', '1']) == 2
    message = capsys.readouterr().err
    assert f'{bad_label}: unreadable label' in message
    assert not (out / 'results.json').exists() and not (out / 'cache').exists()


def test_disk_full_while_writing_the_report_keeps_the_previous_one(
    world: Path, checkpoint: Path, torch_report, tmp_path: Path, monkeypatch, capsys
) -> None:
    import errno

    from m2a_training import evaluate

    from ..disk import small_disk

    previous, _ = torch_report
    kept = {name: (previous / name).read_bytes() for name in ('results.md', 'results.json')}
    room = sum(len(data) for data in kept.values()) + (64 << 10)
    with small_disk(tmp_path / 'disk', room) as disk:
        if disk is None:  # not root: a full disk as the plot writer sees it

            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(evaluate, 'save_curve_plots', no_space)
        out = (disk or tmp_path) / 'eval'
        out.mkdir()
        for name, data in kept.items():
            (out / name).write_bytes(data)
        capsys.readouterr()
        assert main(['--checkpoint', str(checkpoint), *_eval_args(world, out)]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith('error')]
        assert len(err) == 1, err
        assert err[0].startswith('error: no space left on ') and f'while writing {out}' in err[0]
        assert {name: (out / name).read_bytes() for name in kept} == kept


def test_mining_split_of_a_model_option_is_checked_against_the_checkpoint(
    world, checkpoint, tmp_path, capsys
) -> None:
    """`--mining-split centroid_head` (issue 17) needs a checkpoint with the instance head: a
    head-less one is one sentence and exit 2, a centroid checkpoint evaluates with no code
    change."""
    data = ['--dataset', f'synthetic={world}', '--limit', '2', '--gallery', '0', '--no-progress']
    split = ['--mining-split', 'centroid_head']
    refused = ['--checkpoint', str(checkpoint), '--out', str(tmp_path / 'plain'), *data, *split]
    assert main(refused) == 2
    assert "mining_split 'centroid_head' needs a model with" in capsys.readouterr().err
    assert not (tmp_path / 'plain' / 'results.json').exists()

    torch.manual_seed(0)
    config = load_model_config('tiny_centroid')
    centroid = save_checkpoint(
        tmp_path / 'centroid.safetensors', build_model(config).state_dict(), config
    )
    out = tmp_path / 'centroid'
    assert main(['--checkpoint', str(centroid), '--out', str(out), *data, *split]) == 0
    report = json.loads((out / 'results.json').read_text())
    assert report['postprocess']['mining_split'] == 'centroid_head'
    assert report['datasets']['synthetic']['num_frames'] == 2
