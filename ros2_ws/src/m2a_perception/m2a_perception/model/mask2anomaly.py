"""Mask2Anomaly: ResNet backbone -> MSDeformAttn pixel decoder -> GMA transformer decoder.

Composition only; every block is built elsewhere and injected. `forward` returns a typed tuple
of tensors (`NetworkOutput`, or `TrainingOutput` in training mode) and does no post-processing,
so the same module is trained, exported and compiled.

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch
from torch import nn

from m2a_perception.model.backbone import ResNet
from m2a_perception.model.instance_head import CentroidInstanceHead
from m2a_perception.model.pixel_decoder import MSDeformAttnPixelDecoder
from m2a_perception.model.transformer_decoder import MaskedTransformerDecoderGMA
from m2a_perception.types import (
    InstanceNetworkOutput,
    InstanceTrainingOutput,
    NetworkOutput,
    TrainingOutput,
)

# Input height and width must be multiples of this (the coarsest feature stride).
SIZE_DIVISIBILITY = 32


class SemSegHead(nn.Module):
    """Holds the pixel decoder and the transformer decoder under the official names, and the
    optional instance head as `instance_head` (not registered at all when absent, so the default
    state dict has exactly the official keys)."""

    def __init__(
        self,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MaskedTransformerDecoderGMA,
        instance_head: CentroidInstanceHead | None = None,
    ) -> None:
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor
        if instance_head is not None:
            self.instance_head = instance_head

    @property
    def has_instance_head(self) -> bool:
        return 'instance_head' in self._modules


class Mask2Anomaly(nn.Module):
    """The network. Parameter names equal the official detectron2 ones (`backbone.*`,
    `sem_seg_head.pixel_decoder.*`, `sem_seg_head.predictor.*`)."""

    def __init__(
        self,
        backbone: ResNet,
        pixel_decoder: MSDeformAttnPixelDecoder,
        predictor: MaskedTransformerDecoderGMA,
        instance_head: CentroidInstanceHead | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.sem_seg_head = SemSegHead(pixel_decoder, predictor, instance_head)

    def forward(
        self, images: torch.Tensor
    ) -> NetworkOutput | TrainingOutput | InstanceNetworkOutput | InstanceTrainingOutput:
        """Run the network on normalised, padded images.

        Args:
            images: (B, 3, H, W) float32, RGB normalised with the official mean/std, zero padded
                so that H and W are multiples of 32 (see `m2a_perception.preprocess`).

        Returns:
            In eval mode a `NetworkOutput`:
                class_logits: (B, Q, K+1) float32, K known classes plus "no object" last.
                mask_logits: (B, Q, H/4, W/4) float32, per-query mask logits.
            With the instance head (`model/instance_head.py`) an `InstanceNetworkOutput` /
            `InstanceTrainingOutput` instead, with `instance_embedding` (B, 4L, H/4, W/4)
            float32 centroid embeddings as the last field.
            In training mode a `TrainingOutput`, additionally with `aux_class_logits`
            (L, B, Q, K+1) and `aux_mask_logits` (L, B, Q, H/4, W/4): the deep-supervision
            predictions of the learned queries alone and after decoder layers 1..L-1 (L decoder
            layers).
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be (B, 3, H, W), got {tuple(images.shape)}')
        height, width = int(images.shape[-2]), int(images.shape[-1])
        if height % SIZE_DIVISIBILITY or width % SIZE_DIVISIBILITY:
            raise ValueError(
                f'image size {height}x{width} is not a multiple of {SIZE_DIVISIBILITY}; '
                'pad it with m2a_perception.preprocess first'
            )
        features = self.backbone(images)
        mask_features, multi_scale_features = self.sem_seg_head.pixel_decoder(features)
        class_logits, mask_logits, aux_class, aux_mask = self.sem_seg_head.predictor(
            multi_scale_features, mask_features
        )
        if self.sem_seg_head.has_instance_head:
            embedding = self.sem_seg_head.instance_head(mask_features)
            if not self.training:
                return InstanceNetworkOutput(class_logits, mask_logits, embedding)
            return InstanceTrainingOutput(
                class_logits, mask_logits, torch.stack(aux_class), torch.stack(aux_mask), embedding
            )
        if not self.training:
            return NetworkOutput(class_logits, mask_logits)
        return TrainingOutput(
            class_logits, mask_logits, torch.stack(aux_class), torch.stack(aux_mask)
        )
