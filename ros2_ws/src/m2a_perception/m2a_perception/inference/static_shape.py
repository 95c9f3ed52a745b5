"""`StaticShapeBackend`: a fixed-shape engine run on smaller pre-processed frames.

Engines have one static input shape. Smaller frames are zero padded at the bottom/right up to
it (as detectron2 pads a batch; for normalised input zero is the padding the model was trained
with, for uint8 graphs the graph itself zeroes everything outside its valid size) and the mask
logits are cropped back; a frame larger than the engine is an error that names both sizes.

Allowed dependencies: torch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

LOGGER = logging.getLogger(__name__)

# Output stride of the mask logits relative to the network input.
MASK_STRIDE = 4

Logits = tuple[torch.Tensor, torch.Tensor]


class StaticShapeBackend:
    """Runs a fixed-shape engine on smaller inputs by zero padding (bottom/right) and cropping.

    Args:
        backend: the engine backend; must accept exactly `input_shape`.
        input_shape: (B, 3, H, W) the engine was built for.
    """

    def __init__(self, backend: object, input_shape: tuple[int, int, int, int]) -> None:
        self.backend = backend
        self.input_shape = tuple(int(v) for v in input_shape)
        self.name = getattr(backend, 'name', 'engine')
        self.device = getattr(backend, 'device', torch.device('cpu'))
        self.input_dtype = getattr(backend, 'input_dtype', torch.float32)
        self._warned = False

    def __call__(self, images: torch.Tensor) -> Logits:
        batch, channels, height, width = images.shape
        engine_batch, engine_channels, engine_height, engine_width = self.input_shape
        if (batch, channels) != (engine_batch, engine_channels):
            raise ValueError(
                f'the engine takes batches of {engine_batch} x {engine_channels} channels, got '
                f'{batch} x {channels}'
            )
        if (height, width) == (engine_height, engine_width):
            return self.backend(images)  # type: ignore[operator]
        if height > engine_height or width > engine_width:
            raise ValueError(
                f'a pre-processed frame is {height}x{width} but the engine was built for '
                f'{engine_height}x{engine_width}; export it at least as large as the largest '
                'frame after resizing (see the model config preprocess.short_side / max_size)'
            )
        if not self._warned:
            LOGGER.info(
                'padding %dx%d frames to the engine shape %dx%d (zero padding, cropped after)',
                height,
                width,
                engine_height,
                engine_width,
            )
            self._warned = True
        padded = F.pad(images, (0, engine_width - width, 0, engine_height - height))
        class_logits, mask_logits = self.backend(padded)  # type: ignore[operator]
        return class_logits, mask_logits[..., : height // MASK_STRIDE, : width // MASK_STRIDE]
