"""Official DINOv2 checkpoint layout -> the m2a ViT backbone (`backbone.vit.*`).

The released `dinov2_vit{s,b}14[_reg4]_pretrain.pth` files are bare state dicts of
`DinoVisionTransformer` built with `block_chunks=0`, so the names are flat:

    cls_token (1, 1, D)                      pos_embed (1, 37·37 + 1, D)
    register_tokens (1, R, D)  [_reg4 only]  mask_token (1, D)
    patch_embed.proj.{weight (D, 3, 14, 14), bias (D,)}
    blocks.N.norm1.{weight, bias}            blocks.N.attn.qkv.{weight (3D, D), bias (3D,)}
    blocks.N.attn.proj.{weight, bias}        blocks.N.ls1.gamma (D,)
    blocks.N.norm2.{weight, bias}            blocks.N.mlp.fc1.{weight (F, D), bias (F,)}
    blocks.N.mlp.fc2.{weight (D, F), bias}   blocks.N.ls2.gamma (D,)
    norm.{weight, bias}

(facebookresearch/dinov2, `models/vision_transformer.py`, `layers/`, `hub/backbones.py`.) Every
name is matched by an explicit pattern; `mask_token` (used only by iBOT masked-image training) is
reported as unused; anything else is an error. Shapes are checked by `convert_state_dict`
against the model the config describes.

Allowed dependencies: standard library, torch.
"""

from __future__ import annotations

import re

PREFIX = 'backbone.vit.'
# Source keys the m2a network does not use (reported as unused, then dropped).
UNUSED_KEYS = ('mask_token',)
_KNOWN = re.compile(
    r'^(cls_token|pos_embed|register_tokens|patch_embed\.proj\.(weight|bias)'
    r'|norm\.(weight|bias)'
    r'|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)'
    r'|blocks\.\d+\.ls[12]\.gamma)$'
)


def is_dinov2_layout(keys: set[str]) -> bool:
    """True for a DINOv2 ViT state dict (it has the token embeddings and the patch projection)."""
    return {'cls_token', 'pos_embed', 'patch_embed.proj.weight'} <= keys


def dinov2_name(key: str) -> str | None:
    """Official DINOv2 name -> m2a name; None for an unused key; KeyError for an unknown one."""
    if key in UNUSED_KEYS:
        return None
    if not _KNOWN.match(key):
        raise KeyError(key)
    return PREFIX + key
