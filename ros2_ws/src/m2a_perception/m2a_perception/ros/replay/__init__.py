"""Rosbag replay and evaluation of the m2a_perception node, without and with a ROS graph.

- `replay_bag` (`m2a-replay`): reads a rosbag2 (mcap or sqlite3) with `rosbags`, runs every camera
  frame through the node's own code paths (conversions, `Segmenter` stages, `CameraOutputs`,
  diagnostics) and writes an mcap bag with the inputs and every node output; latency and
  throughput statistics, and evaluation metrics when ground-truth topics are present.
- `pack_images` (`m2a-pack-bag`): a folder of images (+ ground-truth masks) -> a camera bag.
- `run_live_replay` (`m2a-replay --live`): plays a bag into the running node (player process with
  `/clock`), records its outputs (recorder process) and evaluates the recording, the same path
  `launch/replay_eval.launch.py` runs on a ROS install.
- `evaluate_recorded_bag` (`m2a-replay --recorded-outputs`): statistics and metrics of a bag that
  already holds the node's outputs.

Topic conventions (see `bag.CameraSource`): a camera `<ns>/<name>/image` (or
`<ns>/<name>/image/compressed`) has its outputs under `<ns>/<name>/` exactly as the node publishes
them, and optional ground truth on `<ns>/<name>/ground_truth/anomaly` (mono8: 0 inlier, 1 anomaly,
255 void) and `<ns>/<name>/ground_truth/semantic` (mono8 train ids, K = unknown, 255 void), with
the header stamp of the image they label.

Everything here lives under `m2a_perception.ros` because it uses rclpy's serialisation and the
node's modules; nothing needs `rclpy.init` except the live player and recorder. The metrics
(`m2a_perception.evaluation`) and the report (`m2a_perception.runtime.report`) are the core's.

Allowed dependencies: rosbags, mcap, rclpy, message packages, the core, `m2a_perception.ros`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> module (a submodule of this package, or a core module). Loaded on first use,
# so the player and recorder processes start without importing torch.
_EXPORTS = {
    'BagReadError': f'{__name__}.bag',
    'CameraSource': f'{__name__}.bag',
    'evaluate_recorded_bag': f'{__name__}.evaluation',
    'LiveReplayOptions': f'{__name__}.live',
    'run_live_replay': f'{__name__}.live',
    'ReplayOptions': f'{__name__}.offline',
    'replay_bag': f'{__name__}.offline',
    'PackOptions': f'{__name__}.pack',
    'pack_images': f'{__name__}.pack',
    'ReplayReport': 'm2a_perception.runtime.report',
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return getattr(importlib.import_module(module), name)
