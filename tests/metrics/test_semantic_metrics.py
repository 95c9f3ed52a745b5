"""Closed-set mIoU: hand-computed confusion and parity with cityscapesScripts."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from m2a_perception.classes import class_names, label_id_to_train_id_table, label_ids_to_train_ids
from m2a_perception.metrics.semantic import ConfusionMatrix


def test_three_classes_by_hand() -> None:
    target = np.array([[0, 0, 1, 1, 2, 255]])
    prediction = np.array([[0, 1, 1, 1, 0, 2]])
    matrix = ConfusionMatrix(num_classes=3)
    matrix.update(prediction, target)
    metrics = matrix.compute()
    # class 0: TP 1, FP 1 (GT 2 -> 0), FN 1 (-> 1): 1/3; class 1: TP 2, FP 1, FN 0: 2/3;
    # class 2: TP 0, FP 0 (the 2 on void does not count), FN 1: 0.
    np.testing.assert_allclose(metrics.iou, [1 / 3, 2 / 3, 0.0])
    assert metrics.miou == pytest.approx(1 / 3)


def test_predicting_no_class_is_a_false_negative_only() -> None:
    matrix = ConfusionMatrix(num_classes=2)
    matrix.update(np.array([[255, 0, 1]]), np.array([[0, 0, 1]]))
    # class 0: TP 1, FN 1 (the 255), FP 0 -> 1/2; class 1: 1.
    np.testing.assert_allclose(matrix.compute().iou, [0.5, 1.0])


def test_absent_classes_are_nan_and_left_out_of_the_mean() -> None:
    matrix = ConfusionMatrix(num_classes=3)
    matrix.update(np.array([[0, 1]]), np.array([[0, 1]]))
    metrics = matrix.compute()
    assert np.isnan(metrics.iou[2])
    assert metrics.miou == 1.0


def test_bad_targets_raise() -> None:
    with pytest.raises(ValueError, match='found \\[7\\]'):
        ConfusionMatrix(num_classes=3).update(np.zeros((1, 2), int), np.array([[0, 7]]))
    with pytest.raises(ValueError, match='collides'):
        ConfusionMatrix(num_classes=3, ignore_index=2)


def test_label_id_mapping() -> None:
    ids = np.array([[7, 8, 0, 33, 29, 26]], dtype=np.int32)
    assert label_ids_to_train_ids(ids).tolist() == [[0, 1, 255, 18, 255, 13]]
    assert label_ids_to_train_ids(np.array([[-1]])).tolist() == [[255]]
    assert len(class_names()) == (label_id_to_train_id_table() < 255).sum() == 19


def test_label_ids_agree_with_cityscapesscripts() -> None:
    from cityscapesscripts.helpers.labels import labels

    train_ids = {label.id: label.trainId for label in labels if label.id >= 0}
    ids = np.arange(34, dtype=np.uint8)[None]
    expected = [train_ids[i] if train_ids[i] not in (-1, 255) else 255 for i in range(34)]
    assert label_ids_to_train_ids(ids)[0].tolist() == expected
    names = {label.trainId: label.name for label in labels if 0 <= label.trainId < 19}
    assert tuple(names[i] for i in range(19)) == class_names()


def test_miou_matches_cityscapesscripts(tmp_path: Path) -> None:
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling

    rng = np.random.default_rng(0)
    prediction_files, gt_files = [], []
    matrix = ConfusionMatrix(num_classes=19)
    for index in range(3):
        # Label ids 0..33 everywhere, with blocky regions so that classes overlap partly.
        gt = rng.integers(0, 34, size=(12, 16)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
        prediction = gt.copy()
        flip = rng.random(gt.shape) < 0.4
        prediction[flip] = rng.integers(0, 34, size=int(flip.sum()))
        name = f'city_000000_{index:06d}'
        gt_files.append(str(tmp_path / f'{name}_gtFine_labelIds.png'))
        prediction_files.append(str(tmp_path / f'{name}_pred.png'))
        Image.fromarray(gt).save(gt_files[-1])
        Image.fromarray(prediction).save(prediction_files[-1])
        matrix.update(label_ids_to_train_ids(prediction), label_ids_to_train_ids(gt))
    args = copy.copy(evalPixelLevelSemanticLabeling.args)
    args.evalInstLevelScore = False  # needs instance PNGs (and np.in1d, gone in numpy 2)
    args.JSONOutput = False
    args.quiet = True
    reference = evalPixelLevelSemanticLabeling.evaluateImgLists(prediction_files, gt_files, args)
    ours = matrix.compute()
    for train_id, name in enumerate(class_names()):
        assert ours.iou[train_id] == pytest.approx(reference['classScores'][name], abs=1e-12)
    assert ours.miou == pytest.approx(reference['averageScoreClasses'], abs=1e-12)


def test_merge() -> None:
    first, second, whole = (ConfusionMatrix(num_classes=4) for _ in range(3))
    rng = np.random.default_rng(1)
    for accumulator in (first, second):
        prediction, target = rng.integers(0, 5, (8, 8)), rng.integers(0, 4, (8, 8))
        accumulator.update(prediction, target)
        whole.update(prediction, target)
    first.merge(second)
    np.testing.assert_array_equal(first.matrix, whole.matrix)
