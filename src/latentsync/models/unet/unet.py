"""`UNet3DConditionModel`: LatentSync's audio-conditioned video U-Net.

Input `[B, 13, F, h, w]` (noisy latents, mask, masked-image latents, reference latents), a timestep and the
audio tokens; output the predicted noise `[B, 4, F, h, w]`. Parameter names, shapes and order are upstream's
(checked against the reference layout manifests), so official checkpoints load as they are.

Internally the frames are folded into the batch once at the input (`[(B*F), C, h, w]`) and unfolded once at
the output; every layer works on that layout (see `resnet.py` for why this needs no per-layer copies).

`FeatureCache` is DeepCache (Ma et al. 2024): the deep part of the U-Net changes slowly from one denoising step
to the next, so on most steps only the outermost levels are recomputed and the deep features are reused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from latentsync.models.unet.blocks import (
    CrossAttnDownBlock3D,
    CrossAttnUpBlock3D,
    DownBlock3D,
    UNetMidBlock3DCrossAttn,
    UpBlock3D,
    UNetStage,
)
from latentsync.models.unet.config import UNetConfig, load_unet_yaml
from latentsync.models.unet.resnet import VideoGroupNorm

_DOWN = {"CrossAttnDownBlock3D": CrossAttnDownBlock3D, "DownBlock3D": DownBlock3D}
_UP = {"CrossAttnUpBlock3D": CrossAttnUpBlock3D, "UpBlock3D": UpBlock3D}


def timestep_features(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal timestep features `[B, dim]` in float32 (diffusers' `Timesteps`): frequencies
    `10000^(-i/(dim/2 - freq_shift))`, laid out [cos | sin] when `flip_sin_to_cos`, else [sin | cos]."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    args = timesteps[:, None].float() * torch.exp(steps * (-math.log(10000.0) / (half - freq_shift)))[None, :]
    parts = (torch.cos(args), torch.sin(args)) if flip_sin_to_cos else (torch.sin(args), torch.cos(args))
    return torch.cat(parts, dim=-1)


@dataclass
class FeatureCache:
    """Deep features kept between denoising steps of one trajectory (one per chunk and run).

    `depth` is the branch: how many resolution levels, from the outermost, a cached step recomputes (1 = only
    the full-resolution level, the cheapest and the one DeepCache uses by default for SD). On a step with
    `refresh` set the whole U-Net runs and stores the input of those outer up blocks; on the others the down
    path stops after `depth` levels and the stored features stand in for everything below.
    """

    depth: int = 1
    refresh: bool = True
    features: torch.Tensor | None = None


class TimestepEmbedding(nn.Module):
    """`linear_1` -> SiLU -> `linear_2`: the features to the width the resnets consume (4x the base width)."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class UNet3DConditionModel(nn.Module):
    """The denoising U-Net. Build with a `UNetConfig` (or an upstream `model:` dict)."""

    def __init__(self, config: UNetConfig | Mapping[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, UNetConfig) else UNetConfig.from_dict(config)
        self.config = cfg
        widths = cfg.block_out_channels
        n = len(widths)

        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(widths[0], cfg.time_embed_dim)
        # Upstream registers both lists before the mid block, which fixes the state-dict order.
        self.down_blocks = nn.ModuleList()
        self.up_blocks = nn.ModuleList()

        out_ch = widths[0]
        for i, kind in enumerate(cfg.down_block_types):
            in_ch, out_ch = out_ch, widths[i]
            use_motion_module = cfg.motion_module_at(i, decoder=False)
            self.down_blocks.append(_DOWN[kind](cfg, in_ch, out_ch, i < n - 1, use_motion_module))
        self.mid_block = UNetMidBlock3DCrossAttn(cfg, widths[-1])

        rev = widths[::-1]
        out_ch = rev[0]
        for i, kind in enumerate(cfg.up_block_types):
            prev_ch, out_ch = out_ch, rev[i]
            self.up_blocks.append(
                _UP[kind](
                    cfg,
                    in_channels=rev[min(i + 1, n - 1)],
                    prev_channels=prev_ch,
                    out_channels=out_ch,
                    add_upsample=i < n - 1,
                    use_motion_module=cfg.motion_module_at(n - 1 - i, decoder=True),
                )
            )

        self.conv_norm_out = VideoGroupNorm(cfg.norm_num_groups, widths[0], eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_channels, 3, padding=1)
        # Zero input and output convs, as upstream constructs them (a checkpoint always overwrites them).
        for conv in (self.conv_in, self.conv_out):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    @classmethod
    def from_config_file(cls, name_or_path: str | os.PathLike) -> "UNet3DConditionModel":
        """Build (randomly initialised) from a preset name (`stage2_512`, `small`, ...) or an upstream yaml."""
        return cls(UNetConfig.from_dict(load_unet_yaml(name_or_path)["model"]))

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each resnet / transformer / motion module in backward instead of storing its activations."""
        for module in self.modules():
            if isinstance(module, UNetStage):
                module.gradient_checkpointing = enabled

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | int | float,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: FeatureCache | None = None,
    ) -> torch.Tensor:
        """Predict the noise.

        sample: `[B, in_channels, F, h, w]`. timestep: 0-dim (shared) or `[B]`, int or float.
        encoder_hidden_states: audio tokens `[B, F, S, D]` or `[(B*F), S, D]` (frame f of clip b attends to its
        own S tokens either way), or None to skip the audio cross-attention. Inputs are cast to the parameter
        dtype. `cache`: reuse deep features across steps (`FeatureCache`). Returns `[B, out_channels, F, h, w]`.
        """
        if sample.ndim != 5:
            raise ValueError(f"sample must be [B, C, F, H, W], got shape {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        cfg, dtype = self.config, self.dtype
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0

        t = torch.as_tensor(timestep, device=sample.device)
        t = t.reshape(1) if t.ndim == 0 else t
        temb = timestep_features(t.expand(b), cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = self.time_embedding(temb.to(dtype))
        context = self._audio_context(encoder_hidden_states, b, f)

        levels = len(self.down_blocks)
        outer = levels if cache is None else cache.depth
        if not 1 <= outer <= levels:
            raise ValueError(f"cache depth must be 1..{levels}, got {outer}")
        reuse = cache is not None and not cache.refresh and cache.features is not None
        x = self.conv_in(sample.to(dtype).transpose(1, 2).reshape(b * f, c, h, w))
        skips = [x]
        for i, block in enumerate(self.down_blocks[:outer] if reuse else self.down_blocks):
            # A cached step's last level feeds only the skips of the up path: its downsampled output is unused.
            x, block_skips = block(x, temb, context, f, downsample=not (reuse and i == outer - 1))
            skips.extend(block_skips)
        if reuse:
            x = cache.features
        else:
            x = self.mid_block(x, temb, context, f)
        for j, block in enumerate(self.up_blocks):
            if j < levels - outer and reuse:
                continue
            if j == levels - outer and cache is not None and not reuse:
                cache.features = x
            k = len(block.resnets)
            block_skips, skips = skips[-k:], skips[:-k]
            # Upsample to the size of the next skip (2x unless an input side was not divisible by 2**levels).
            size = tuple(skips[-1].shape[-2:]) if block.upsamplers is not None else None
            x = block(x, block_skips, temb, context, f, size)
        x = self.conv_out(F.silu(self.conv_norm_out(x, f)))
        return x.unflatten(0, (b, f)).transpose(1, 2).contiguous()

    def _audio_context(self, states: torch.Tensor | None, b: int, f: int) -> torch.Tensor | None:
        """Audio tokens as `[(B*F), S, D]` in the parameter dtype."""
        if states is None:
            return None
        if states.ndim == 4 and tuple(states.shape[:2]) == (b, f):
            states = states.flatten(0, 1)
        elif not (states.ndim == 3 and states.shape[0] == b * f):
            raise ValueError(
                f"encoder_hidden_states must be [B, F, S, D] = [{b}, {f}, S, D] or [B*F, S, D] = [{b * f}, S, D], "
                f"got {tuple(states.shape)}"
            )
        return states.to(self.dtype)
