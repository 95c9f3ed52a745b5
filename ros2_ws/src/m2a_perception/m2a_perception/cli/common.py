"""Argument helpers shared by the command-line tools."""

from __future__ import annotations

import argparse
import logging


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


# Third-party loggers that narrate every ONNX export pass at INFO.
_CHATTY_LOGGERS = ('torch.onnx', 'onnx_ir', 'onnxscript')


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s',
    )
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
