"""TREPA: temporal representation alignment with a frozen VideoMAE-v2 video transformer.

Stage-2 training adds 10 x TREPA: the decoded one-step prediction and the target clip are both embedded by
VideoMAE-v2 ViT-g/14 (fine-tuned on Something-Something v2, `vit_g_hybrid_pt_1200e_ssv2_ft.pth`), and the
loss is the MSE between the L2-normalised clip embeddings. Because the embedding is computed from space-time
tubelets, it penalises flicker and temporally inconsistent mouths that per-frame losses cannot see.

The network here is config-driven (`ViTDims`; `ViTDims()` is ViT-g) and its parameter names are the official
checkpoint's, so that file loads key for key; only the 174-way SSv2 classification `head` is dropped, since TREPA
uses the pooled features before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentsync.errors import CheckpointError
from latentsync.models.checkpoint import check_fits

LN_EPS = 1e-6
IGNORED_PREFIXES = ("head.",)


@dataclass(frozen=True)
class ViTDims:
    """Shape of the video ViT. Defaults: VideoMAE-v2 ViT-g/14 at 16 frames x 224 px (hidden 6144 = 1408 * 48/11)."""

    img_size: int = 224
    patch_size: int = 14
    tubelet_size: int = 2
    num_frames: int = 16
    embed_dim: int = 1408
    depth: int = 40
    num_heads: int = 16
    mlp_ratio: float = 48 / 11

    @property
    def mlp_hidden(self) -> int:
        # VideoMAE-v2 truncates dim * ratio; for ViT-g the float product is exactly 6144.0.
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def num_patches(self) -> int:
        return (self.num_frames // self.tubelet_size) * (self.img_size // self.patch_size) ** 2


class Attention(nn.Module):
    """Multi-head self-attention with VideoMAE-v2's biases: a bias-free fused `qkv` plus separate q and v biases
    (k gets none, which changes nothing after the softmax and is why the checkpoint has no k bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        bias = torch.cat([self.q_bias, torch.zeros_like(self.q_bias), self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(n, length, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(head_dim), as VideoMAE-v2
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block (no layer scale: the SSv2 fine-tuned ViT-g has none)."""

    def __init__(self, dims: ViTDims) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dims.embed_dim, eps=LN_EPS)
        self.attn = Attention(dims.embed_dim, dims.num_heads)
        self.norm2 = nn.LayerNorm(dims.embed_dim, eps=LN_EPS)
        self.mlp = Mlp(dims.embed_dim, dims.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, dims: ViTDims) -> None:
        super().__init__()
        kernel = (dims.tubelet_size, dims.patch_size, dims.patch_size)
        self.proj = nn.Conv3d(3, dims.embed_dim, kernel_size=kernel, stride=kernel)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, T, H, W] -> tokens [B, T/t * H/p * W/p, D] in (time, row, column) order."""
        return self.proj(video).flatten(2).transpose(1, 2)


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """[1, positions, dim]: sin at even and cos at odd channels, frequency 10000^(-2*(j//2)/dim) (fixed, unlearned)."""
    pos = torch.arange(positions, dtype=torch.float64)[:, None]
    exponent = (2 * (torch.arange(dim) // 2)).to(torch.float64) / dim
    angles = pos / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.float()[None]


class VideoMAEv2Features(nn.Module):
    """Clip -> one embedding per clip: patch tubelets + fixed positions, `depth` blocks, token mean, `fc_norm`."""

    def __init__(self, dims: ViTDims = ViTDims()) -> None:
        super().__init__()
        if dims.embed_dim % dims.num_heads or dims.num_frames % dims.tubelet_size or dims.img_size % dims.patch_size:
            raise ValueError(f"inconsistent ViT dims {dims}")
        self.dims = dims
        self.gradient_checkpointing = False
        self.patch_embed = PatchEmbed(dims)
        # Not in the checkpoint (upstream keeps it as a plain tensor attribute), hence non-persistent.
        self.register_buffer("pos_embed", sinusoid_table(dims.num_patches, dims.embed_dim), persistent=False)
        self.blocks = nn.ModuleList([Block(dims) for _ in range(dims.depth)])
        self.fc_norm = nn.LayerNorm(dims.embed_dim, eps=LN_EPS)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, T, img, img] in [0, 1] (no mean/std normalisation, as TREPA feeds it) -> [B, embed_dim]."""
        x = self.patch_embed(video.to(self.pos_embed.dtype)) + self.pos_embed
        for block in self.blocks:
            # Recomputing blocks in backward: 40 ViT-g blocks over 2048 tokens are most of a stage-2 step's memory.
            use_cp = self.gradient_checkpointing and torch.is_grad_enabled()
            x = checkpoint(block, x, use_reentrant=False) if use_cp else block(x)
        return self.fc_norm(x.mean(dim=1))


def trepa_loss(extractor: VideoMAEv2Features, pred_frames: torch.Tensor, target_frames: torch.Tensor) -> torch.Tensor:
    """MSE between L2-normalised clip features of two [B, F, 3, H, W] videos in [-1, 1] (F = the extractor's frames).

    As upstream: each frame is resized bicubically to the ViT's size, mapped to [0, 1] and clamped (bicubic
    overshoot), features are mean-pooled tokens after `fc_norm`. Gradients flow to `pred_frames` only.
    """
    if pred_frames.shape != target_frames.shape or pred_frames.ndim != 5:
        raise ValueError(
            f"TREPA needs two [B, F, 3, H, W] videos of one shape, got {list(pred_frames.shape)} and "
            f"{list(target_frames.shape)}"
        )
    f = pred_frames.shape[1]
    if f != extractor.dims.num_frames:
        raise ValueError(f"TREPA extractor takes {extractor.dims.num_frames} frames, got {f}")
    size = extractor.dims.img_size
    with torch.no_grad():
        target = extractor(_to_clip(target_frames, size))
    pred = extractor(_to_clip(pred_frames, size))
    return F.mse_loss(F.normalize(pred.float(), dim=1), F.normalize(target.float(), dim=1))


def _to_clip(frames: torch.Tensor, size: int) -> torch.Tensor:
    """[B, F, 3, H, W] in [-1, 1] -> [B, 3, F, size, size] in [0, 1]."""
    b, f = frames.shape[:2]
    x = frames.flatten(0, 1)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = (x / 2 + 0.5).clamp(0, 1)
    return x.unflatten(0, (b, f)).transpose(1, 2)


def load_trepa(
    path: str | os.PathLike,
    dims: ViTDims = ViTDims(),
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gradient_checkpointing: bool = False,
) -> VideoMAEv2Features:
    """Load the official `vit_g_hybrid_pt_1200e_ssv2_ft.pth` (weights under `module` or `model`) strict, minus `head`.

    Built on the meta device and filled by assignment from a memory-mapped file, so the 1B-parameter model is
    never held twice. Upstream runs it in fp16 on GPUs (`dtype`). Returned frozen and in eval mode.
    """
    state = _read_videomae_state(Path(path))
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    with torch.device("meta"):
        model = VideoMAEv2Features(dims)
    check_fits(model.state_dict(), state,
               f"VideoMAE-v2 weights {path} do not fit ViT dims (embed {dims.embed_dim}, depth {dims.depth})")
    model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
    # The buffer was created on meta; rebuild it (in float32 maths) where the weights now live.
    model.pos_embed = sinusoid_table(dims.num_patches, dims.embed_dim).to(device=device, dtype=dtype)
    model.gradient_checkpointing = gradient_checkpointing
    return model.eval().requires_grad_(False)


def _read_videomae_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"VideoMAE-v2 weights not found: {path} (TREPA needs vit_g_hybrid_pt_1200e_ssv2_ft.pth)")
    try:
        obj = _torch_load(path, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped; a corrupt one fails again, unmapped
        obj = _torch_load(path, mmap=False)
    if isinstance(obj, Mapping):
        obj = next((obj[k] for k in ("module", "model") if isinstance(obj.get(k), Mapping)), obj)
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"VideoMAE-v2 weights {path} hold no tensor state dict under 'module' or 'model'")
    return dict(obj)


def _torch_load(path: Path, mmap: bool) -> object:
    """`torch.load` (tensors only); with `mmap` a RuntimeError passes through so the caller can retry unmapped."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:
        if mmap and isinstance(exc, RuntimeError):
            raise
        reason = type(exc).__name__
        raise CheckpointError(f"cannot read VideoMAE-v2 weights {path}: not a torch file ({reason})") from None


__all__ = ["ViTDims", "VideoMAEv2Features", "trepa_loss", "load_trepa", "sinusoid_table"]
