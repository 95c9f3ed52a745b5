"""`StaticShapeBackend`: a fixed-shape engine run on smaller pre-processed frames.

Engines have one static input shape. Smaller frames are zero padded at the bottom/right up to
it (as detectron2 pads a batch; for normalised input zero is the padding the model was trained
with, for uint8 graphs the graph itself zeroes everything outside its valid size) and the mask
logits are cropped back; a frame larger than the engine is an error that names both sizes.

Allowed dependencies: torch, `m2a_perception.preprocess`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from m2a_perception.preprocess import pad_uint8
from m2a_perception.types import InstanceNetworkOutput, NetworkOutput, instance_embedding_of

LOGGER = logging.getLogger(__name__)

# Output stride of the mask logits relative to the network input.
MASK_STRIDE = 4


class StaticShapeBackend:
    """Runs a fixed-shape engine on smaller inputs by zero padding (bottom/right) and cropping.

    Args:
        backend: the engine backend; must accept exactly `input_shape`.
        input_shape: (B, 3, H, W) the engine was built for.
        uint8_fill: padding colour of uint8 input (the model's mean colour).
    """

    def __init__(
        self,
        backend: object,
        input_shape: tuple[int, int, int, int],
        uint8_fill: tuple[int, int, int] = (0, 0, 0),
    ) -> None:
        self.backend = backend
        self.uint8_fill = uint8_fill
        self.input_shape = tuple(int(v) for v in input_shape)
        self.name = getattr(backend, 'name', 'engine')
        self.device = getattr(backend, 'device', torch.device('cpu'))
        self.input_dtype = getattr(backend, 'input_dtype', torch.float32)
        self._warned = False

    def __call__(self, images: torch.Tensor) -> NetworkOutput | InstanceNetworkOutput:
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
        if images.dtype == torch.uint8:  # the mean colour, as `preprocess.pad_uint8` pads
            padded = pad_uint8(images, self.uint8_fill, engine_height, engine_width)
        else:
            padded = F.pad(images, (0, engine_width - width, 0, engine_height - height))
        outputs = self.backend(padded)  # type: ignore[operator]
        masks = outputs.mask_logits[..., : height // MASK_STRIDE, : width // MASK_STRIDE]
        embedding = instance_embedding_of(outputs)
        if embedding is not None:
            return InstanceNetworkOutput(
                outputs.class_logits,
                masks,
                embedding[..., : height // MASK_STRIDE, : width // MASK_STRIDE],
            )
        return NetworkOutput(outputs.class_logits, masks)
