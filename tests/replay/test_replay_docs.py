"""docs/replay.md names the tools as they are installed (issue 19: it said the console scripts
were missing from setup.py while they were there)."""

from __future__ import annotations

import re
from pathlib import Path

from ..entry_points import setup_console_scripts

REPLAY_DOC = Path(__file__).resolve().parents[2] / 'docs' / 'replay.md'


def test_the_console_script_table_matches_setup_py():
    text = REPLAY_DOC.read_text()
    rows = dict(
        re.findall(r'^\| `([\w-]+)`[^|]*\| `python -m ([\w.]+)` \|$', text, flags=re.MULTILINE)
    )
    assert rows == {
        'm2a-replay': 'm2a_perception.cli.replay',
        'm2a-pack-bag': 'm2a_perception.cli.pack_bag',
        'bag_player': 'm2a_perception.cli.bag_player',
        'bag_recorder': 'm2a_perception.cli.bag_recorder',
    }
    scripts = setup_console_scripts()
    assert {name: scripts[name] for name in rows} == {
        name: f'{module}:main' for name, module in rows.items()
    }
    assert 'missing from setup.py' not in text and 'not in setup.py' not in text
    # After a colcon-only install the tools are not on PATH; ros2 run finds them.
    assert 'ros2 run m2a_perception <tool>' in text
