"""The one place that turns a `ModelConfig` into a network.

Allowed dependencies: torch.
"""

from __future__ import annotations

from m2a_perception.config import ModelConfig
from m2a_perception.model.backbone import ResNet
from m2a_perception.model.instance_head import build_instance_head
from m2a_perception.model.mask2anomaly import Mask2Anomaly
from m2a_perception.model.ms_deform_attn import set_deform_sampling
from m2a_perception.model.pixel_decoder import MSDeformAttnPixelDecoder
from m2a_perception.model.transformer_decoder import MaskedTransformerDecoderGMA
from m2a_perception.model.vit import ViTBackbone


def build_model(config: ModelConfig) -> Mask2Anomaly:
    """Build Mask2Anomaly with freshly initialised weights.

    Load trained weights with `m2a_perception.weights.load_checkpoint`.
    """
    backbone = (
        ViTBackbone(config.backbone)
        if config.backbone.arch == 'dinov2_vit'
        else ResNet(config.backbone)
    )
    pixel_decoder = MSDeformAttnPixelDecoder(config.pixel_decoder, backbone.out_channels)
    predictor = MaskedTransformerDecoderGMA(
        config.transformer_decoder, config.num_classes, config.pixel_decoder.mask_dim
    )
    # Built last, so the default model (no head) draws exactly the official random numbers.
    instance_head = build_instance_head(
        config.instance_head, config.pixel_decoder.mask_dim, config.pixel_decoder.num_groups
    )
    model = Mask2Anomaly(backbone, pixel_decoder, predictor, instance_head)
    return set_deform_sampling(model, config.pixel_decoder.deform_sampling)
