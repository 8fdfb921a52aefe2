"""Attention layers: the multi-head attention core, the GEGLU feed-forward and the per-frame spatial transformer.

All attention goes through `F.scaled_dot_product_attention`, which picks a fused (flash / memory-efficient)
kernel on GPUs and keeps softmax accumulation in float32 for half-precision inputs. Module and parameter names
(`to_q`, `to_out.0`, `ff.net.0.proj`, ...) are upstream's, so official checkpoints load without renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from latentsync.models.layers import FeedForward

# Upstream's spatial and temporal transformers normalise with eps 1e-6 in their GroupNorm.
TRANSFORMER_NORM_EPS = 1e-6


class Attention(nn.Module):
    """Multi-head attention: q from `x`, k/v from `context` (or `x`), then the `to_out.0` projection.

    q/k/v have no bias, as upstream (`to_out.0` has one). Inputs are token sequences `[N, L, C]`.
    """

    def __init__(self, query_dim: int, heads: int, dim_head: int, context_dim: int | None = None) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        # A list only to keep upstream's `to_out.0` name (its index 1 is a parameter-free dropout, p=0).
        self.to_out = nn.ModuleList([nn.Linear(inner, query_dim)])

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (self._split_heads(t) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(dim_head), as upstream
        return self.to_out[0](out.transpose(1, 2).flatten(2))

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        """`[N, L, heads*d] -> [N, heads, L, d]` as a view (SDPA accepts the strides)."""
        return t.unflatten(-1, (self.heads, -1)).transpose(1, 2)


class BasicTransformerBlock(nn.Module):
    """Pre-norm self-attention, audio cross-attention and GEGLU feed-forward, each with a residual.

    `attn2`/`norm2` exist only with `add_audio_layer` (all LatentSync configs); cross-attention is skipped when
    no audio is given.
    """

    def __init__(self, dim: int, heads: int, cross_attention_dim: int, add_audio_layer: bool) -> None:
        super().__init__()
        dim_head = dim // heads
        # Registration order is upstream's, so named_parameters() matches the manifests in order too.
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head)
        self.norm2 = nn.LayerNorm(dim) if add_audio_layer else None
        self.attn2 = Attention(dim, heads, dim_head, context_dim=cross_attention_dim) if add_audio_layer else None
        self.ff = FeedForward(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        if self.attn2 is not None and context is not None:
            x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer3DModel(nn.Module):
    """Spatial transformer applied to each frame: GroupNorm -> 1x1 `proj_in` -> block -> 1x1 `proj_out` -> + input.

    Works on the folded `[(B*F), C, H, W]` layout; `context` is the audio, `[(B*F), tokens, D]` (one token set
    per frame). The 1x1 convs are applied as linear maps on the token layout, which is the same arithmetic and
    saves the transposes around them.
    """

    def __init__(
        self, channels: int, heads: int, cross_attention_dim: int, norm_num_groups: int, add_audio_layer: bool
    ) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(norm_num_groups, channels, eps=TRANSFORMER_NORM_EPS)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(channels, heads, cross_attention_dim, add_audio_layer)]
        )
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [(B*F), H*W, C]
        tokens = F.linear(tokens, self.proj_in.weight.flatten(1), self.proj_in.bias)
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = F.linear(tokens, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + tokens.transpose(1, 2).unflatten(2, (h, w))
