"""Convolutional pieces of the U-Net: resnet blocks and the 2x down/up-sampling layers.

Layout: the whole U-Net runs on `[(B*F), C, H, W]`, the frames of each clip folded into the batch, so every
convolution is a plain 2-D conv over all frames at once (upstream's "inflated" convs do the same after a
`b c f h w -> (b f) c h w` copy, twice per conv). The one place where frames are not independent outside the
motion modules is upstream's resnet GroupNorm: it is an `nn.GroupNorm` applied to the 5-D `[B, C, F, H, W]`
tensor, so its statistics span all frames of a clip. `VideoGroupNorm` reproduces that on the folded layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VideoGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics are taken over (channels of the group, frames, H, W) of each clip.

    Parameters (`weight`, `bias`) are those of `nn.GroupNorm`, so upstream checkpoints load unchanged.
    Statistics are accumulated in float32 straight from the input (no float32 copy of the activation), and the
    input is centred on its mean rounded to the input dtype before scaling. That keeps half precision as
    accurate as the native GroupNorm kernel, which works in float32 internally: fp16 statistics would overflow
    and a bf16 shift of `-mean * scale` would lose the cancellation when |mean| >> std.
    """

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        bf, c = x.shape[:2]
        b, g = bf // num_frames, self.num_groups
        xg = x.reshape(b, num_frames, g, -1)
        dims, acc = (1, 3), torch.promote_types(x.dtype, torch.float32)
        mean = xg.mean(dim=dims, keepdim=True, dtype=acc)  # [b, 1, g, 1]
        mean_x = mean.to(x.dtype)
        centred = xg - mean_x
        # E[(x - m')^2] = var + (m - m')^2 for the rounded mean m' (a two-pass variance: no cancellation).
        sq = torch.linalg.vector_norm(centred, dim=dims, keepdim=True, dtype=acc).square() / (
            num_frames * xg.shape[3]
        )
        offset = mean - mean_x.to(acc)
        rstd = torch.rsqrt((sq - offset.square()).clamp_min(0) + self.eps)

        def per_channel(t: torch.Tensor) -> torch.Tensor:  # [b, 1, g, 1] -> [b, 1, c, 1]
            return t.expand(b, 1, g, c // g).reshape(b, 1, c, 1)

        scale = per_channel(rstd) * self.weight.view(1, 1, c, 1)
        shift = self.bias.view(1, 1, c, 1) - per_channel(offset) * scale
        out = torch.addcmul(shift.to(x.dtype), centred.view(b, num_frames, c, -1), scale.to(x.dtype))
        return out.view(x.shape)


class ResnetBlock3D(nn.Module):
    """GroupNorm -> SiLU -> 3x3 conv -> + time embedding -> GroupNorm -> SiLU -> 3x3 conv, plus the skip.

    The time embedding is per clip, so it is added to every frame of the clip through a broadcast view
    rather than repeated per frame.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        eps: float,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        self.output_scale_factor = output_scale_factor
        self.norm1 = VideoGroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = VideoGroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, num_frames)))
        t = self.time_emb_proj(F.silu(temb))
        # In place on the fresh conv output (conv does not keep its output for backward); unflatten is a view
        # in any memory format.
        h.unflatten(0, (t.shape[0], num_frames)).add_(t[:, None, :, None, None])
        h = self.conv2(F.silu(self.norm2(h, num_frames)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        out = skip + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample(nn.Module):
    """3x3 conv, stride 2, padding 1, per frame (frames are never subsampled)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 in H and W (not F), then a 3x3 conv.

    `size` is the spatial size of the skip connection the result is concatenated with; it differs from
    2x only when an input side was not divisible by the total downsampling factor.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        else:
            x = F.interpolate(x, size=size, mode="nearest")
        return self.conv(x)
