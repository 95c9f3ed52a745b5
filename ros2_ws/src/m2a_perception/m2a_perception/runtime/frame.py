"""`process_frame`: one camera frame through pre-processing, the model and post-processing.

The one per-frame stage sequence: the ROS node (`PerceptionNode._process`), the offline replay
and `m2a-bench` call it, so they run - and time - the same code. The post-processing config is
passed per call (the node switches stages off that nobody subscribes to), never stored on the
shared `Segmenter`. Stage times are wall times; on CUDA each stage ends with a device
synchronisation so that the times are per stage, not per queueing.

Allowed dependencies: numpy, torch, the core (`pipeline`, `postprocess`, `types`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from m2a_perception.pipeline import Segmenter
from m2a_perception.postprocess import PostprocessConfig
from m2a_perception.types import SegmentationOutput


@dataclass(frozen=True)
class StageTimes:
    """Stage timings of one frame in milliseconds.

    `convert_ms` (message to RGB array), `handoff_ms` (result maps to the host) and `publish_ms`
    (filling and publishing the outputs) are the node's own overhead; `preprocess_ms`,
    `model_ms` and `postprocess_ms` are the model core's work.
    """

    preprocess_ms: float = 0.0
    model_ms: float = 0.0
    postprocess_ms: float = 0.0
    publish_ms: float = 0.0
    convert_ms: float = 0.0
    handoff_ms: float = 0.0

    @property
    def overhead_ms(self) -> float:
        """The node's own share: conversion, hand-off and publishing."""
        return self.convert_ms + self.handoff_ms + self.publish_ms

    @property
    def total_ms(self) -> float:
        return self.overhead_ms + self.preprocess_ms + self.model_ms + self.postprocess_ms


@dataclass(frozen=True)
class FrameResult:
    """Outputs of one frame on the host (None when post-processing was skipped), and the
    core's stage times (convert/publish 0)."""

    output: SegmentationOutput | None
    times: StageTimes


def process_frame(
    segmenter: Segmenter, rgb: np.ndarray, postprocess: PostprocessConfig | None
) -> FrameResult:
    """Segment one (H, W, 3) uint8 RGB frame and bring the result maps to the host.

    `postprocess=None` stops after the model (`m2a-bench --no-postprocess`); the node and the
    replay always pass their config.

    Raises:
        RuntimeError, ValueError: from the backend or post-processing (the caller counts and
            reports them; the frame is lost, nothing else).
    """
    cuda = segmenter.device.type == 'cuda'
    start = time.perf_counter()
    images, record = segmenter.preprocess(rgb)
    if cuda:
        torch.cuda.synchronize(segmenter.device)
    preprocessed = time.perf_counter()
    prediction = segmenter.infer(images, record, postprocess)
    if cuda:
        torch.cuda.synchronize(segmenter.device)
    inferred = time.perf_counter()
    if postprocess is None:
        times = StageTimes(
            preprocess_ms=(preprocessed - start) * 1e3, model_ms=(inferred - preprocessed) * 1e3
        )
        return FrameResult(None, times)
    result = segmenter.postprocess(prediction, record, config=postprocess)
    if cuda:
        torch.cuda.synchronize(segmenter.device)
    postprocessed = time.perf_counter()
    host = result.cpu()
    handed_off = time.perf_counter()
    times = StageTimes(
        preprocess_ms=(preprocessed - start) * 1e3,
        model_ms=(inferred - preprocessed) * 1e3,
        postprocess_ms=(postprocessed - inferred) * 1e3,
        handoff_ms=(handed_off - postprocessed) * 1e3,
    )
    return FrameResult(host, times)
