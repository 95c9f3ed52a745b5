"""The core two-pass evaluator on hand-built frames (known answers), and parity of the replay's
evaluation with m2a-eval's on the same model outputs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from m2a_perception.evaluation.cache import FrameCache
from m2a_perception.evaluation.frames import FramePrediction, FrameTruth
from m2a_perception.evaluation.streams import EvaluationSettings, GroundTruthEvaluator
from m2a_perception.evaluation.two_pass import EvaluationSpec, TwoPassEvaluator
from m2a_perception.metrics import OBSTACLE_TRACK, SMIYC_PROTOCOL


def _frame(anomaly_box: tuple[int, int, int, int] | None) -> tuple[np.ndarray, np.ndarray]:
    """A 32x32 frame: inliers score 0.25, the anomaly box scores 0.75, one void row."""
    score = np.full((32, 32), 0.25, np.float32)
    label = np.zeros((32, 32), np.uint8)
    label[0] = 255
    if anomaly_box is not None:
        top, left, bottom, right = anomaly_box
        score[top:bottom, left:right] = 0.75
        label[top:bottom, left:right] = 1
    return score, label


def _exact(metrics: dict) -> str:
    """Every value to the last bit (float repr round-trips), NaN equal to NaN."""
    return json.dumps(metrics, sort_keys=True)


def test_perfectly_separated_frames_known_answers(tmp_path: Path) -> None:
    spec = EvaluationSpec(
        protocol=SMIYC_PROTOCOL, component_track=OBSTACLE_TRACK, mask_threshold=0.5
    )
    evaluator = TwoPassEvaluator(spec, FrameCache(tmp_path / 'cache'), 'hand')
    frames = [_frame((4, 4, 14, 14)), _frame(None), _frame((20, 10, 30, 30))]
    frames[0][0][4, 4] = 0.625  # the lowest anomaly score: the best-F1 threshold
    for index, (score, label) in enumerate(frames):
        evaluator.update(index, f'f{index}', FramePrediction(score), FrameTruth(anomaly=label))
    report = evaluator.finish()
    assert report.pixel is not None and report.component is not None
    # 100 + 200 anomaly pixels, 3 * 31 * 32 - 300 inliers; every anomaly scores above every inlier.
    assert report.pixel.num_positive_pixels == 300
    assert report.pixel.num_negative_pixels == 3 * 31 * 32 - 300
    assert report.pixel.auprc == 1.0
    assert report.pixel.fpr95 == 0.0
    assert report.pixel.auroc == 1.0
    # Best F1 (= 1) is reached at the lowest anomaly score; the components binarise with
    # score > threshold (SMIYC), which drops that one pixel: sIoU (99/100 + 200/200) / 2.
    assert report.thresholds.component == 0.625
    assert report.thresholds.tpr95 == 0.75  # 299 of 300 anomaly pixels score >= 0.75
    assert report.component.siou == pytest.approx(0.995)
    assert report.component.ppv == 1.0
    assert report.component.f1_star == 1.0
    assert report.component.num_gt_components == report.component.num_pred_components == 2
    # The node's mask (score >= 0.5) equals the labels.
    assert report.mask_component is not None
    assert (report.mask_component.siou, report.mask_component.f1_star) == (1.0, 1.0)
    assert [stats.anomaly_pixels for stats in report.frames] == [100, 0, 200]
    assert [stats.ap for stats in report.frames] == [1.0, None, 1.0]
    assert [stats.fpr_at_tpr95_threshold for stats in report.frames] == [0.0, 0.0, 0.0]
    assert not (tmp_path / 'cache' / 'hand').exists()  # finish removes the frames


def test_replay_stream_matching_known_answers() -> None:
    """Truth and predictions in any order, matched by camera and stamp; half-scored boxes."""
    evaluator = GroundTruthEvaluator(
        EvaluationSettings(component_track='obstacle', node_threshold=0.9),
        {'cam': ('anomaly',)},
    )
    score, label = _frame((4, 4, 14, 14))
    score[4:14, 9:14] = 0.2  # half of the anomaly scores below every inlier
    evaluator.add_ground_truth('cam', 2, 'anomaly', label)
    evaluator.add_prediction('cam', 1, score, None)  # no ground truth for stamp 1
    evaluator.add_prediction('cam', 2, score, None)
    result = evaluator.compute()
    assert result is not None
    assert result['frames_evaluated'] == 1
    assert result['predictions_without_ground_truth'] == 1
    pixel = result['pixel']
    assert (pixel['num_positive_pixels'], pixel['num_negative_pixels']) == (100, 892)
    # Step-wise AP: precision 1 at recall 0.5 (score 0.75), then 100 / 992 at recall 1 (0.2).
    assert pixel['auprc'] == pytest.approx(0.5 + 0.5 * 100 / 992)
    assert pixel['fpr95'] == 1.0
    # Best F1 (2/3) at 0.75; score > 0.75 predicts nothing, so the box is missed.
    assert result['thresholds']['components'] == 0.75
    assert result['components']['track'] == 'obstacle'
    assert (result['components']['siou'], result['components']['f1_star']) == (0.0, 0.0)
    # Nothing scores >= 0.9: no predicted component, the ground-truth one is missed.
    assert result['components_at_node_threshold']['f1_star'] == 0.0


def test_replay_and_m2a_eval_give_identical_numbers(tmp_path: Path) -> None:
    """The frames of the synthetic world through a tiny model: m2a-eval's runner on the dataset,
    and the replay's evaluator fed the same anomaly maps as published score images."""
    import torch

    from m2a_perception.config import load_model_config
    from m2a_perception.inference import TorchBackend
    from m2a_perception.model import build_model
    from m2a_perception.postprocess import PostprocessConfig
    from m2a_training.data.synthetic import generate_synthetic_world
    from m2a_training.distributed import DistributedContext
    from m2a_training.evaluation.datasets import open_eval_dataset
    from m2a_training.evaluation.runner import EvalOptions, build_plans, run_evaluation

    generate_synthetic_world(
        tmp_path / 'world',
        num_train=0,
        num_val=0,
        num_anomaly_val=3,
        num_outlier_images=0,
        size=(64, 128),
        seed=5,
    )
    torch.manual_seed(2)  # a random model whose best-F1 mask has components (11 here)
    config = load_model_config('tiny')
    model = build_model(config).eval()
    # The frames at their own 64x128 size (the tiny config would upsample them 4x): seconds.
    preprocess = dataclasses.replace(config.preprocess, short_side=64, max_size=128)
    dataset = open_eval_dataset('synthetic', tmp_path / 'world')
    options = EvalOptions(
        protocols={'synthetic': SMIYC_PROTOCOL},
        cache_dir=tmp_path / 'cache',
        gallery_size=0,
        progress=False,
    )
    plans = build_plans(
        [dataset],
        TorchBackend(model),
        preprocess,
        config.num_classes,
        PostprocessConfig(refinement='off', panoptic=False),
        options,
        DistributedContext(),
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared test machine; also keeps the run deterministic
    try:
        result = run_evaluation(plans, options, DistributedContext(), config.num_classes, None)
        outputs = [plans[0].segmenter(dataset.load(i).image) for i in range(len(dataset))]
    finally:
        torch.set_num_threads(threads)
    assert result is not None
    evaluated = result.datasets['synthetic']
    assert evaluated.pixel is not None and evaluated.component is not None

    replay = GroundTruthEvaluator(
        EvaluationSettings(pixel_protocol='smiyc', component_track='obstacle'),
        {'front': ('anomaly',)},
    )
    for index, output in enumerate(outputs):
        score = output.anomaly_map.float().cpu().numpy()
        replay.add_prediction('front', index, score, None)
        replay.add_ground_truth('front', index, 'anomaly', dataset.load(index).anomaly_label)
    metrics = replay.compute()
    assert metrics is not None and metrics['frames_evaluated'] == 3
    assert _exact(metrics['pixel']) == _exact(evaluated.pixel.as_dict())
    assert _exact(metrics['components']) == _exact(evaluated.component.as_dict())
    assert metrics['thresholds']['components'] == evaluated.pixel.best_f1_threshold
    assert math.isfinite(evaluated.pixel.best_f1_threshold)
    assert evaluated.pixel.num_positive_pixels > 0
    assert evaluated.component.num_pred_components > 0
