"""Render the shipped RViz layout for any camera list and namespace.

`config/m2a_perception.rviz` shows camera "front" without a namespace; its Image displays whose
topic starts with `/front/` are the per-camera template. Imported by `launch/rviz.launch.py`, so
it needs only PyYAML (no rclpy).

Allowed dependencies: standard library, PyYAML, `m2a_perception.ros.param_file`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from m2a_perception.ros.param_file import read_parameter_file

TEMPLATE_CAMERA = 'front'
IMAGE_DISPLAY = 'rviz_default_plugins/Image'


def topic_for(namespace: str, camera: str, suffix: str) -> str:
    """Absolute topic `/<namespace>/<camera>/<suffix>` (empty parts left out)."""
    parts = [part.strip('/') for part in (namespace, camera, suffix)]
    return '/' + '/'.join(part for part in parts if part)


def render_rviz_config(template: str, cameras: Sequence[str], namespace: str = '') -> str:
    """Repeat the template camera's Image displays for every camera, in `namespace`.

    Args:
        template: text of the shipped .rviz file.
        cameras: camera names, in display order.
        namespace: node namespace ('' or e.g. '/perception').

    Returns:
        The .rviz text (YAML).

    Raises:
        ValueError: if `cameras` is empty or the template has no per-camera Image display.
    """
    if not cameras:
        raise ValueError('render_rviz_config needs at least one camera')
    data: dict[str, Any] = yaml.safe_load(template)
    displays: list[dict[str, Any]] = data['Visualization Manager']['Displays']
    prefix = f'/{TEMPLATE_CAMERA}/'
    per_camera = [
        d
        for d in displays
        if d.get('Class') == IMAGE_DISPLAY and str(d['Topic']['Value']).startswith(prefix)
    ]
    if not per_camera:
        raise ValueError(f'template has no Image display on a {prefix}... topic')
    rendered = [d for d in displays if d not in per_camera]
    for camera in cameras:
        for display in per_camera:
            clone = copy.deepcopy(display)
            suffix = str(display['Topic']['Value'])[len(prefix) :]
            clone['Name'] = str(display['Name']).replace(TEMPLATE_CAMERA, camera, 1)
            clone['Topic']['Value'] = topic_for(namespace, camera, suffix)
            rendered.append(clone)
    data['Visualization Manager']['Displays'] = rendered
    return yaml.safe_dump(data, sort_keys=False)


def camera_names_from_params(path: str | Path) -> list[str]:
    """`cameras.names` from a node parameter YAML (`/**:` or node-name keyed), or ['front']."""
    names = read_parameter_file(path).get('cameras.names')
    return [str(name) for name in names] if names else [TEMPLATE_CAMERA]
