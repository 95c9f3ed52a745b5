"""On-disk per-frame cache of the maps the second evaluation pass needs.

A threshold that needs the whole data set (the best-F1 point of the pixel curve, an open-set
operating point) is known only after the last frame. Re-running inference would double the model
cost, and holding every score map in memory does not scale, so pass 1 writes each frame's maps
here (one `.npz` per frame) and pass 2 reads them back.

Allowed dependencies: numpy, standard library.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np


class FrameCache:
    """`.npz` files of per-frame arrays under `root/<group>/<index>.npz`.

    Args:
        root: folder of the cache (created on the first write).
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def temporary(cls, prefix: str) -> FrameCache:
        """A cache in a new folder of the system temp dir (delete it with `remove_all`)."""
        return cls(Path(tempfile.mkdtemp(prefix=prefix)))

    def path(self, group: str, index: int) -> Path:
        return self.root / group / f'{index:08d}.npz'

    def write(self, group: str, index: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.path(group, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)

    def read(self, group: str, index: int) -> dict[str, np.ndarray]:
        with np.load(self.path(group, index), allow_pickle=False) as data:
            return {key: data[key] for key in data.files}

    def remove(self, group: str) -> None:
        """Delete one group's frames."""
        shutil.rmtree(self.root / group, ignore_errors=True)

    def remove_all(self) -> None:
        """Delete the whole cache folder."""
        shutil.rmtree(self.root, ignore_errors=True)
