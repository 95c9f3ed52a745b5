"""The command-line vocabulary shared by every m2a tool: one flag, one meaning, one type.

Every entry point (`m2a_perception.cli.*`, `m2a_training.cli.*`) builds its parser from these
helpers, so a flag means the same thing in every tool:

    --checkpoint PATH     m2a .safetensors checkpoint
    --model-config NAME   model config name (config/model/<name>.yaml) or YAML path
    --backend NAME        inference backend (the runtime loader's kinds, or bench backends)
    --engine PATH         engine file from m2a-build-engine, opened through its sidecar
    --engine-cache DIR    engine cache folder (default $M2A_ENGINE_CACHE or ~/.cache/m2a/engines)
    --device DEVICE       torch device: cpu, cuda, cuda:<index>
    --precision NAME      fp32 / fp16 (/ int8 where the tool builds engines)
    --deform-sampling S   MSDeformAttn sampler: grid_sample or gather
    --size HxW            image size, height x width (comma-separated where a tool takes several)
    --cameras A,B         camera names (a list, repeatable); a count is --num-cameras
    --fps HZ              a frame rate in frames per second
    --speed X             a playback speed factor (1 = recorded timing)
    --timing MODE         replay timing mode: as-fast or recorded
    --json PATH           write a JSON summary or report to PATH (always a path, never a switch)
    --out PATH            the tool's main output (file or folder, per tool)
    --params-file PATH    node parameter YAML;  -p/--param NAME:=VALUE  parameter override
    -v/--verbose          debug logging

Old spellings (`--config`, `--cache-dir` for the engine cache, `--kind`, `--rate`, `--cameras N`
as a count) still work as hidden aliases that print a one-line deprecation warning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

DEVICE_HELP = 'torch device: cpu, cuda or cuda:<index> (default: cuda when available, else cpu)'


def parse_size(text: str) -> tuple[int, int]:
    """'512x1024' -> (512, 1024) as (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'size must look like 512x1024 (HxW), got {text!r}'
        ) from None
    if height <= 0 or width <= 0:
        raise argparse.ArgumentTypeError(f'size must be positive, got {text!r}')
    return height, width


def parse_list(text: str) -> list[str]:
    """'a,b' -> ['a', 'b'] (empty items dropped)."""
    return [item.strip() for item in text.split(',') if item.strip()]


class ListOf:
    """argparse type of a comma-separated list whose items are parsed by `element`.

    The element parser is kept (`.element`) so that the vocabulary test can check that a flag
    taking one value and the same flag taking several parse their items alike.
    """

    def __init__(self, element: Callable[[str], Any]) -> None:
        self.element = element
        self.__name__ = f'list of {getattr(element, "__name__", "value")}'

    def __call__(self, text: str) -> list[Any]:
        items = parse_list(text)
        if not items:
            raise argparse.ArgumentTypeError(f'expected a comma-separated list, got {text!r}')
        return [self.element(item) for item in items]

    def __repr__(self) -> str:
        return self.__name__


def positive_int(text: str) -> int:
    """'4' -> 4; zero or negative counts are refused."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a whole number, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    return value


def positive_float(text: str) -> float:
    """'2.5' -> 2.5; zero, negative or non-finite values are refused."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not 0.0 < value < float('inf'):
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text!r}')
    return value


def default_device() -> str:
    """'cuda' when torch sees a GPU, else 'cpu' (torch is imported only when asked)."""
    import torch

    return 'cuda' if torch.cuda.is_available() else 'cpu'


class DeprecatedAlias(argparse.Action):
    """A hidden old spelling of `primary`: warns once per use on stderr, then acts as `primary`."""

    def __init__(
        self, option_strings: Sequence[str], dest: str, primary: argparse.Action, **_: Any
    ) -> None:
        super().__init__(
            option_strings,
            dest,
            nargs=primary.nargs,
            type=primary.type,
            choices=primary.choices,
            default=argparse.SUPPRESS,
            help=argparse.SUPPRESS,
            metavar=primary.metavar,
        )
        self.primary = primary

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(
            f'{parser.prog}: warning: {option_string} is deprecated; '
            f'use {self.primary.option_strings[-1]}',
            file=sys.stderr,
        )
        self.primary(parser, namespace, values, option_string)


