"""Logging set-up shared by every entry point (the CLIs, the replay tools, `m2a-eval`).

A library module, so entry points outside `cli/` need not import a CLI module for it.
"""

from __future__ import annotations

import logging

# Third-party loggers that narrate every ONNX export pass at INFO.
_CHATTY_LOGGERS = ('torch.onnx', 'onnx_ir', 'onnxscript')


def setup_logging(verbose: bool = False) -> None:
    """INFO (DEBUG with `verbose`) to stderr as `LEVEL logger: message`; the ONNX exporter's
    chatty loggers only show errors unless `verbose`."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format='%(levelname)s %(name)s: %(message)s',
    )
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.ERROR)
