"""Input checks shared by the metric modules (private).

Allowed dependencies: numpy, torch (only to accept tensors as inputs).
"""

from __future__ import annotations

import numpy as np
import torch

from m2a_perception.classes import VOID_ID


def to_numpy(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Return `array` as a numpy array (tensors are detached and copied to the CPU)."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if isinstance(array, np.ndarray):
        return array
    raise ValueError(f'{name} must be a numpy array or a torch tensor, got {type(array).__name__}')


def check_2d(array: np.ndarray, name: str) -> None:
    """Raise ValueError unless `array` is a 2-D map."""
    if array.ndim != 2:
        raise ValueError(f'{name} must be a 2-D (H, W) map, got shape {array.shape}')


def check_same_shape(first: np.ndarray, second: np.ndarray, names: tuple[str, str]) -> None:
    """Raise ValueError unless both maps have the same shape."""
    if first.shape != second.shape:
        raise ValueError(
            f'{names[0]} and {names[1]} must have the same shape, got {first.shape} and '
            f'{second.shape}'
        )


def to_anomaly_label(label: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Validate an anomaly ground truth and count its values.

    Args:
        label: (H, W) integer map, 0 = inlier, 1 = anomaly, 255 = void.

    Returns:
        The map as uint8 (H, W) and a (256,) int64 histogram of its values.

    Raises:
        ValueError: if the map is not 2-D, not integer, or holds other values.
    """
    array = to_numpy(label, 'label')
    check_2d(array, 'label')
    if array.dtype != np.uint8:
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f'label must hold integers 0/1/255, got dtype {array.dtype}')
        if array.size and (array.min() < 0 or array.max() > VOID_ID):
            raise ValueError(
                f'label values must be 0 (inlier), 1 (anomaly) or 255 (void); found values in '
                f'[{array.min()}, {array.max()}]'
            )
        array = array.astype(np.uint8)
    # One bincount both validates the values and gives the class sizes for free.
    histogram = np.bincount(array.ravel(), minlength=256)
    unexpected = np.flatnonzero(histogram[2:VOID_ID]) + 2
    if unexpected.size:
        raise ValueError(
            'label values must be 0 (inlier), 1 (anomaly) or 255 (void); found '
            f'{unexpected[:10].tolist()}{" ..." if unexpected.size > 10 else ""}'
        )
    return array, histogram


def to_score_map(score: np.ndarray | torch.Tensor, name: str = 'anomaly_score') -> np.ndarray:
    """Validate a real-valued (H, W) score map; NaN is rejected because it has no order."""
    array = to_numpy(score, name)
    check_2d(array, name)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f'{name} must be real-valued, got dtype {array.dtype}')
    if np.issubdtype(array.dtype, np.floating) and np.isnan(array).any():
        raise ValueError(f'{name} contains NaN values')
    return array