def add_option(
    group: Any, name: str | tuple[str, ...], *, deprecated: Sequence[str] = (), **kwargs: Any
) -> argparse.Action:
    """`group.add_argument(name, **kwargs)`, plus hidden deprecated aliases of it.

    `name` may be a tuple of spellings (e.g. ('-p', '--param')); the last is the long one.
    """
    names = (name,) if isinstance(name, str) else tuple(name)
    primary = group.add_argument(*names, **kwargs)
    for old in deprecated:
        group.add_argument(old, action=DeprecatedAlias, dest=primary.dest, primary=primary)
    return primary


# -- model ---------------------------------------------------------------------------------------


def add_checkpoint(
    group: Any, *, required: bool = False, help: str = 'm2a .safetensors checkpoint'
) -> argparse.Action:
    return add_option(
        group, '--checkpoint', type=Path, required=required, metavar='PATH', help=help
    )


def add_model_config(
    group: Any, *, default: str | None = None, help: str | None = None
) -> argparse.Action:
    """--model-config (old spelling --config)."""
    text = help or 'model config name (config/model/<name>.yaml) or YAML path'
    if default is not None:
        text += ' (default %(default)s)'
    return add_option(
        group,
        '--model-config',
        deprecated=('--config',),
        default=default,
        metavar='NAME',
        help=text,
    )


# -- backend -------------------------------------------------------------------------------------


def add_backend(
    group: Any,
    *,
    choices: Sequence[str] | None,
    default: Any,
    help: str,
    several: bool = False,
    deprecated: Sequence[str] = (),
) -> argparse.Action:
    """--backend NAME (or a comma-separated list with `several`)."""
    if several:
        return add_option(
            group, '--backend', deprecated=deprecated, type=ListOf(str), default=default, help=help
        )
    return add_option(
        group,
        '--backend',
        deprecated=deprecated,
        choices=tuple(choices or ()),
        default=default,
        help=help,
    )


def add_engine(group: Any, *, help: str | None = None) -> argparse.Action:
    return add_option(
        group,
        '--engine',
        type=Path,
        metavar='PATH',
        help=help or 'engine from m2a-build-engine for --checkpoint (opened through its sidecar)',
    )


def add_engine_cache(
    group: Any, *, help: str | None = None, deprecated: Sequence[str] = ()
) -> argparse.Action:
    return add_option(
        group,
        '--engine-cache',
        deprecated=deprecated,
        type=Path,
        metavar='DIR',
        help=help or 'engine cache folder (default $M2A_ENGINE_CACHE or ~/.cache/m2a/engines)',
    )


def add_device(
    group: Any, *, default: str | None = None, help: str = DEVICE_HELP
) -> argparse.Action:
    """--device; default: cuda when available, else cpu (or `default`)."""
    return add_option(group, '--device', default=default or default_device(), help=help)


def add_precision(
    group: Any, *, choices: Sequence[str], default: str | None, help: str | None = None
) -> argparse.Action:
    return add_option(
        group,
        '--precision',
        choices=tuple(choices),
        default=default,
        help=help or 'numeric precision of the backend',
    )


def add_allow_gate_failed(group: Any, *, help: str | None = None) -> argparse.Action:
    return add_option(
        group,
        '--allow-gate-failed',
        action='store_true',
        help=help or 'use an engine whose accuracy gate failed (explicit override)',
    )


def add_engine_policy(group: Any, *, choices: Sequence[str], default: str) -> argparse.Action:
    return add_option(
        group,
        '--policy',
        choices=tuple(choices),
        default=default,
        help='engine cache policy (default %(default)s)',
    )


def add_deform_sampling(
    group: Any, *, choices: Sequence[str], default: Any, help: str, several: bool = False
) -> argparse.Action:
    """--deform-sampling grid_sample|gather (or a comma-separated list with `several`)."""
    if several:
        return add_option(group, '--deform-sampling', type=ListOf(str), default=default, help=help)
    return add_option(
        group, '--deform-sampling', choices=tuple(choices), default=default, help=help
    )


