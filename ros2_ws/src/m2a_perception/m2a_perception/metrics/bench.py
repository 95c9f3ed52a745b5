"""Throughput of the metric accumulators alone (no model), in frames per second.

Synthetic frames (default 1024x2048, like Cityscapes / Fishyscapes) with a few anomaly blobs and
a void band are fed to each accumulator; the time of `update` is measured per frame, excluding
frame generation. Printed: frames/s per accumulator and for a full SMIYC evaluation pass
(exact pixel curve + component metrics). Single-threaded numpy except the float32 -> float16
rounding (torch).

The command line is `m2a-metrics-bench` (`m2a_perception.cli.metrics_bench`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np

from m2a_perception.classes import VOID_ID
from m2a_perception.metrics.component import ANOMALY_TRACK, ComponentAccumulator
from m2a_perception.metrics.pixel import (
    MASK2ANOMALY_PROTOCOL,
    SMIYC_BINNED_PROTOCOL,
    SMIYC_PROTOCOL,
    PixelCurveAccumulator,
)
from m2a_perception.metrics.semantic import ConfusionMatrix

EXACT_FLOAT32_FRAMES = 5


def make_frame(
    rng: np.random.Generator, height: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic frame.

    Returns:
        (H, W) float32 anomaly scores in [0, 1], (H, W) uint8 labels {0, 1, 255} and (H, W)
        uint8 trainIds 0..18 (255 in the void band).
    """
    label = np.zeros((height, width), dtype=np.uint8)
    label[: height // 8] = VOID_ID  # void band, like the ego-vehicle / sky regions
    rows, cols = np.mgrid[:height, :width]
    for _ in range(3):
        center_row = rng.integers(height // 4, height)
        center_col = rng.integers(0, width)
        radius = rng.integers(max(height // 40, 2), max(height // 10, 3))
        label[(rows - center_row) ** 2 + (cols - center_col) ** 2 < radius**2] = 1
    noise = rng.random((height, width), dtype=np.float32)
    score = np.clip(0.6 * (label == 1) + 0.5 * noise, 0.0, 1.0).astype(np.float32)
    train_ids = rng.integers(0, 19, size=(height, width), dtype=np.uint8)
    train_ids[label == VOID_ID] = VOID_ID
    return score, label, train_ids


def time_updates(
    update: Callable[[np.ndarray, np.ndarray, np.ndarray], object],
    frames: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> float:
    """Seconds per frame of `update(score, label, train_ids)`, averaged over the frames."""
    start = time.perf_counter()
    for score, label, train_ids in frames:
        update(score, label, train_ids)
    return (time.perf_counter() - start) / len(frames)


def run(num_frames: int, height: int, width: int, seed: int = 0) -> dict[str, float]:
    """Frames per second of each accumulator on `num_frames` synthetic frames."""
    rng = np.random.default_rng(seed)
    frames = [make_frame(rng, height, width) for _ in range(num_frames)]
    smiyc = PixelCurveAccumulator(SMIYC_PROTOCOL)
    binned = PixelCurveAccumulator(SMIYC_BINNED_PROTOCOL)
    mask2anomaly = PixelCurveAccumulator(MASK2ANOMALY_PROTOCOL)
    mask2anomaly_16 = PixelCurveAccumulator(
        dataclasses.replace(MASK2ANOMALY_PROTOCOL, float32_mantissa_bits=16)
    )
    components = ComponentAccumulator(ANOMALY_TRACK)
    confusion = ConfusionMatrix(num_classes=19)
    seconds = {
        'pixel_smiyc_exact_float16': time_updates(lambda s, y, _: smiyc.update(s, y), frames),
        'pixel_smiyc_binned': time_updates(lambda s, y, _: binned.update(s, y), frames),
        # Noise scores are nearly all distinct: the exact float32 store grows by about 36 MB
        # per 1024x2048 frame, so it is timed on a few frames only.
        'pixel_mask2anomaly_exact_float32': time_updates(
            lambda s, y, _: mask2anomaly.update(s, y), frames[:EXACT_FLOAT32_FRAMES]
        ),
        'pixel_mask2anomaly_float32_16bit': time_updates(
            lambda s, y, _: mask2anomaly_16.update(s, y), frames
        ),
        'component_anomaly_track': time_updates(
            lambda s, y, _: components.update_from_scores(s, y, 0.5), frames
        ),
        'miou_19_classes': time_updates(lambda _, y, t: confusion.update(t, t), frames),
    }
    # The curves are read once per dataset; include that cost in the SMIYC pass, spread over
    # the frames.
    start = time.perf_counter()
    smiyc.compute()
    components.compute()
    finalize = (time.perf_counter() - start) / num_frames
    results = {name: 1.0 / value for name, value in seconds.items()}
    results['smiyc_pass_pixel_plus_component'] = 1.0 / (
        seconds['pixel_smiyc_exact_float16'] + seconds['component_anomaly_track'] + finalize
    )
    return results
