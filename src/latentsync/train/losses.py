"""The pieces of LatentSync's U-Net objective: loss weights, mixed noise, the one-step x0 estimate and the
pixel-space losses (SyncNet, LPIPS, TREPA) on the decoded estimate.

Loss = recon * MSE(eps) + sync * SyncNet BCE + lpips * LPIPS + trepa * TREPA, with upstream's weights 1, 0.05,
0.1 and 10 (stage 2; stage 1 uses the MSE alone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from latentsync.errors import ConfigError
from latentsync.models.syncnet import StableSyncNet, sync_loss, visual_input
from latentsync.train.lpips import LPIPS

# Upstream's `run:` keys for each weight.
_RUN_KEYS = {
    "recon": "recon_loss_weight",
    "sync": "sync_loss_weight",
    "lpips": "perceptual_loss_weight",
    "trepa": "trepa_loss_weight",
}


@dataclass(frozen=True)
class LossWeights:
    """Weight of each loss term; 0 turns a term off (and then its model is not needed)."""

    recon: float = 1.0
    sync: float = 0.05
    lpips: float = 0.1
    trepa: float = 10.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"loss weight {f.name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_run_config(cls, run: Mapping[str, Any]) -> "LossWeights":
        """Weights from an upstream `run:` section, with upstream's switches applied: `use_syncnet: false` turns
        the sync loss off, and `pixel_space_supervise: false` turns off every loss that needs decoded pixels.
        Keys that are absent take the defaults."""
        values = {name: run.get(key, getattr(cls, name)) for name, key in _RUN_KEYS.items()}
        pixel_space = bool(run.get("pixel_space_supervise", False))
        if not (pixel_space and run.get("use_syncnet", False)):
            values["sync"] = 0.0
        if not pixel_space:
            values["lpips"] = values["trepa"] = 0.0
        try:
            return cls(**{k: float(v) for k, v in values.items()})
        except (TypeError, ValueError):
            raise ConfigError(f"run: loss weights must be numbers, got {values}") from None


def mixed_noise(
    shape: Sequence[int], alpha: float | None = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Float32 CPU noise [B, C, F, h, w] whose frames are correlated (the mixed-noise prior of "Preserve Your Own
    Correlation", arXiv 2305.10474): a per-clip component of std sqrt(alpha^2 / (1 + alpha^2)), shared by all
    frames, plus a per-frame one of std sqrt(1 / (1 + alpha^2)). Each element has unit variance and two frames
    correlate by alpha^2 / (1 + alpha^2) (0.5 at upstream's alpha 1). `alpha=None` is upstream's non-mixed option:
    one draw repeated over all frames.

    Drawn on the CPU so a seed gives the same noise on every device.
    """
    b, c, f, h, w = shape
    shared = torch.randn(b, c, 1, h, w, generator=generator)
    if alpha is None:
        return shared.expand(b, c, f, h, w).contiguous()
    shared_std = math.sqrt(alpha**2 / (1 + alpha**2))
    independent_std = math.sqrt(1 / (1 + alpha**2))
    return shared * shared_std + torch.randn(b, c, f, h, w, generator=generator) * independent_std


def one_step_x0(
    alphas_cumprod: torch.Tensor, eps: torch.Tensor, timesteps: torch.Tensor, noisy: torch.Tensor
) -> torch.Tensor:
    """Clean-latent estimate from one noise prediction: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t),
    per clip (`timesteps` [B], latents [B, C, F, h, w]); computed in float32."""
    abar = alphas_cumprod.to(device=noisy.device, dtype=torch.float32)[timesteps].view(-1, 1, 1, 1, 1)
    return (noisy.float() - (1 - abar).sqrt() * eps.float()) / abar.sqrt()


def pixel_sync_loss(
    syncnet: StableSyncNet, frames: torch.Tensor, mel: torch.Tensor, resolution: int
) -> torch.Tensor:
    """BCE of the frozen SyncNet's in-sync probability against 1, for [B, F, 3, H, W] frames in [-1, 1] and the
    matching mel windows [B, 1, 80, T]. Frames are resized (bicubic) to the SyncNet's `resolution` first when
    they differ, and only their lower half is seen, as the SyncNet was trained."""
    b, f = frames.shape[:2]
    if frames.shape[-2:] != (resolution, resolution):
        frames = F.interpolate(frames.flatten(0, 1), size=(resolution, resolution), mode="bicubic", align_corners=False)
        frames = frames.unflatten(0, (b, f))
    dtype = syncnet.audio_encoder.conv_in.weight.dtype
    vision, audio = syncnet(visual_input(frames, lower_half=True).to(dtype), mel.to(dtype))
    return sync_loss(vision.float(), audio.float(), torch.ones(b, device=frames.device))


def lower_half_lpips(lpips: LPIPS, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean LPIPS over frames [N, 3, H, W], on rows H//2: (the mouth region), as upstream."""
    h = pred.shape[-2]
    return lpips(pred[..., h // 2 :, :], target[..., h // 2 :, :]).mean()