def add_flip(group: Any, *, default: bool | None, help: str) -> argparse.Action:
    """--flip / --no-flip: average with the pass on the mirrored image."""
    return add_option(
        group, '--flip', action=argparse.BooleanOptionalAction, default=default, help=help
    )


# -- input ---------------------------------------------------------------------------------------


def add_size(
    group: Any, *, default: Any, help: str, several: bool = False, required: bool = False
) -> argparse.Action:
    """--size HxW (or HxW,HxW,... with `several`)."""
    kind = ListOf(parse_size) if several else parse_size
    return add_option(
        group, '--size', type=kind, default=default, required=required, metavar='HxW', help=help
    )


def add_cameras(group: Any, *, help: str, metavar: str = 'NAME') -> argparse.Action:
    """--cameras A,B (repeatable; the items of every use are joined): camera names."""
    return add_option(
        group, '--cameras', type=ListOf(str), action='extend', metavar=metavar, help=help
    )


def add_num_cameras(
    group: Any, *, default: Any, help: str, several: bool = False
) -> argparse.Action:
    """--num-cameras N (or N,M with `several`); old spelling --cameras."""
    kind = ListOf(positive_int) if several else positive_int
    return add_option(
        group, '--num-cameras', deprecated=('--cameras',), type=kind, default=default, help=help
    )


def add_fps(
    group: Any, *, default: float, help: str, deprecated: Sequence[str] = ()
) -> argparse.Action:
    """--fps HZ: a frame rate."""
    return add_option(
        group,
        '--fps',
        deprecated=deprecated,
        type=positive_float,
        default=default,
        metavar='HZ',
        help=help,
    )


def add_speed(
    group: Any, *, default: float = 1.0, help: str, deprecated: Sequence[str] = ()
) -> argparse.Action:
    """--speed X: a playback speed factor (1 = recorded timing)."""
    return add_option(
        group, '--speed', deprecated=deprecated, type=positive_float, default=default, help=help
    )


def add_timing(group: Any, *, help: str) -> argparse.Action:
    """--timing as-fast|recorded (old spelling --rate)."""
    return add_option(
        group,
        '--timing',
        deprecated=('--rate',),
        choices=('as-fast', 'recorded'),
        default='as-fast',
        help=help,
    )


def add_params(group: Any, *, params_file_help: str, param_help: str) -> None:
    """--params-file PATH and -p/--param NAME:=VALUE (repeatable): node parameters."""
    add_option(group, '--params-file', type=Path, metavar='PATH', help=params_file_help)
    add_option(
        group,
        ('-p', '--param'),
        action='append',
        default=[],
        metavar='NAME:=VALUE',
        help=param_help,
    )


# -- output --------------------------------------------------------------------------------------


def add_out(
    group: Any, *, help: str, required: bool = True, default: Any = None
) -> argparse.Action:
    return add_option(
        group, '--out', type=Path, required=required, default=default, metavar='PATH', help=help
    )


def add_json(group: Any, *, help: str, default: Any = None) -> argparse.Action:
    """--json PATH: always a path (the benches also take '-' for stdout)."""
    return add_option(group, '--json', type=Path, default=default, metavar='PATH', help=help)


def add_overwrite(group: Any, *, help: str = 'replace an existing output') -> argparse.Action:
    return add_option(group, '--overwrite', action='store_true', help=help)


def add_progress(group: Any) -> argparse.Action:
    return add_option(group, '--no-progress', action='store_true', help='no progress bar')


def add_threads(group: Any) -> argparse.Action:
    return add_option(group, '--threads', type=positive_int, help='torch CPU threads')


def add_verbose(group: Any) -> argparse.Action:
    return add_option(group, ('-v', '--verbose'), action='store_true', help='debug logging')


def write_json_output(path: Path, data: Any) -> str:
    """Write `data` as indented JSON to `path` atomically ('-' prints it); returns where it went
    ('stdout' or the path), for the tool's 'wrote ...' line."""
    text = json.dumps(data, indent=2) + '\n'
    if str(path) == '-':
        print(text, end='')
        return 'stdout'
    from m2a_perception.weights.checkpoint import atomic_write

    atomic_write(path, lambda tmp: tmp.write_text(text))
    return str(path)


def new_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the module docstring, printed as written."""
    return argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
