"""Reading ROS 2 parameter YAML files (`--params-file`) into dotted parameter values.

Plain YAML, no rclpy: launch files, the replay tools, the docs generator and the tests read
parameter files with the same rules as `rcl` without starting ROS.

Allowed dependencies: `m2a_perception.config.parse_yaml` (safe YAML), `m2a_perception.ros.topics`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from m2a_perception.config import parse_yaml
from m2a_perception.ros.topics import NODE_NAME


def flatten_parameters(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    """A nested `ros__parameters` mapping -> values by dotted name ('model.device': 'cpu')."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            flat.update(flatten_parameters(value, f'{name}.'))
        else:
            flat[name] = value
    return flat


def read_parameter_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Dotted parameter values for `node_name` from a ROS 2 parameter YAML.

    Sections keyed `/**`, `<node>`, `/<node>` or `/**/<node>` (any namespace) apply, in file
    order.

    Raises:
        ValueError: the file is not a parameter file.
    """
    data = parse_yaml(Path(path).read_text(), str(path))
    if not isinstance(data, dict):
        raise ValueError(f'{path} is not a ROS 2 parameter file')
    values: dict[str, Any] = {}
    for key, section in data.items():
        name = str(key).rstrip('/').rpartition('/')[2]
        if name not in ('**', node_name) or not isinstance(section, dict):
            continue
        values.update(flatten_parameters(section.get('ros__parameters', {})))
    return values
