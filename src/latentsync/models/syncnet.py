"""StableSyncNet: the audio/visual sync expert LatentSync trains and uses as a sync loss.

Two convolutional encoders map a stack of lower-half face frames and a mel window to embeddings whose cosine
similarity is read as the probability that they are in sync. Module and parameter names follow upstream
(`audio_encoder.down_blocks.N...`) exactly so the released `stable_syncnet.pt` loads strict; the layout
manifests in the reference data pin them down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from latentsync.errors import ConfigError
from latentsync.models.checkpoint import check_fits, read_checkpoint
from latentsync.models.layers import FeedForward
from latentsync.paths import CONFIG_DIR

SYNCNET_CONFIG_DIR = CONFIG_DIR / "syncnet"
# Upstream hard-codes these; they are not config keys.
NORM_GROUPS = 32
NORM_EPS = 1e-6
ATTN_HEADS = 8

Factor = Union[int, tuple[int, int]]


@dataclass(frozen=True)
class EncoderConfig:
    """One `DownEncoder2D`: a conv stem, then per entry one resnet block (and optionally attention after it).

    `downsample_factors` entries are an int stride (1 = no downsampling) or an (h, w) stride pair.
    `center_frames` (ours; upstream's files lack it, so it is off for them): the visual input's frames minus their
    mean over the window, so the encoder sees how the face moves rather than what it looks like (see
    docs/real-faces.md). It has no weights: a checkpoint loads either way.

    `per_frame` and `time_steps` (ours, off for upstream's files) make the embedding a time series, so that the
    cosine compares mouth and sound frame by frame instead of having to learn time from a flat stack:
    - `per_frame` (visual): the encoder runs on each RGB frame of the stack on its own (`in_channels` still names
      the stack, 3 per frame; the stem takes 3) and its output is laid out [C*h*w, 1, frames];
    - `time_steps` (audio): the output map is averaged down to [C, 1, time_steps], one step per video frame.
    """

    in_channels: int
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[Factor, ...]
    attn_blocks: tuple[int, ...]
    dropout: float = 0.0
    center_frames: bool = False
    per_frame: bool = False
    time_steps: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], name: str) -> "EncoderConfig":
        """Parse an upstream encoder section.

        A missing `attn_blocks` means no attention anywhere. Upstream raises KeyError instead (its
        syncnet_25_pixel.yaml has no `attn_blocks`, so upstream cannot build it); all zeros is what the
        reference layout for that config was built with.
        """
        try:
            channels = tuple(int(c) for c in d["block_out_channels"])
            factors = tuple(f if isinstance(f, int) else (int(f[0]), int(f[1])) for f in d["downsample_factors"])
            attn = tuple(int(a) for a in d.get("attn_blocks", [0] * len(channels)))
            cfg = cls(int(d["in_channels"]), channels, factors, attn, float(d.get("dropout", 0.0)),
                      bool(d.get("center_frames", False)), bool(d.get("per_frame", False)),
                      int(d.get("time_steps", 0)))
        except KeyError as exc:
            raise ConfigError(f"syncnet {name}: missing key {exc}") from None
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"syncnet {name}: malformed section ({exc})") from None
        if not channels or not len(channels) == len(factors) == len(attn):
            raise ConfigError(
                f"syncnet {name}: block_out_channels, downsample_factors and attn_blocks need the same non-zero "
                f"length, got {len(channels)}, {len(factors)}, {len(attn)}"
            )
        if any(c % NORM_GROUPS for c in channels):
            raise ConfigError(f"syncnet {name}: block_out_channels {list(channels)} must be multiples of {NORM_GROUPS}")
        return cfg


@dataclass(frozen=True)
class SyncNetConfig:
    """The yaml `model:` section: one config per encoder."""

    audio_encoder: EncoderConfig
    visual_encoder: EncoderConfig

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SyncNetConfig":
        """Accept either a whole config file (with a `model:` section) or the `model:` section itself."""
        model = d.get("model", d)
        if not isinstance(model, Mapping):
            raise ConfigError("syncnet config 'model' is not a mapping")
        for key in ("audio_encoder", "visual_encoder"):
            if not isinstance(model.get(key), Mapping):
                raise ConfigError(f"syncnet config has no '{key}' section")
        return cls(
            EncoderConfig.from_dict(model["audio_encoder"], "audio_encoder"),
            EncoderConfig.from_dict(model["visual_encoder"], "visual_encoder"),
        )


class ResnetBlock2D(nn.Module):
    """Pre-norm residual block, then an optional strided 3x3 conv that downsamples.

    The downsample conv has padding 0 and an explicit asymmetric zero pad: the side that keeps its size (stride 1)
    is padded on both ends so a 3x3 kernel preserves it; a strided side is padded only after (like upstream).
    """

    def __init__(self, in_channels: int, out_channels: int, factor: Factor, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, in_channels, eps=NORM_EPS)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(NORM_GROUPS, out_channels, eps=NORM_EPS)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        # Only the int 1 skips downsampling; a [1, 1] pair still gets a stride-1 conv, as upstream builds it.
        self.downsample_conv = None if factor == 1 else nn.Conv2d(out_channels, out_channels, 3, stride=factor)
        self.pad = _downsample_pad(factor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        h = h + (x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.downsample_conv is not None:
            h = self.downsample_conv(F.pad(h, self.pad))
        return h


def _downsample_pad(factor: Factor) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding before the stride-`factor` conv."""
    if isinstance(factor, tuple) and factor[0] == 1:
        return (0, 1, 1, 1)
    if isinstance(factor, tuple) and factor[1] == 1:
        return (1, 1, 0, 1)
    return (0, 1, 0, 1)


class SelfAttention(nn.Module):
    """Multi-head self-attention with biased q/k/v and output projections (diffusers `Attention` names)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(dropout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        projections = (self.to_q(x), self.to_k(x), self.to_v(x))
        q, k, v = (p.view(b, n, self.heads, c // self.heads).transpose(1, 2) for p in projections)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return self.to_out[1](self.to_out[0](out))


class AttentionBlock2D(nn.Module):
    """Spatial transformer over the H*W positions of a feature map, residual around the whole block.

    GroupNorm -> 1x1 conv_in -> tokens -> (LayerNorm -> self-attn) + res -> (LayerNorm -> GEGLU FF) + res
    -> 1x1 conv_out -> + input. Attribute order matches upstream's parameter order.
    """

    def __init__(self, dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(NORM_GROUPS, dim, eps=NORM_EPS)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)
        self.conv_in = nn.Conv2d(dim, dim, 1)
        self.conv_out = nn.Conv2d(dim, dim, 1)
        self.attn = SelfAttention(dim, ATTN_HEADS, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.conv_in(self.norm1(x)).flatten(2).transpose(1, 2)
        t = self.attn(self.norm2(t)) + t
        t = self.ff(self.norm3(t)) + t
        return self.conv_out(t.transpose(1, 2).reshape(b, c, h, w)) + x


class DownEncoder2D(nn.Module):
    """Conv stem, resnet(+attention) blocks in one flat `down_blocks` list, GroupNorm `norm_out` + ReLU.

    The flat list is why an attention block shifts the index of every later resnet block in the checkpoint.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        for option in ("center_frames", "per_frame"):
            if getattr(cfg, option) and cfg.in_channels % 3:
                raise ConfigError(f"{option} needs RGB frames stacked as channels, got {cfg.in_channels} channels")
        if cfg.time_steps < 0:
            raise ConfigError(f"time_steps must be >= 0, got {cfg.time_steps}")
        self.center_frames, self.per_frame, self.time_steps = cfg.center_frames, cfg.per_frame, cfg.time_steps
        self.conv_in = nn.Conv2d(3 if cfg.per_frame else cfg.in_channels, cfg.block_out_channels[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        channels = cfg.block_out_channels[0]
        for out, factor, attn in zip(cfg.block_out_channels, cfg.downsample_factors, cfg.attn_blocks):
            self.down_blocks.append(ResnetBlock2D(channels, out, factor, cfg.dropout))
            if attn == 1:
                self.down_blocks.append(AttentionBlock2D(out, cfg.dropout))
            channels = out
        self.norm_out = nn.GroupNorm(NORM_GROUPS, channels, eps=NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center_frames:  # channels are frame-major (C*f + c): [B, F, 3, H, W], minus the mean frame
            b, c, h, w = x.shape
            frames = x.view(b, c // 3, 3, h, w)
            x = (frames - frames.mean(dim=1, keepdim=True)).view(b, c, h, w)
        b, c, h, w = x.shape
        if self.per_frame:
            x = x.reshape(b * (c // 3), 3, h, w)
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = F.relu(self.norm_out(x))
        if self.per_frame:  # [B*F, C, h, w] -> [B, C*h*w, 1, F]: feature-major, like the audio's [B, C, 1, T]
            x = x.reshape(b, c // 3, -1).transpose(1, 2).unsqueeze(2)
        if self.time_steps:
            x = F.adaptive_avg_pool2d(x, (1, self.time_steps))
        return x


class StableSyncNet(nn.Module):
    """Audio and visual encoders whose flattened, L2-normalised outputs are compared by cosine similarity."""

    def __init__(self, config: SyncNetConfig | Mapping[str, Any]) -> None:
        super().__init__()
        if not isinstance(config, SyncNetConfig):
            config = SyncNetConfig.from_dict(config)
        self.config = config
        self.audio_encoder = DownEncoder2D(config.audio_encoder)
        self.visual_encoder = DownEncoder2D(config.visual_encoder)

    def forward(self, visual: torch.Tensor, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """visual [B, C, H, W] (see `visual_input`), mel [B, 1, 80, T] -> (vision_embeds, audio_embeds), each [B, D].

        The map is flattened in (C, H, W) order rather than pooled: that is what the weights were trained with.
        """
        vision = self.visual_encoder(visual)
        audio = self.audio_encoder(mel)
        vision = F.normalize(vision.reshape(vision.shape[0], -1), p=2, dim=1)
        audio = F.normalize(audio.reshape(audio.shape[0], -1), p=2, dim=1)
        return vision, audio


def visual_input(frames: torch.Tensor, lower_half: bool = True) -> torch.Tensor:
    """Frames [B, F, C, H, W] in [-1, 1] -> [B, F*C, H', W] with channel = C*f + c (frame-major).

    The pixel SyncNets see only the lower half (rows H//2:) where the mouth is; the latent variant
    (`data.lower_half: false`) sees the whole map.
    """
    if frames.dim() != 5:
        raise ValueError(f"expected frames [B, F, C, H, W], got shape {list(frames.shape)}")
    b, f, c, h, w = frames.shape
    stacked = frames.reshape(b, f * c, h, w)
    return stacked[:, :, h // 2 :] if lower_half else stacked


def sync_probability(vision_embeds: torch.Tensor, audio_embeds: torch.Tensor) -> torch.Tensor:
    """Cosine similarity per pair, [B]. Both embeddings are >= 0 (ReLU), so this lies in [0, 1]."""
    return F.cosine_similarity(vision_embeds, audio_embeds)


def sync_loss(
    vision_embeds: torch.Tensor, audio_embeds: torch.Tensor, y: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy of the cosine similarity against y (1 = in sync), as upstream's `cosine_loss`.

    Upstream averages over the batch ("mean"); "none" gives one loss per pair, shape [B].
    """
    sims = sync_probability(vision_embeds, audio_embeds)
    return F.binary_cross_entropy(sims, y.reshape(sims.shape).to(sims.dtype), reduction=reduction)


def syncnet_presets() -> list[str]:
    """Names of the packaged SyncNet configs (upstream's four plus our `small`)."""
    return sorted(p.stem for p in SYNCNET_CONFIG_DIR.glob("*.yaml"))


def load_syncnet_yaml(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Read a SyncNet yaml given a preset name (e.g. `syncnet_16_pixel_attn`) or a file path."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix not in (".yaml", ".yml") and os.sep not in text and "/" not in text:
        path = SYNCNET_CONFIG_DIR / f"{text}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown SyncNet preset '{text}'; presets: {', '.join(syncnet_presets())}")
    if not path.is_file():
        raise ConfigError(f"SyncNet config not found: {path} (presets: {', '.join(syncnet_presets())})")
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read SyncNet config {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"SyncNet config {path} has no 'model:' section")
    return data


def load_syncnet(
    config_or_yaml: SyncNetConfig | Mapping[str, Any] | str | os.PathLike,
    weights_path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> StableSyncNet:
    """Build a SyncNet and load weights strict, as upstream does for `stable_syncnet.pt`; returns it in eval mode.

    The model is built on the meta device and the checkpoint tensors are assigned in, so a 400M-parameter
    net is never allocated twice. Any missing/unexpected key or shape mismatch is a `CheckpointError`, since a
    partially loaded sync expert would silently give meaningless sync losses.
    """
    if isinstance(config_or_yaml, (str, os.PathLike)):
        config_or_yaml = load_syncnet_yaml(config_or_yaml)
    config = config_or_yaml if isinstance(config_or_yaml, SyncNetConfig) else SyncNetConfig.from_dict(config_or_yaml)
    state = read_checkpoint(weights_path).state_dict
    with torch.device("meta"):
        model = StableSyncNet(config)
    check_fits(model.state_dict(), state, f"SyncNet weights {weights_path} do not fit the config")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


__all__: Sequence[str] = (
    "EncoderConfig",
    "SyncNetConfig",
    "StableSyncNet",
    "visual_input",
    "sync_probability",
    "sync_loss",
    "syncnet_presets",
    "load_syncnet_yaml",
    "load_syncnet",
)
