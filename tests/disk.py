"""A real, tiny file system for disk-full tests: a tmpfs of a given size (needs root).

Where mounting is not permitted (not root, no CAP_SYS_ADMIN) `small_disk` yields None and the
tests inject `OSError(ENOSPC)` at the write call instead, which is what the writers see on a
full disk.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def small_disk(folder: Path, size_bytes: int) -> Iterator[Path | None]:
    """Mount a `size_bytes` tmpfs on `folder` (created) for the block; None if not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(
            ['mount', '-t', 'tmpfs', '-o', f'size={size_bytes}', 'tmpfs', str(folder)],
            capture_output=True,
            check=False,
        )
        mounted = done.returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(['umount', '-l', str(folder)], capture_output=True, check=False)


def folder_bytes(folder: Path) -> int:
    """Bytes of all files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())
