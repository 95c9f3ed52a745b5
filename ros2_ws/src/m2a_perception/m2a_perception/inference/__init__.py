"""Inference backends: objects that map network input to a `NetworkOutput`.

Load them through `m2a_perception.runtime.loader` (the one loader); this package holds the
backend classes. onnxruntime and TensorRT are imported lazily inside their own backend modules.

Allowed dependencies: torch; onnxruntime and TensorRT only inside their own backend modules,
imported lazily.
"""

from m2a_perception.inference.backend import Backend
from m2a_perception.inference.static_shape import StaticShapeBackend
from m2a_perception.inference.torch_backend import TorchBackend

__all__ = ['Backend', 'StaticShapeBackend', 'TorchBackend']
