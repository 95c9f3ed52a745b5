"""Evaluation of model outputs against ground truth: the one two-pass evaluator.

Used by `m2a-eval` (frames from data sets, `m2a_training.evaluation.runner`) and by the replay
(frames from the node or a bag, `m2a_perception.ros.replay`), so both report the same numbers
for the same maps.

Modules (imported explicitly; this package imports nothing so that each stays cheap to load):
- `frames`: `FramePrediction`, `FrameTruth`, per-frame `FrameStats` and their helpers;
- `cache`: `FrameCache`, the on-disk per-frame maps that pass 2 reads;
- `two_pass`: `EvaluationSpec` -> `TwoPassEvaluator` (`update` per frame, thresholds,
  `update_second` per cached frame, `finish` -> `EvaluationReport`), mergeable pass states;
- `streams`: camera streams matched by stamp (`GroundTruthEvaluator`, `EvaluationSettings`),
  the replay's entry point.

Allowed dependencies: numpy, OpenCV, `m2a_perception.metrics`, `m2a_perception.classes`. Never
rclpy, message packages or `m2a_training`.
"""
