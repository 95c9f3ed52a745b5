"""Writing output files safely: atomic replacement and one-sentence write failures.

`atomic_write` writes through a temporary file in the same folder, fsyncs and renames, so a
crash or a full disk never leaves a half-written file where the previous good one was.
`write_failure` turns what the writers raise on a full disk (an errno, Rust's io::Error text,
torch.save's 'unexpected pos') into one `WriteFailedError` sentence: "no space left on <mount>
while writing <file>; ...".

Allowed dependencies: standard library only (the bag tools and the player process import this).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


class WriteFailedError(OSError):
    """Writing an output file failed (most often a full disk); the previous file is intact."""

    def __str__(self) -> str:  # the sentence alone, without OSError's '[Errno 28] ' prefix
        return str(self.strerror)


# How the writers report a full disk: Python (errno), safetensors (Rust io::Error text), sqlite3
# and torch.save (PytorchStreamWriter: 'unexpected pos ...' or 'file write failed').
_NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_NO_SPACE_TEXT = (
    'No space left on device',
    'os error 28',
    'Disk quota exceeded',
    'database or disk is full',  # sqlite3
)
_TORCH_WRITE_FAILED_TEXT = ('unexpected pos', 'file write failed')
_NEARLY_FULL_BYTES = 1 << 20
UNCHANGED = 'the previous file, if any, is unchanged'


def mount_point(path: Path) -> Path:
    """The mount point holding `path` (the nearest existing ancestor's file system)."""
    current = Path(os.path.abspath(path))
    while not current.exists():
        current = current.parent
    while not os.path.ismount(current):
        current = current.parent
    return current


def write_failure(
    path: Path, error: BaseException, outcome: str = UNCHANGED
) -> WriteFailedError | None:
    """One-sentence `WriteFailedError` for an I/O failure while writing `path`; else None.

    Args:
        path: the file (or bag) being written.
        error: what the writer raised.
        outcome: what is left on disk, closing the sentence in parentheses.
    """
    text = str(error)
    no_space = (isinstance(error, OSError) and error.errno in _NO_SPACE_ERRNOS) or any(
        marker in text for marker in _NO_SPACE_TEXT
    )
    torch_write = isinstance(error, RuntimeError) and any(
        marker in text for marker in _TORCH_WRITE_FAILED_TEXT
    )
    if torch_write and not no_space:
        # torch.save hides the errno; a (nearly) full file system is by far the usual cause.
        with contextlib.suppress(OSError):
            no_space = shutil.disk_usage(mount_point(path)).free < _NEARLY_FULL_BYTES
    if no_space:
        return WriteFailedError(
            errno.ENOSPC,
            f'no space left on {mount_point(path)} while writing {path}; free some space and '
            f'retry ({outcome})',
        )
    if torch_write or isinstance(error, OSError):
        first_line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
        return WriteFailedError(
            getattr(error, 'errno', None) or errno.EIO,
            f'could not write {path}: {first_line} ({outcome})',
        )
    return None


def fsync_directory(folder: Path) -> None:
    """Make a rename in `folder` durable; a no-op where directories cannot be opened or synced."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call `write(tmp_path)`, fsync, and rename over `path`; `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(handle)
    tmp_path = Path(tmp_name)
    try:
        write(tmp_path)
        with tmp_path.open('rb') as stream:
            os.fsync(stream.fileno())
        os.replace(tmp_path, path)
        fsync_directory(path.parent)
    except BaseException as error:
        tmp_path.unlink(missing_ok=True)
        failure = write_failure(path, error)
        if failure is not None and not isinstance(error, WriteFailedError):
            raise failure from error
        raise
