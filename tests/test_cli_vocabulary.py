"""One CLI vocabulary: every tool's parser is built from `m2a_perception.cli.args`, so a flag
means the same thing (destination, value type, switch or value) in every tool, the old spellings
still work with a one-line warning, and the README's tool table names only flags that exist."""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from m2a_perception.cli import args as cli_args

from .entry_points import REPO_ROOT, console_scripts

# The node takes ROS arguments only (`--ros-args ...`), no argparse parser.
ROS_ONLY = {'perception_node', 'm2a-perception-node'}


def tool_parsers() -> dict[str, argparse.ArgumentParser]:
    """Console-script name -> its parser (`build_parser()` of the script's module)."""
    parsers = {}
    for name, target in sorted(console_scripts().items()):
        if name in ROS_ONLY:
            continue
        module = importlib.import_module(target.split(':')[0])
        parsers[name] = module.build_parser()
    return parsers


PARSERS = tool_parsers()


def visible_options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Long option string -> action, for the options --help shows."""
    return {
        option: action
        for action in parser._actions
        if action.help != argparse.SUPPRESS
        for option in action.option_strings
        if option.startswith('--')
    }


def meaning(action: argparse.Action) -> tuple[str, str, bool]:
    """(destination, item type, takes a value): what must agree between tools."""
    kind = action.type if action.type is not None else str
    item = getattr(kind, 'element', kind)
    return action.dest, getattr(item, '__name__', repr(item)), action.nargs != 0


def test_every_tool_has_a_parser_with_help():
    # Every console script but the node's: sixteen tools, --help renders for each.
    assert len(PARSERS) == len(console_scripts()) - len(ROS_ONLY) >= 16
    for name, parser in PARSERS.items():
        assert parser.prog == name
        assert f'usage: {name}' in parser.format_help()


def test_a_flag_means_the_same_in_every_tool():
    seen: dict[str, dict[tuple[str, str, bool], list[str]]] = {}
    for tool, parser in PARSERS.items():
        for option, action in visible_options(parser).items():
            seen.setdefault(option, {}).setdefault(meaning(action), []).append(tool)
    disagreeing = {option: by for option, by in seen.items() if len(by) > 1}
    assert disagreeing == {}
    # The shared flags are really shared (the check above compares something).
    assert len(seen['--checkpoint'][('checkpoint', 'Path', True)]) >= 8
    assert len(seen['--json'][('json', 'Path', True)]) >= 5


def test_the_ambiguous_spellings_are_gone_from_help():
    for tool, parser in PARSERS.items():
        options = visible_options(parser)
        # --rate was a mode, a frame rate and a speed factor; --config and --cache-dir named
        # the model config and the engine cache; --kind was the backend.
        assert not {'--rate', '--config', '--cache-dir', '--kind'} & set(options), tool
        if '--json' in options:
            assert options['--json'].type is Path and options['--json'].nargs is None, tool
        if '--cameras' in options:  # names, never a count
            assert options['--cameras'].type.element is str, tool


def test_frame_rate_speed_and_timing_are_distinct_flags():
    assert visible_options(PARSERS['m2a-pack-bag'])['--fps'].type is cli_args.positive_float
    assert visible_options(PARSERS['m2a-node-bench'])['--fps'].default == 5.0
    assert visible_options(PARSERS['bag_player'])['--speed'].default == 1.0
    replay = visible_options(PARSERS['m2a-replay'])
    assert replay['--timing'].choices == ('as-fast', 'recorded')
    assert replay['--speed'].type is cli_args.positive_float


@pytest.mark.parametrize(
    ('tool', 'old', 'new', 'dest', 'value'),
    [
        ('m2a-convert-checkpoint', ['--config', 'tiny'], '--model-config', 'model_config', 'tiny'),
        ('m2a-bench', ['--config', 'tiny'], '--model-config', 'model_config', 'tiny'),
        ('m2a-bench', ['--cameras', '1,4'], '--num-cameras', 'num_cameras', [1, 4]),
        ('m2a-build-engine', ['--cache-dir', 'c'], '--engine-cache', 'engine_cache', Path('c')),
        ('m2a-doctor', ['--kind', 'onnxruntime'], '--backend', 'backend', 'onnxruntime'),
        ('m2a-pack-bag', ['--rate', '2'], '--fps', 'fps', 2.0),
        ('m2a-node-bench', ['--rate', '20'], '--fps', 'fps', 20.0),
        ('bag_player', ['--rate', '0.5'], '--speed', 'speed', 0.5),
        ('m2a-replay', ['--rate', 'recorded'], '--timing', 'timing', 'recorded'),
        ('m2a-replay', ['--report', 'r.json'], '--json', 'json', Path('r.json')),
        ('m2a-eval', ['--cache-dir', 'c'], '--score-cache', 'cache_dir', Path('c')),
    ],
)
def test_old_spellings_still_work_with_one_warning(capsys, tool, old, new, dest, value):
    required = {
        'm2a-convert-checkpoint': ['src.pth', '--out', 'o.safetensors'],
        'm2a-doctor': ['--checkpoint', 'c.safetensors'],
        'm2a-pack-bag': ['images', '--out', 'bag'],
        'bag_player': ['bag'],
        'm2a-replay': ['bag'],
        'm2a-eval': ['--dataset', 'synthetic=w', '--out', 'o'],
    }.get(tool, [])
    parser = PARSERS[tool]
    parsed = parser.parse_args([*required, *old])
    assert getattr(parsed, dest) == value
    assert capsys.readouterr().err == (f'{tool}: warning: {old[0]} is deprecated; use {new}\n')
    # The new spelling gives the same value, silently; without either, the default holds.
    again = parser.parse_args([*required, new, old[1]])
    assert getattr(again, dest) == value and capsys.readouterr().err == ''
    default = parser.parse_args(required)
    assert getattr(default, dest) == visible_options(parser)[new].default


def test_parse_size_reads_height_by_width():
    assert cli_args.parse_size('1024x2048') == (1024, 2048)
    assert cli_args.parse_size('512X1024') == (512, 1024)
    with pytest.raises(
        argparse.ArgumentTypeError, match=r"look like 512x1024 \(HxW\), got '1024'"
    ):
        cli_args.parse_size('1024')
    with pytest.raises(argparse.ArgumentTypeError, match="positive, got '0x64'"):
        cli_args.parse_size('0x64')
    assert cli_args.ListOf(cli_args.parse_size)('64x128, 32x64,') == [(64, 128), (32, 64)]


def test_size_lists_and_single_sizes_parse_alike():
    sizes = PARSERS['m2a-bench'].parse_args(['--size', '64x128,32x64']).size
    assert sizes == [(64, 128), (32, 64)]
    assert PARSERS['m2a-export'].parse_args(
        ['--checkpoint', 'c', '--out', 'o', '--size', '64x128']
    ).size == (64, 128)
    cameras = PARSERS['m2a-replay'].parse_args(['b', '--cameras', 'a,b', '--cameras', 'c=/t'])
    assert cameras.cameras == ['a', 'b', 'c=/t']
    with pytest.raises(SystemExit):
        PARSERS['m2a-bench'].parse_args(['--num-cameras', '0'])


def readme_tool_rows() -> list[tuple[str, list[str]]]:
    """(tool, flags) of each row of the README's command-line table (one tool per row)."""
    text = (REPO_ROOT / 'README.md').read_text()
    table = text.split('## Command-line tools', 1)[1].split('\n## ', 1)[0]
    rows = []
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip().strip('|').split('|')]
        if len(cells) == 3 and cells[0].startswith('`'):
            rows.append((cells[0].strip('`'), re.findall(r'`(--?[a-z][a-z0-9-]*)', cells[2])))
    return rows


def test_the_readme_tool_table_matches_the_parsers():
    rows = readme_tool_rows()
    assert sorted(tool for tool, _ in rows) == sorted(set(console_scripts()) - {'perception_node'})
    for tool, flags in rows:
        if tool in ROS_ONLY:
            assert flags == ['--ros-args']
            continue
        assert flags, f'{tool}: the README names none of its flags'
        missing = set(flags) - set(visible_options(PARSERS[tool])) - {'-p', '-v'}
        assert missing == set(), f'{tool}: {sorted(missing)} not in its --help'
