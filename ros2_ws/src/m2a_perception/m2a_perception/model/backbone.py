"""ResNet backbone in detectron2 layout (`stem`, `res2`..`res5`) with frozen BatchNorm.

Parameter names match detectron2's `build_resnet_backbone` so that official Mask2Anomaly
checkpoints load without renaming (`backbone.res2.0.conv1.norm.running_mean`, ...). Strides sit on
the 3×3 convolutions (STRIDE_IN_1X1 False), as in torchvision.

Allowed dependencies: torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from m2a_perception.config import BackboneConfig


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters.

    Unlike detectron2, `weight` and `bias` are `nn.Parameter`s with `requires_grad=False` rather
    than buffers, so that parameter counts match the official model's 23.5 M frozen backbone
    parameters. The state-dict keys are the same either way.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features), requires_grad=False)
        self.bias = nn.Parameter(torch.zeros(num_features), requires_grad=False)
        self.register_buffer('running_mean', torch.zeros(num_features))
        self.register_buffer('running_var', torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        # Plain BatchNorm checkpoints carry a step counter that frozen statistics do not need.
        state_dict.pop(prefix + 'num_batches_tracked', None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ConvNorm(nn.Conv2d):
    """Bias-free convolution followed by frozen BatchNorm, stored as `<conv>.norm` (detectron2)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=False,
        )
        self.norm = FrozenBatchNorm2d(out_channels)
        nn.init.kaiming_normal_(self.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(super().forward(x))


class BasicStem(nn.Module):
    """7×7/2 convolution, ReLU and 3×3/2 max-pool: (B, 3, H, W) -> (B, C, H/4, W/4)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = ConvNorm(3, out_channels, kernel_size=7, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1×1 -> 3×3 (strided) -> 1×1 residual block with a projection shortcut when shapes change."""

    def __init__(
        self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int
    ) -> None:
        super().__init__()
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = ConvNorm(in_channels, out_channels, kernel_size=1, stride=stride)
        self.conv1 = ConvNorm(in_channels, bottleneck_channels, kernel_size=1)
        self.conv2 = ConvNorm(
            bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride
        )
        self.conv3 = ConvNorm(bottleneck_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet trunk returning res2..res5 (strides 4, 8, 16, 32).

    Input: (B, 3, H, W) float32, normalised RGB. Output: dict `res2`..`res5` of
    (B, C_k, H/s_k, W/s_k) with C = (256, 512, 1024, 2048) for ResNet-50.
    """

    stage_names = ('res2', 'res3', 'res4', 'res5')

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.stem = BasicStem(config.stem_channels)
        in_channels = config.stem_channels
        out_channels = config.res2_out_channels
        bottleneck = config.bottleneck_channels
        self.out_channels: dict[str, int] = {}
        for index, (name, num_blocks) in enumerate(
            zip(self.stage_names, config.blocks_per_stage, strict=True)
        ):
            first_stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(
                    BottleneckBlock(
                        in_channels,
                        out_channels,
                        bottleneck,
                        stride=first_stride if block_index == 0 else 1,
                    )
                )
                in_channels = out_channels
            self.add_module(name, nn.Sequential(*blocks))
            self.out_channels[name] = out_channels
            out_channels *= 2
            bottleneck *= 2
        self._freeze(config.freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        # freeze_at counts stages: 1 = stem, 2 = stem + res2, ..., 5 = everything (official).
        frozen = [self.stem, *(getattr(self, n) for n in self.stage_names)][:freeze_at]
        for module in frozen:
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features[name] = x
        return features
