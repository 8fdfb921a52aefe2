"""Motion modules: the temporal transformers stage 2 adds after each spatial layer (AnimateDiff-style).

Each attends over the F frames at one spatial position. A fixed sinusoidal table (`pos_encoder.pe`,
`[1, max_len, C]`, a persistent buffer as upstream, so it is in `state_dict`) is added to the normed input
inside each attention, before q/k/v, and not to the residual stream.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from latentsync.models.layers import FeedForward
from latentsync.models.unet.attention import TRANSFORMER_NORM_EPS, Attention
from latentsync.models.unet.config import MOTION_NORM_GROUPS, MotionModuleConfig


def sinusoidal_table(max_len: int, dim: int) -> torch.Tensor:
    """`pe[0, p, 2i] = sin(p * 10000^(-2i/dim))`, `pe[0, p, 2i+1] = cos(...)`: upstream's table, `[1, max_len, dim]`."""
    position = torch.arange(max_len, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(1, max_len, dim)
    pe[0, :, 0::2] = torch.sin(position * freq)
    pe[0, :, 1::2] = torch.cos(position * freq)
    return pe


class PositionalEncoding(nn.Module):
    """Adds the first L rows of the table to a `[N, L, C]` sequence."""

    def __init__(self, dim: int, max_len: int) -> None:
        super().__init__()
        self.register_buffer("pe", sinusoidal_table(max_len, dim), persistent=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pe[:, : x.shape[1]]


class TemporalSelfAttention(Attention):
    """Self-attention over frames (`[positions, F, C]` sequences) with the position table added to its input."""

    def __init__(self, dim: int, heads: int, dim_head: int, position_encoding_len: int | None) -> None:
        super().__init__(dim, heads, dim_head)
        self.pos_encoder = PositionalEncoding(dim, position_encoding_len) if position_encoding_len else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if self.pos_encoder is not None:
            x = self.pos_encoder(x)
        return super().forward(x)


class TemporalTransformerBlock(nn.Module):
    """For each temporal attention: LayerNorm -> attention + residual; then LayerNorm -> GEGLU FF + residual."""

    def __init__(self, dim: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        heads = cfg.num_attention_heads
        pe_len = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        self.attention_blocks = nn.ModuleList(
            [TemporalSelfAttention(dim, heads, dim // heads, pe_len) for _ in cfg.attention_block_types]
        )
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in cfg.attention_block_types])
        self.ff = FeedForward(dim)
        self.ff_norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attention, norm in zip(self.attention_blocks, self.norms):
            x = attention(norm(x)) + x
        return self.ff(self.ff_norm(x)) + x


class TemporalTransformer3DModel(nn.Module):
    """GroupNorm(32, per frame) -> Linear `proj_in` -> temporal blocks -> Linear `proj_out` -> + input.

    The frames are regrouped once, `[(B*F), C, H, W] -> [(B*H*W), F, C]`, for the whole module: every layer
    but the attention is per token, so upstream's regrouping around each attention is not needed.
    """

    def __init__(self, channels: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        inner = channels // cfg.temporal_attention_dim_div
        self.max_frames = cfg.temporal_position_encoding_max_len if cfg.temporal_position_encoding else None
        self.norm = nn.GroupNorm(MOTION_NORM_GROUPS, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Linear(channels, inner)
        self.transformer_blocks = nn.ModuleList(
            [TemporalTransformerBlock(inner, cfg) for _ in range(cfg.num_transformer_block)]
        )
        self.proj_out = nn.Linear(inner, channels)
        if cfg.zero_initialize:
            # Zero output projection: a freshly added module starts as the identity (stage 1 -> stage 2).
            nn.init.zeros_(self.proj_out.weight)
            nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        if self.max_frames is not None and num_frames > self.max_frames:
            raise ValueError(f"motion modules handle at most {self.max_frames} frames per clip, got {num_frames}")
        bf, c, h, w = x.shape
        b = bf // num_frames
        tokens = self.norm(x).reshape(b, num_frames, c, h * w).permute(0, 3, 1, 2).reshape(b * h * w, num_frames, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = self.proj_out(tokens)
        out = x.reshape(b, num_frames, c, h * w) + tokens.view(b, h * w, num_frames, c).permute(0, 2, 3, 1)
        return out.reshape(x.shape)


class MotionModule(nn.Module):
    """Upstream's `VanillaTemporalModule`: a wrapper whose only child is `temporal_transformer`."""

    def __init__(self, channels: int, cfg: MotionModuleConfig) -> None:
        super().__init__()
        self.temporal_transformer = TemporalTransformer3DModel(channels, cfg)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        return self.temporal_transformer(x, num_frames)
