"""One U-Net training step, independent of the outer loop (optimiser, data loading, checkpoints, logging).

The step builds its inputs exactly as inference does (`pipeline/denoise.py`): the lower face is masked in pixels
(mask 1 = keep), the masked frames, the target frames and the reference frames are VAE-encoded (sampled from the
latent distribution, as upstream), and the U-Net sees [noisy 0:4 | mask 4:5 | masked 5:9 | reference 9:13].
A U-Net trained on inputs built any other way would be fed something else at inference.

Stage 1 trains everything on the noise MSE. Stage 2 trains the temporal and attention layers and, with pixel-space
supervision, also decodes the one-step x0 estimate (VAE frozen, gradient-checkpointed, gradients flow through it
to the U-Net) and adds the SyncNet, LPIPS and TREPA losses on the decoded frames.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from torch import nn

from latentsync.errors import ConfigError
from latentsync.models.syncnet import StableSyncNet
from latentsync.models.unet import UNet3DConditionModel
from latentsync.models.vae import decode, encode, sample_latents, vae_factor
from latentsync.pipeline.guidance import unet_input
from latentsync.train.losses import LossWeights, lower_half_lpips, mixed_noise, one_step_x0, pixel_sync_loss
from latentsync.train.lpips import LPIPS
from latentsync.train.trepa import VideoMAEv2Features, trepa_loss

# Upstream's rules: which parameter names (substrings) train in each stage; None = all of them.
STAGE_MODULES: dict[str, tuple[str, ...] | None] = {
    "stage1": None,
    "stage2": ("motion_modules.", "attentions."),
    "stage2_efficient": ("motion_modules.", "attn2."),
}
METRICS = ("mse", "sync", "lpips", "trepa", "total")


def training_rule(config: Mapping[str, Any]) -> str | list[str]:
    """Upstream's choice for a whole yaml config: with motion modules only `run.trainable_modules` train,
    without them (stage 1) everything does."""
    if not config.get("model", {}).get("use_motion_module", False):
        return "stage1"
    modules = config.get("run", {}).get("trainable_modules")
    if not modules:
        raise ConfigError("a config with motion modules needs run.trainable_modules ([motion_modules., attentions.])")
    return [str(m) for m in modules]


def trainable_parameters(unet: nn.Module, stage: str | Sequence[str]) -> list[nn.Parameter]:
    """Unfreeze the parameters a stage trains and freeze the rest; returns the trainable ones (for the optimiser).

    `stage` is a stage name (`stage1`, `stage2`, `stage2_efficient`) or an explicit list of name substrings, as in
    a config's `run.trainable_modules`; a parameter trains if its name contains any of them.
    """
    if isinstance(stage, str):
        if stage not in STAGE_MODULES:
            raise ConfigError(f"unknown training stage {stage!r}: use one of {sorted(STAGE_MODULES)} or module names")
        patterns = STAGE_MODULES[stage]
    else:
        patterns = tuple(stage)
    trainable = []
    for name, param in unet.named_parameters():
        param.requires_grad_(patterns is None or any(p in name for p in patterns))
        if param.requires_grad:
            trainable.append(param)
    if not trainable:
        raise ConfigError(f"trainable modules {list(patterns or ())} match no U-Net parameter")
    return trainable


class UNetTrainStep:
    """`step(batch) -> (loss, metrics)`: the loss to back-propagate and its parts as floats (`METRICS`).

    batch: `frames` and `ref_frames` [B, F, 3, H, W] in [-1, 1], `audio` [B, F, 50, D] (Whisper tokens), and
    `mel` [B, 1, 80, T] when the sync loss is on. The U-Net's train/eval mode and autocast are the caller's.
    When a pixel loss is on, the VAE's gradient checkpointing is switched on (as upstream does).
    """

    def __init__(
        self,
        unet: UNet3DConditionModel,
        vae: AutoencoderKL,
        mask: np.ndarray | torch.Tensor,
        scheduler: DDIMScheduler,
        weights: LossWeights = LossWeights(),
        syncnet: StableSyncNet | None = None,
        lpips: LPIPS | None = None,
        trepa: VideoMAEv2Features | None = None,
        pixel_space: bool = False,
        mixed_noise_alpha: float | None = 1.0,
        syncnet_resolution: int = 256,
        generator: torch.Generator | None = None,
    ) -> None:
        _check_losses(weights, pixel_space, syncnet, lpips, trepa)
        self.unet, self.vae, self.scheduler = unet, vae, scheduler
        self.weights = weights
        self.syncnet, self.lpips, self.trepa = syncnet, lpips, trepa
        self.mixed_noise_alpha = mixed_noise_alpha
        self.syncnet_resolution = syncnet_resolution
        self.generator = generator
        mask = torch.from_numpy(np.array(mask, dtype=np.float32))  # a copy: load_mask's array is read-only
        factor = vae_factor(vae)
        if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or mask.shape[0] % factor:
            raise ConfigError(f"mask must be [res, res] with res a multiple of {factor}, got {list(mask.shape)}")
        self.pixel_mask = mask[None, None]  # [1, 1, res, res]
        size = mask.shape[0] // factor
        self.latent_mask = F.interpolate(self.pixel_mask, size=(size, size)).unsqueeze(2)  # nearest, [1, 1, 1, h, w]
        # Decode only when a pixel loss is on: the decode is most of a stage-2 step's memory and time.
        self.decodes = pixel_space and max(weights.sync, weights.lpips, weights.trepa) > 0
        vae.requires_grad_(False)
        if self.decodes:
            vae.enable_gradient_checkpointing()

    def __call__(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(self.unet.parameters()).device  # also works when the U-Net is wrapped (DDP)
        frames = batch["frames"].to(device=device, dtype=torch.float32) if "frames" in batch else None
        if frames is not None and tuple(frames.shape[-2:]) != tuple(self.pixel_mask.shape[-2:]):
            raise ValueError(f"frames are {list(frames.shape[-2:])} but the mask is {self.pixel_mask.shape[-1]} px")
        if self.decodes and frames is None:
            raise ValueError("the pixel-space losses need the batch's frames, not only cached latents")
        with torch.no_grad():
            if "latent_mean" in batch:  # cached posteriors (data.latents): draw instead of encoding
                target, masked, ref = (self._draw(batch, name, device) for name in ("latent", "masked", "ref"))
                if tuple(target.shape[-2:]) != tuple(self.latent_mask.shape[-2:]):
                    raise ValueError(f"cached latents are {list(target.shape[-2:])}, the mask needs "
                                     f"{list(self.latent_mask.shape[-2:])}: built for another resolution")
            else:
                assert frames is not None, "a batch needs frames or cached latents"
                target = self._encode(frames)
                masked = self._encode(frames * self.pixel_mask.to(device))
                ref = self._encode(batch["ref_frames"].to(device=device, dtype=torch.float32))
        b, f = target.shape[0], target.shape[2]

        noise = mixed_noise(target.shape, self.mixed_noise_alpha, self.generator).to(device)
        num_steps = self.scheduler.config.num_train_timesteps
        timesteps = torch.randint(0, num_steps, (b,), generator=self.generator).to(device)
        noisy = self.scheduler.add_noise(target, noise, timesteps)
        sample = unet_input(noisy, self.latent_mask.to(device), masked, ref)
        eps = self.unet(sample, timesteps, batch["audio"].to(device))

        parts = {"mse": F.mse_loss(eps.float(), noise)}
        if self.decodes:
            x0 = one_step_x0(self.scheduler.alphas_cumprod, eps, timesteps, noisy)
            pred = decode(self.vae, x0.transpose(1, 2).flatten(0, 1)).float().unflatten(0, (b, f))  # [B, F, 3, H, W]
            if self.weights.sync > 0:
                parts["sync"] = pixel_sync_loss(self.syncnet, pred, batch["mel"].to(device), self.syncnet_resolution)
            if self.weights.lpips > 0:
                parts["lpips"] = lower_half_lpips(self.lpips, pred.flatten(0, 1), frames.flatten(0, 1))
            if self.weights.trepa > 0:
                parts["trepa"] = trepa_loss(self.trepa, pred, frames)
        w = self.weights
        scale = {"mse": w.recon, "sync": w.sync, "lpips": w.lpips, "trepa": w.trepa}
        total = sum(scale[name] * value for name, value in parts.items())
        metrics = {name: parts[name].item() if name in parts else 0.0 for name in METRICS[:-1]}
        metrics["total"] = total.item()
        return total, metrics

    def _draw(self, batch: Mapping[str, torch.Tensor], name: str, device: torch.device) -> torch.Tensor:
        """A latent sample [B, 4, F, h, w] from cached moments `{name}_mean`/`{name}_std` [B, F, 4, h, w]."""
        mean, std = (batch[f"{name}_{part}"].to(device=device, dtype=torch.float32) for part in ("mean", "std"))
        return sample_latents(mean, std, self.generator).transpose(1, 2)

    def _encode(self, frames: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] -> scaled latents [B, 4, F, h, w] in float32, sampled from the latent distribution."""
        latents = encode(self.vae, frames.flatten(0, 1), generator=self.generator).float()
        return latents.unflatten(0, frames.shape[:2]).transpose(1, 2)


def _check_losses(
    weights: LossWeights,
    pixel_space: bool,
    syncnet: StableSyncNet | None,
    lpips: LPIPS | None,
    trepa: VideoMAEv2Features | None,
) -> None:
    """Refuse, at construction, a loss that is switched on but cannot be computed."""
    terms = (
        ("sync", weights.sync, syncnet, "a SyncNet (set ckpt.syncnet_path)"),
        ("lpips", weights.lpips, lpips, "LPIPS VGG16 weights (set ckpt.vgg_path)"),
        ("trepa", weights.trepa, trepa, "the VideoMAE-v2 model (set ckpt.trepa_path)"),
    )
    for name, weight, model, what in terms:
        if weight > 0 and not pixel_space:
            raise ConfigError(
                f"{name} loss weight {weight:g} needs pixel-space supervision (run.pixel_space_supervise) "
                "or set its weight to 0"
            )
        if weight > 0 and model is None:
            raise ConfigError(f"{name} loss weight {weight:g} needs {what} or set its weight to 0")
    if weights.recon == 0 and not any(w > 0 for _, w, _, _ in terms):
        raise ConfigError("every loss weight is 0: nothing to train")
