"""One denoising prediction with optional classifier-free guidance, as the inference pipeline runs it.

The U-Net input is the channel concatenation [noisy latents 0:4, mask 4:5, masked-image latents 5:9,
reference latents 9:13]. Guidance uses all-zero audio as the unconditional input (upstream's choice) and, like
upstream, one batched call with the batch doubled as [unconditional, conditional] rather than two calls: the
weights are read once, which is what bounds a U-Net step at these batch sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from latentsync.models.unet import FeatureCache


def unet_input(
    noisy_latents: torch.Tensor, mask: torch.Tensor, masked_latents: torch.Tensor, ref_latents: torch.Tensor
) -> torch.Tensor:
    """`[B, 13, F, h, w]` in upstream's channel order; `mask` may be shared (batch or frame dim of size 1)."""
    b, _, f, h, w = noisy_latents.shape
    mask = mask.to(noisy_latents.dtype).expand(b, 1, f, h, w)
    return torch.cat([noisy_latents, mask, masked_latents, ref_latents], dim=1)


def predict_noise(
    unet: nn.Module,
    noisy_latents: torch.Tensor,
    mask: torch.Tensor,
    masked_latents: torch.Tensor,
    ref_latents: torch.Tensor,
    timestep: torch.Tensor | int | float,
    audio_embeds: torch.Tensor,
    guidance_scale: float,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """Predicted noise `[B, 4, F, h, w]`.

    Latents are `[B, 4, F, h, w]`, the mask `[B or 1, 1, F or 1, h, w]`, audio `[B, F, 50, D]`, the timestep
    0-dim or `[B]`. With `guidance_scale > 1`: eps_uncond + g * (eps_audio - eps_uncond) from one call on the
    doubled batch; with 1: one conditional call. `cache` is passed on to the U-Net (DeepCache).
    """
    if guidance_scale < 1:
        raise ValueError(f"guidance_scale must be >= 1 (1 = no guidance), got {guidance_scale}")
    if audio_embeds.ndim != 4:
        raise ValueError(f"audio_embeds must be [B, F, tokens, D], got shape {tuple(audio_embeds.shape)}")
    sample = unet_input(noisy_latents, mask, masked_latents, ref_latents)
    if guidance_scale == 1:
        return unet(sample, timestep, audio_embeds, cache=cache)
    t = torch.as_tensor(timestep, device=sample.device)
    t = t if t.ndim == 0 else torch.cat([t, t])
    audio = torch.cat([torch.zeros_like(audio_embeds), audio_embeds])
    eps_uncond, eps_audio = unet(torch.cat([sample, sample]), t, audio, cache=cache).chunk(2)
    return eps_uncond + guidance_scale * (eps_audio - eps_uncond)
