"""Mask2Anomaly network in plain PyTorch (no detectron2, no torchvision)."""

from m2a_perception.model.build import build_model
from m2a_perception.model.mask2anomaly import SIZE_DIVISIBILITY, Mask2Anomaly

__all__ = ['SIZE_DIVISIBILITY', 'Mask2Anomaly', 'build_model']
