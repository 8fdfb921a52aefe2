"""The U-Net's stages: down blocks, the mid block and up blocks.

Per layer the order is resnet -> spatial transformer (cross-attention blocks only) -> motion module (where the
config places one). Attribute names and registration order (`attentions`, `resnets`, `motion_modules`,
`downsamplers`/`upsamplers`) are upstream's, so `named_parameters()` lists the same names in the same order.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentsync.models.unet.attention import Transformer3DModel
from latentsync.models.unet.config import UNetConfig
from latentsync.models.unet.motion import MotionModule
from latentsync.models.unet.resnet import Downsample, ResnetBlock3D, Upsample


class UNetStage(nn.Module):
    """Shared plumbing: optional gradient checkpointing per layer, as upstream checkpoints each sub-module."""

    def __init__(self) -> None:
        super().__init__()
        self.gradient_checkpointing = False

    def _run(self, layer: Callable[..., torch.Tensor], *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    def _layer(
        self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        x = self._run(self.resnets[i], x, temb, num_frames)
        if self.attentions is not None:
            x = self._run(self.attentions[i], x, context)
        if self.motion_modules is not None:
            x = self._run(self.motion_modules[i], x, num_frames)
        return x


def _transformers(cfg: UNetConfig, channels: int, n: int) -> nn.ModuleList:
    return nn.ModuleList(
        [
            Transformer3DModel(
                channels, cfg.attention_head_dim, cfg.cross_attention_dim, cfg.norm_num_groups, cfg.add_audio_layer
            )
            for _ in range(n)
        ]
    )


def _motion_modules(cfg: UNetConfig, channels: int, n: int) -> nn.ModuleList:
    return nn.ModuleList([MotionModule(channels, cfg.motion_module_kwargs) for _ in range(n)])


class DownBlock3D(UNetStage):
    """`layers_per_block` layers at one resolution, then a stride-2 conv (except at the bottom).

    Returns the output and the skip connections (every layer's output, and the downsampled one).
    """

    has_cross_attention = False

    def __init__(
        self,
        cfg: UNetConfig,
        in_channels: int,
        out_channels: int,
        add_downsample: bool,
        use_motion_module: bool,
    ) -> None:
        super().__init__()
        n = cfg.layers_per_block
        self.attentions = _transformers(cfg, out_channels, n) if self.has_cross_attention else None
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    cfg.time_embed_dim,
                    cfg.norm_num_groups,
                    cfg.norm_eps,
                )
                for i in range(n)
            ]
        )
        self.motion_modules = _motion_modules(cfg, out_channels, n) if use_motion_module else None
        self.downsamplers = nn.ModuleList([Downsample(out_channels)]) if add_downsample else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int,
        downsample: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i in range(len(self.resnets)):
            x = self._layer(i, x, temb, context, num_frames)
            skips.append(x)
        if self.downsamplers is not None and downsample:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class CrossAttnDownBlock3D(DownBlock3D):
    """`DownBlock3D` with a spatial transformer (self-attention + audio cross-attention) after each resnet."""

    has_cross_attention = True


class UNetMidBlock3DCrossAttn(UNetStage):
    """resnet -> spatial transformer -> resnet at the lowest resolution; no motion module (upstream's configs)."""

    def __init__(self, cfg: UNetConfig, channels: int) -> None:
        super().__init__()
        self.attentions = _transformers(cfg, channels, 1)
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    channels,
                    channels,
                    cfg.time_embed_dim,
                    cfg.norm_num_groups,
                    cfg.norm_eps,
                    output_scale_factor=cfg.mid_block_scale_factor,
                )
                for _ in range(2)
            ]
        )

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None, num_frames: int
    ) -> torch.Tensor:
        x = self._run(self.resnets[0], x, temb, num_frames)
        x = self._run(self.attentions[0], x, context)
        return self._run(self.resnets[1], x, temb, num_frames)


class UpBlock3D(UNetStage):
    """`layers_per_block + 1` layers, each first concatenating one skip connection, then a 2x upsampler.

    `prev_channels` is the width coming from below; the last layer's skip comes from the level above
    (`in_channels` wide), as in every diffusers-style U-Net.
    """

    has_cross_attention = False

    def __init__(
        self,
        cfg: UNetConfig,
        in_channels: int,
        prev_channels: int,
        out_channels: int,
        add_upsample: bool,
        use_motion_module: bool,
    ) -> None:
        super().__init__()
        n = cfg.layers_per_block + 1
        self.attentions = _transformers(cfg, out_channels, n) if self.has_cross_attention else None
        self.resnets = nn.ModuleList(
            [
                ResnetBlock3D(
                    (prev_channels if i == 0 else out_channels) + (in_channels if i == n - 1 else out_channels),
                    out_channels,
                    cfg.time_embed_dim,
                    cfg.norm_num_groups,
                    cfg.norm_eps,
                )
                for i in range(n)
            ]
        )
        self.motion_modules = _motion_modules(cfg, out_channels, n) if use_motion_module else None
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None

    def forward(
        self,
        x: torch.Tensor,
        skips: list[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor | None,
        num_frames: int,
        upsample_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """`skips` are this block's skip connections in the order the down path made them (used last first)."""
        for i in range(len(self.resnets)):
            x = torch.cat([x, skips[-1 - i]], dim=1)
            x = self._layer(i, x, temb, context, num_frames)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, upsample_size)
        return x


class CrossAttnUpBlock3D(UpBlock3D):
    """`UpBlock3D` with a spatial transformer after each resnet."""

    has_cross_attention = True
