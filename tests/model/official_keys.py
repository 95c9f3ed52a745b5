"""The official Mask2Anomaly Cityscapes R50 state-dict key list, rebuilt from its documentation.

Written from the key tables of shared/reference/mask2anomaly-reference.md §8, independently of the
model code, so that tests can compare the model against it.
"""

from __future__ import annotations

NORM = ('weight', 'bias', 'running_mean', 'running_var')
GN = ('weight', 'bias')


def _backbone() -> dict[str, tuple[int, ...]]:
    keys: dict[str, tuple[int, ...]] = {'backbone.stem.conv1.weight': (64, 3, 7, 7)}
    keys.update({f'backbone.stem.conv1.norm.{n}': (64,) for n in NORM})
    in_channels = 64
    for stage, blocks, width, out in (
        (2, 3, 64, 256),
        (3, 4, 128, 512),
        (4, 6, 256, 1024),
        (5, 3, 512, 2048),
    ):
        for block in range(blocks):
            prefix = f'backbone.res{stage}.{block}'
            convs = {
                'conv1': (width, in_channels, 1, 1),
                'conv2': (width, width, 3, 3),
                'conv3': (out, width, 1, 1),
            }
            if block == 0:
                convs['shortcut'] = (out, in_channels, 1, 1)
            for name, shape in convs.items():
                keys[f'{prefix}.{name}.weight'] = shape
                keys.update({f'{prefix}.{name}.norm.{n}': (shape[0],) for n in NORM})
            in_channels = out
    return keys


def _pixel_decoder() -> dict[str, tuple[int, ...]]:
    p = 'sem_seg_head.pixel_decoder.'
    keys: dict[str, tuple[int, ...]] = {}
    for index, channels in enumerate((2048, 1024, 512)):
        keys[f'{p}input_proj.{index}.0.weight'] = (256, channels, 1, 1)
        keys[f'{p}input_proj.{index}.0.bias'] = (256,)
        keys[f'{p}input_proj.{index}.1.weight'] = (256,)
        keys[f'{p}input_proj.{index}.1.bias'] = (256,)
    keys[f'{p}transformer.level_embed'] = (3, 256)
    for layer in range(6):
        q = f'{p}transformer.encoder.layers.{layer}.'
        keys.update(
            {
                f'{q}self_attn.sampling_offsets.weight': (192, 256),
                f'{q}self_attn.sampling_offsets.bias': (192,),
                f'{q}self_attn.attention_weights.weight': (96, 256),
                f'{q}self_attn.attention_weights.bias': (96,),
                f'{q}self_attn.value_proj.weight': (256, 256),
                f'{q}self_attn.value_proj.bias': (256,),
                f'{q}self_attn.output_proj.weight': (256, 256),
                f'{q}self_attn.output_proj.bias': (256,),
                f'{q}norm1.weight': (256,),
                f'{q}norm1.bias': (256,),
                f'{q}norm2.weight': (256,),
                f'{q}norm2.bias': (256,),
                f'{q}linear1.weight': (1024, 256),
                f'{q}linear1.bias': (1024,),
                f'{q}linear2.weight': (256, 1024),
                f'{q}linear2.bias': (256,),
            }
        )
    keys[f'{p}mask_features.weight'] = (256, 256, 1, 1)
    keys[f'{p}mask_features.bias'] = (256,)
    keys[f'{p}adapter_1.weight'] = (256, 256, 1, 1)
    keys.update({f'{p}adapter_1.norm.{n}': (256,) for n in GN})
    keys[f'{p}layer_1.weight'] = (256, 256, 3, 3)
    keys.update({f'{p}layer_1.norm.{n}': (256,) for n in GN})
    return keys


def _attention(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        f'{prefix}.in_proj_weight': (768, 256),
        f'{prefix}.in_proj_bias': (768,),
        f'{prefix}.out_proj.weight': (256, 256),
        f'{prefix}.out_proj.bias': (256,),
    }


def _predictor() -> dict[str, tuple[int, ...]]:
    p = 'sem_seg_head.predictor.'
    keys: dict[str, tuple[int, ...]] = {}
    for i in range(9):
        cross = f'{p}transformer_cross_attention_layers.{i}'
        keys.update(_attention(f'{cross}.multihead_attn_foreground'))
        keys.update(_attention(f'{cross}.multihead_attn_background'))
        keys.update({f'{cross}.norm.{n}': (256,) for n in GN})
        keys[f'{cross}.fusion_layer.weight'] = (100, 200, 1, 1)
        keys[f'{cross}.fusion_layer.bias'] = (100,)
        self_attn = f'{p}transformer_self_attention_layers.{i}'
        keys.update(_attention(f'{self_attn}.self_attn'))
        keys.update({f'{self_attn}.norm.{n}': (256,) for n in GN})
        ffn = f'{p}transformer_ffn_layers.{i}'
        keys.update(
            {
                f'{ffn}.linear1.weight': (2048, 256),
                f'{ffn}.linear1.bias': (2048,),
                f'{ffn}.linear2.weight': (256, 2048),
                f'{ffn}.linear2.bias': (256,),
            }
        )
        keys.update({f'{ffn}.norm.{n}': (256,) for n in GN})
    keys.update({f'{p}decoder_norm.{n}': (256,) for n in GN})
    keys[f'{p}query_feat.weight'] = (100, 256)
    keys[f'{p}query_embed.weight'] = (100, 256)
    keys[f'{p}level_embed.weight'] = (3, 256)
    keys[f'{p}class_embed.weight'] = (20, 256)
    keys[f'{p}class_embed.bias'] = (20,)
    for layer in range(3):
        keys[f'{p}mask_embed.layers.{layer}.weight'] = (256, 256)
        keys[f'{p}mask_embed.layers.{layer}.bias'] = (256,)
    return keys


def official_model_keys() -> dict[str, tuple[int, ...]]:
    """Network keys and shapes (without the criterion buffer)."""
    return {**_backbone(), **_pixel_decoder(), **_predictor()}


def official_checkpoint_keys() -> dict[str, tuple[int, ...]]:
    """Everything in an official checkpoint's `model` dict (frozen-BN variant): 612 keys."""
    return {**official_model_keys(), 'criterion.empty_weight': (20,)}
