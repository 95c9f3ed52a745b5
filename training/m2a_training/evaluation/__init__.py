"""Evaluation of a Mask2Anomaly backend on the benchmark datasets (the engine of `m2a-eval`).

Modules (imported explicitly; this package imports nothing so that each stays cheap to load):
- `datasets`: `NAME=PATH` specs -> `EvalDataset`s yielding `EvalFrame`s (anomaly, semantic and
  panoptic ground truth as each benchmark defines it);
- (backends come from `m2a_perception.runtime.loader`, the one loader);
- `distributed`: torchrun sharding and the gathering of metric states;
- `runner`: the two-pass streaming evaluation (inference + pixel metrics, then the metrics that
  need a dataset-level threshold, from a float16/float32 score cache on disk);
- `report`: Tables 1-4 of the paper as markdown and JSON;
- `plots`: PR / ROC curves and the gallery of the worst frames (matplotlib, Agg).
"""
