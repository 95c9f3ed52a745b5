"""Weights: our safetensors checkpoint format and converters from official checkpoints."""

from m2a_perception.weights.checkpoint import (
    CheckpointError,
    WriteFailedError,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    'CheckpointError',
    'WriteFailedError',
    'load_checkpoint',
    'read_checkpoint',
    'save_checkpoint',
]
