"""Inference backends: objects that map network input to `(class_logits, mask_logits)`.

Allowed dependencies: torch; onnxruntime and TensorRT only inside their own backend modules,
imported lazily.
"""

from m2a_perception.inference.backend import Backend
from m2a_perception.inference.torch_backend import TorchBackend

__all__ = ['Backend', 'TorchBackend']
