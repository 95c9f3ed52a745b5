"""The console scripts of both packages, read from setup.py and pyproject.toml without running
either."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

REPO_ROOT = Path(__file__).resolve().parents[1]
SETUP_PY = REPO_ROOT / 'ros2_ws' / 'src' / 'm2a_perception' / 'setup.py'
PYPROJECT = REPO_ROOT / 'training' / 'pyproject.toml'


def setup_console_scripts() -> dict[str, str]:
    """`name -> module:function` of setup.py's console_scripts."""
    scripts: dict[str, str] = {}
    for node in ast.walk(ast.parse(SETUP_PY.read_text())):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    for item in ast.literal_eval(value):
                        name, target = (part.strip() for part in item.split('='))
                        scripts[name] = target
    return scripts


def console_scripts() -> dict[str, str]:
    """`name -> module:function` of every console script: m2a_perception and m2a_training."""
    scripts = setup_console_scripts()
    scripts.update(tomllib.loads(PYPROJECT.read_text())['project']['scripts'])
    return scripts
