"""DINOv2 ViT backbone (model/vit.py), its config, the DINOv2 converter and checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from m2a_perception.config import BackboneConfig, ModelConfig, load_model_config
from m2a_perception.model import build_model
from m2a_perception.model.vit import (
    DinoVisionTransformer,
    ViTBackbone,
    bicubic_matrix,
)
from m2a_perception.weights.checkpoint import load_checkpoint, save_checkpoint
from m2a_perception.weights.convert import ConversionError, convert_state_dict

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def vit_config() -> ModelConfig:
    return load_model_config('tiny_dinov2')


def official_dinov2_state(
    dim: int, depth: int, ffn: int, grid: int, patch: int = 14, registers: int = 0, seed: int = 0
) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of facebookresearch/dinov2's released ViTs
    (`DinoVisionTransformer`, block_chunks=0), written out independently of model/vit.py."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * 0.1

    state = {
        'cls_token': rand(1, 1, dim),
        'pos_embed': rand(1, grid * grid + 1, dim),
        'mask_token': rand(1, dim),
        'patch_embed.proj.weight': rand(dim, 3, patch, patch),
        'patch_embed.proj.bias': rand(dim),
        'norm.weight': 1 + rand(dim),
        'norm.bias': rand(dim),
    }
    if registers:
        state['register_tokens'] = rand(1, registers, dim)
    for n in range(depth):
        block = f'blocks.{n}.'
        state |= {
            block + 'norm1.weight': 1 + rand(dim),
            block + 'norm1.bias': rand(dim),
            block + 'attn.qkv.weight': rand(3 * dim, dim),
            block + 'attn.qkv.bias': rand(3 * dim),
            block + 'attn.proj.weight': rand(dim, dim),
            block + 'attn.proj.bias': rand(dim),
            block + 'ls1.gamma': rand(dim),
            block + 'norm2.weight': 1 + rand(dim),
            block + 'norm2.bias': rand(dim),
            block + 'mlp.fc1.weight': rand(ffn, dim),
            block + 'mlp.fc1.bias': rand(ffn),
            block + 'mlp.fc2.weight': rand(dim, ffn),
            block + 'mlp.fc2.bias': rand(dim),
            block + 'ls2.gamma': rand(dim),
        }
    return state


@pytest.mark.parametrize(('source', 'target'), [(4, 16), (37, 73), (37, 20), (5, 5)])
def test_bicubic_matrix_equals_torch_bicubic_with_the_dinov2_offset(source, target):
    scale = (target + 0.1) / source
    values = torch.randn(1, 1, source, 3, generator=torch.Generator().manual_seed(source))
    reference = F.interpolate(
        values, scale_factor=(scale, 1.0), mode='bicubic', align_corners=False
    )
    assert reference.shape[2] == target
    ours = torch.einsum('ts,bcsw->bctw', bicubic_matrix(source, target, scale), values)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_pos_embed_resize_equals_dinov2_interpolate(vit_config):
    torch.manual_seed(0)
    vit = DinoVisionTransformer(vit_config.backbone)
    grid, dim = vit.pretrain_grid, vit_config.backbone.vit_embed_dim
    square = vit.pos_embed[:, 1:].reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    # DINOv2's interpolate_pos_encoding: bicubic, scale_factor (h0 + 0.1) / M, no antialias.
    reference = F.interpolate(
        square, scale_factor=((6 + 0.1) / grid, (10 + 0.1) / grid), mode='bicubic'
    )
    reference = reference.permute(0, 2, 3, 1).reshape(1, 60, dim)
    torch.testing.assert_close(vit.patch_pos_embed(6, 10), reference, rtol=0, atol=1e-5)
    assert torch.equal(vit.patch_pos_embed(grid, grid), vit.pos_embed[:, 1:])


def test_vit_with_zero_layer_scale_is_norm_of_patch_plus_position(vit_config):
    """Known answer: with every LayerScale gamma 0 the blocks are identities, so the output is
    LayerNorm(patch projection + pos_embed) of the patch tokens (cls and registers dropped)."""
    config = dataclasses.replace(vit_config.backbone, vit_num_register_tokens=2)
    torch.manual_seed(0)
    vit = DinoVisionTransformer(config).eval()
    with torch.no_grad():
        for name, parameter in vit.named_parameters():
            if name.endswith('gamma'):
                parameter.zero_()
    images = torch.randn(1, 3, 56, 56)  # the 4x4 pretraining grid: no interpolation
    patches = F.conv2d(images, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=14)
    tokens = patches.flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:]
    expected = F.layer_norm(tokens, (32,), vit.norm.weight, vit.norm.bias, eps=1e-6)
    with torch.no_grad():
        out = vit(images)
    assert out.shape == (1, 32, 4, 4)
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), expected, rtol=0, atol=1e-5)


def test_backbone_pyramid_shapes_and_freezing(vit_config):
    torch.manual_seed(0)
    backbone = ViTBackbone(vit_config.backbone).eval()
    assert all(not p.requires_grad for p in backbone.vit.parameters())
    assert all(p.requires_grad for p in backbone.pyramid.parameters())
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 224, 448))
        # A 32- but not 14-divisible input is padded to whole patches, then resized.
        odd = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        'res2': (2, 8, 56, 112),
        'res3': (2, 16, 28, 56),
        'res4': (2, 32, 14, 28),
        'res5': (2, 32, 7, 14),
    }
    assert backbone.out_channels == {'res2': 8, 'res3': 16, 'res4': 32, 'res5': 32}
    assert tuple(odd['res2'].shape) == (1, 8, 16, 24) and tuple(odd['res5'].shape[-2:]) == (2, 3)


def test_vit_model_forward_shapes(vit_config):
    torch.manual_seed(0)
    model = build_model(vit_config).eval()
    with torch.no_grad():
        class_logits, mask_logits = model(torch.randn(1, 3, 224, 224))
    assert class_logits.shape == (1, 12, 20) and mask_logits.shape == (1, 12, 56, 56)
    trainable = {n.split('.')[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable == {'vit'}


def test_config_validation(vit_config):
    assert load_model_config('cityscapes_r50_gma').backbone.arch == 'resnet'
    assert ModelConfig.from_dict(vit_config.to_dict()) == vit_config
    for name, dim in (
        ('cityscapes_dinov2_vits14_gma', 384),
        ('cityscapes_dinov2_vitb14_gma', 768),
    ):
        config = load_model_config(name)
        assert config.backbone.vit_embed_dim == dim and config.preprocess.size_divisibility == 224
    with pytest.raises(
        ValueError, match=r"backbone.arch must be one of \['resnet', 'dinov2_vit'\]"
    ):
        BackboneConfig(arch='swin')
    with pytest.raises(ValueError, match='vit_embed_dim = 100000 is outside'):
        BackboneConfig(vit_embed_dim=100_000)
    data = vit_config.to_dict()
    data['preprocess']['size_divisibility'] = 32
    with pytest.raises(ValueError, match='must be a multiple of 224'):
        ModelConfig.from_dict(data)


def test_dinov2_checkpoint_converts_with_every_key_mapped(vit_config):
    backbone = vit_config.backbone
    source = official_dinov2_state(32, 2, 64, 4)
    torch.manual_seed(0)
    model = build_model(vit_config)
    converted, report = convert_state_dict(source, model.state_dict())
    assert report.source_format == 'dinov2' and report.unused == ['mask_token']
    vit_keys = {k for k in model.state_dict() if k.startswith('backbone.vit.')}
    assert {target for _, target in report.renamed} == vit_keys
    assert len(vit_keys) == len(source) - 1 == 7 + 14 * backbone.vit_depth - 1
    for key, tensor in source.items():
        if key != 'mask_token':
            assert torch.equal(converted['backbone.vit.' + key], tensor)
    assert all(not k.startswith('backbone.vit.') for k in report.initialised)
    assert any(k.startswith('backbone.pyramid.') for k in report.initialised)
    model.load_state_dict(converted, strict=True)


def test_dinov2_converter_with_registers_and_its_errors(vit_config):
    config = dataclasses.replace(
        vit_config,
        backbone=dataclasses.replace(vit_config.backbone, vit_num_register_tokens=4),
    )
    state = build_model(config).state_dict()
    source = official_dinov2_state(32, 2, 64, 4, registers=4)
    converted, _ = convert_state_dict(source, state)
    assert torch.equal(converted['backbone.vit.register_tokens'], source['register_tokens'])
    with pytest.raises(ConversionError, match=r'1 expected keys missing: backbone\.vit\.register'):
        convert_state_dict(official_dinov2_state(32, 2, 64, 4), state)
    wrong_grid = official_dinov2_state(32, 2, 64, 37, registers=4)
    with pytest.raises(ConversionError, match=r'pos_embed: source \(1, 1370, 32\) vs model'):
        convert_state_dict(wrong_grid, state)
    deeper = official_dinov2_state(32, 3, 64, 4, registers=4)
    with pytest.raises(ConversionError, match=r'14 unexpected keys: backbone\.vit\.blocks\.2'):
        convert_state_dict(deeper, state)
    stray = source | {'head.weight': torch.zeros(2)}
    with pytest.raises(ConversionError, match=r"'head\.weight' is not a DINOv2 ViT tensor"):
        convert_state_dict(stray, state)


def test_vit_checkpoint_loads_from_its_own_config(vit_config, tmp_path):
    torch.manual_seed(0)
    model = build_model(vit_config).eval()
    path = save_checkpoint(tmp_path / 'vit.safetensors', model.state_dict(), vit_config)
    loaded, config = load_checkpoint(path)
    assert config == vit_config and isinstance(loaded.backbone, ViTBackbone)
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        for out, ref in zip(loaded(images), model(images), strict=True):
            assert torch.equal(out, ref)


def test_upsample2x_equals_conv_transpose():
    from m2a_perception.model.vit import Upsample2x

    torch.manual_seed(0)
    layer = Upsample2x(6, 4)
    x = torch.randn(2, 6, 3, 5)
    expected = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-6)
    assert set(layer.state_dict()) == {'weight', 'bias'}
    assert layer.weight.shape == torch.nn.ConvTranspose2d(6, 4, 2, stride=2).weight.shape
