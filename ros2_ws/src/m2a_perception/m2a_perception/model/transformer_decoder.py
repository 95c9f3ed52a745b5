"""Transformer decoder with global masked attention (Mask2Anomaly `..._GMA`).

Every layer: global masked cross-attention -> self-attention -> FFN, each post-norm. Global masked
attention runs two independent attention modules on the same inputs: a *foreground* one that may
only look inside the query's current mask and a *background* one that may only look outside it;
their outputs are summed. Masks come from the previous prediction, resized to the level the layer
attends to (1/32, 1/16, 1/8 in round-robin). Parameter names match the official checkpoints
(`sem_seg_head.predictor.*`).

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import TransformerDecoderConfig
from m2a_perception.model.attention import MultiheadAttention, unblock_full_rows
from m2a_perception.model.kan import KAN
from m2a_perception.model.position_encoding import sine_position_encoding


class GlobalCrossAttentionLayer(nn.Module):
    """Foreground + background masked cross-attention, summed, then residual and LayerNorm."""

    def __init__(self, d_model: int, num_heads: int, num_queries: int) -> None:
        super().__init__()
        self.multihead_attn_foreground = MultiheadAttention(d_model, num_heads)
        self.multihead_attn_background = MultiheadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)
        # Present in the official module and its checkpoints but never used in forward; kept so
        # that the state-dict key set and the parameter count (46.56 M) match exactly.
        self.fusion_layer = nn.Conv2d(2 * num_queries, num_queries, kernel_size=1)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        foreground_blocked: torch.Tensor,
        background_blocked: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
    ) -> torch.Tensor:
        """tgt, query_pos: (B, Q, C); memory, pos: (B, HW, C); *_blocked: (B, heads, Q, HW)."""
        query = tgt + query_pos
        key = memory + pos
        attended = self.multihead_attn_foreground(
            query, key, memory, foreground_blocked
        ) + self.multihead_attn_background(query, key, memory, background_blocked)
        return self.norm(tgt + attended)


class SelfAttentionLayer(nn.Module):
    """Query self-attention (q = k = tgt + query_pos, v = tgt), residual and LayerNorm."""

    def __init__(self, d_model: int, num_heads: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, num_heads)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        query = tgt + query_pos
        return self.norm(tgt + self.self_attn(query, query, tgt))


class FFNLayer(nn.Module):
    """Linear -> ReLU -> Linear, residual and LayerNorm."""

    def __init__(self, d_model: int, ffn_dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, d_model)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (the mask-embedding head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            nn.Linear(n, k) for n, k in zip(dims, [*dims[1:], out_dim], strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = F.relu(x)
        return x


def build_mask_embed(config: TransformerDecoderConfig, d_model: int, mask_dim: int) -> nn.Module:
    """The 3-layer mask-embedding head: the official MLP or, with `mask_embed: kan`, KAN layers."""
    if config.mask_embed == 'kan':
        return KAN(
            d_model,
            d_model,
            mask_dim,
            3,
            grid_size=config.kan_grid_size,
            spline_order=config.kan_spline_order,
            grid_range=config.kan_grid_range,
        )
    return MLP(d_model, d_model, mask_dim, 3)


class MaskedTransformerDecoderGMA(nn.Module):
    """Predicts class and mask logits for a set of learned queries.

    There are L+1 predictions: one from the learned queries alone and one after every layer. The
    last is the output; the first L are the deep-supervision ("auxiliary") predictions, which are
    kept only in training mode (at 1024×2048 they would cost 0.5 GB in inference).
    """

    def __init__(self, config: TransformerDecoderConfig, num_classes: int, mask_dim: int) -> None:
        super().__init__()
        d_model = config.hidden_dim
        self.num_heads = config.num_heads
        self.num_layers = config.num_layers
        self.num_feature_levels = config.num_feature_levels
        self.num_pos_feats = d_model // 2
        self.transformer_cross_attention_layers = nn.ModuleList(
            GlobalCrossAttentionLayer(d_model, config.num_heads, config.num_queries)
            for _ in range(config.num_layers)
        )
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(d_model, config.num_heads) for _ in range(config.num_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(d_model, config.ffn_dim) for _ in range(config.num_layers)
        )
        for layers in (
            self.transformer_cross_attention_layers,
            self.transformer_self_attention_layers,
            self.transformer_ffn_layers,
        ):
            for parameter in layers.parameters():
                if parameter.dim() > 1:
                    nn.init.xavier_uniform_(parameter)
        self.decoder_norm = nn.LayerNorm(d_model)
        self.query_feat = nn.Embedding(config.num_queries, d_model)
        self.query_embed = nn.Embedding(config.num_queries, d_model)
        self.level_embed = nn.Embedding(config.num_feature_levels, d_model)
        self.class_embed = nn.Linear(d_model, num_classes + 1)
        self.mask_embed = build_mask_embed(config, d_model, mask_dim)

    def prediction_heads(
        self, output: torch.Tensor, mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Q, C) queries, (B, C, h, w) features -> (B, Q, K+1) classes, (B, Q, h, w) masks."""
        decoded = self.decoder_norm(output)
        class_logits = self.class_embed(decoded)
        mask_embed = self.mask_embed(decoded)
        mask_logits = torch.einsum('bqc,bchw->bqhw', mask_embed, mask_features)
        return class_logits, mask_logits

    def attention_masks(
        self, mask_logits: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Foreground / background blocking masks, (B, heads, Q, h·w) bool, for the next layer.

        As coded officially: resize the logits bilinearly, threshold the sigmoid at 0.5 strictly
        on both sides (p = 0.5 is visible to both branches), detach, then unblock full rows.
        """
        resized = F.interpolate(mask_logits, size=size, mode='bilinear', align_corners=False)
        probability = resized.sigmoid().flatten(2).detach()[:, None]  # (B, 1, Q, hw)
        foreground = unblock_full_rows(probability < 0.5)
        background = unblock_full_rows(probability > 0.5)
        shape = (-1, self.num_heads, -1, -1)
        return foreground.expand(shape), background.expand(shape)

    def forward(
        self, multi_scale_features: list[torch.Tensor], mask_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Args:
            multi_scale_features: [(B, C, H/32, W/32), (B, C, H/16, W/16), (B, C, H/8, W/8)].
            mask_features: (B, C, H/4, W/4).

        Returns:
            class_logits (B, Q, K+1) and mask_logits (B, Q, H/4, W/4) of the last layer, then
            the auxiliary class and mask logits (L of each, same shapes; empty in eval mode).
        """
        batch = mask_features.shape[0]
        memories, positions, sizes = [], [], []
        for level, feature in enumerate(multi_scale_features):
            height, width = int(feature.shape[-2]), int(feature.shape[-1])
            sizes.append((height, width))
            pos = sine_position_encoding(
                height, width, self.num_pos_feats, device=feature.device, dtype=feature.dtype
            )
            positions.append(pos.flatten(1).transpose(0, 1)[None].expand(batch, -1, -1))
            memories.append(
                feature.flatten(2).transpose(1, 2) + self.level_embed.weight[level][None, None]
            )
        query_pos = self.query_embed.weight[None].expand(batch, -1, -1)
        output = self.query_feat.weight[None].expand(batch, -1, -1)

        class_logits, mask_logits = self.prediction_heads(output, mask_features)
        aux_class_logits: list[torch.Tensor] = []
        aux_mask_logits: list[torch.Tensor] = []
        foreground, background = self.attention_masks(mask_logits, sizes[0])
        for index in range(self.num_layers):
            level = index % self.num_feature_levels
            output = self.transformer_cross_attention_layers[index](
                output, memories[level], foreground, background, positions[level], query_pos
            )
            output = self.transformer_self_attention_layers[index](output, query_pos)
            output = self.transformer_ffn_layers[index](output)
            if self.training:
                aux_class_logits.append(class_logits)
                aux_mask_logits.append(mask_logits)
            class_logits, mask_logits = self.prediction_heads(output, mask_features)
            if index + 1 < self.num_layers:
                next_size = sizes[(index + 1) % self.num_feature_levels]
                foreground, background = self.attention_masks(mask_logits, next_size)
        return class_logits, mask_logits, aux_class_logits, aux_mask_logits
