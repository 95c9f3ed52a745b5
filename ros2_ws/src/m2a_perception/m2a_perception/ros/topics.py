"""Names of the node and of its per-camera output topics: the one table the node, the live
replay, the launch files and the generated docs read.

Plain data, no imports: planning a replay or a launch needs the names without loading torch,
OpenCV or the message packages (`outputs.py` does the publishing).
"""

from __future__ import annotations

NODE_NAME = 'm2a_perception'
"""Default name of the perception node (what parameter-file sections are keyed by)."""

OUTPUT_TOPICS: dict[str, str] = {
    'score': 'anomaly/score',
    'heatmap': 'anomaly/heatmap',
    'mask': 'anomaly/mask',
    'semantic': 'panoptic/semantic',
    'confidence': 'panoptic/confidence',
    'segments': 'panoptic/segments',
    'overlay': 'overlay',
    'stats': 'stats',
}
"""Output key -> topic relative to `<ns>/<camera>/`."""

OUTPUT_MESSAGE_TYPES: dict[str, str] = {
    key: {
        'segments': 'm2a_perception_msgs/OpenSetPanoptic',
        'stats': 'm2a_perception_msgs/InferenceStats',
    }.get(key, 'sensor_msgs/Image')
    for key in OUTPUT_TOPICS
}
"""Output key -> message type, `<package>/<Type>`."""
