"""One chunk of aligned faces -> lip-synced faces: the model side of inference, as upstream computes it.

Per chunk of F (<= 16) aligned crops: mask the lower face, VAE-encode the masked and the unmasked crops
(the unmasked ones are the reference), start from the video's shared initial noise, run DDIM with
classifier-free guidance on the audio, decode, and keep the original pixels wherever the mask says keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.models.modeldir import Models
from latentsync.models.scheduler import make_scheduler
from latentsync.models.vae import decode, encode
from latentsync.pipeline.guidance import predict_noise

LATENT_CHANNELS = 4
VAE_FACTOR = 8


@dataclass(frozen=True)
class DenoiseSettings:
    steps: int = 20
    guidance: float = 1.5
    seed: int = 1247
    num_frames: int = 16  # frames the U-Net sees at once (its motion modules were trained on 16)


class ChunkDenoiser:
    """Holds what is shared by every chunk of a run: scheduler, mask tensors, initial noise, generator."""

    def __init__(self, models: Models, mask: np.ndarray, settings: DenoiseSettings) -> None:
        self.models = models
        self.settings = settings
        self.device, self.dtype = models.device, models.dtype
        res = models.resolution
        self.pixel_mask = torch.tensor(mask, dtype=self.dtype, device=self.device)[None, None]  # [1,1,res,res]
        self.latent_mask = F.interpolate(self.pixel_mask, size=(res // VAE_FACTOR, res // VAE_FACTOR))  # nearest
        self.scheduler = make_scheduler()
        self.scheduler.set_timesteps(settings.steps, device=self.device)
        # Upstream draws one [1, 4, 1, h, w] noise for the whole video and repeats it over frames, which keeps
        # the generated mouth texture consistent from chunk to chunk.
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        size = res // VAE_FACTOR
        noise = torch.randn(1, LATENT_CHANNELS, 1, size, size, generator=self.generator)
        self.initial_noise = (noise * self.scheduler.init_noise_sigma).to(self.device, self.dtype)

    @torch.no_grad()
    def __call__(self, crops: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """crops uint8 [F, res, res, 3] (F <= num_frames), audio tokens [F, 50, D] -> uint8 [F, res, res, 3]."""
        n = crops.shape[0]
        order = _pad_order(n, self.settings.num_frames)
        faces = crops[order].to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0  # [F', 3, res, res]
        audio = audio[order].to(self.device, self.dtype)
        frames = faces.shape[0]

        masked_latents = self._encode(faces * self.pixel_mask)
        ref_latents = self._encode(faces)
        mask = self.latent_mask.unsqueeze(2).expand(1, 1, frames, *self.latent_mask.shape[-2:])
        latents = self.initial_noise.expand(1, LATENT_CHANNELS, frames, *self.initial_noise.shape[-2:]).clone()
        for t in self.scheduler.timesteps:
            eps = predict_noise(
                self.models.unet, latents, mask, masked_latents, ref_latents, t, audio[None], self.settings.guidance
            )
            latents = self.scheduler.step(eps, t, latents).prev_sample

        decoded = decode(self.models.vae, latents[0].transpose(0, 1)).clamp(-1, 1)  # [F', 3, res, res]
        out = decoded * (1 - self.pixel_mask) + faces * self.pixel_mask
        pixels = ((out[:n] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return pixels.permute(0, 2, 3, 1).cpu()

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[F, 3, res, res] -> [1, 4, F, h, w] latents, sampled with the run's generator as upstream does."""
        latents = encode(self.models.vae, pixels, generator=_device_generator(self.generator, self.device))
        return latents.transpose(0, 1).unsqueeze(0)


def _pad_order(n: int, target: int) -> torch.Tensor:
    """Frame order for a chunk of n < target frames: mirror back and forth until `target` (outputs past n are
    dropped). The U-Net's temporal layers were trained on full 16-frame windows; padding with the chunk's own
    frames keeps the motion plausible, where upstream instead drops the last partial chunk."""
    if n >= target:
        return torch.arange(n)
    cycle = list(range(n)) + list(range(n - 2, 0, -1)) or [0]
    return torch.tensor([cycle[i % len(cycle)] for i in range(target)])


def _device_generator(cpu_generator: torch.Generator, device: torch.device) -> torch.Generator:
    """diffusers samples on the parameters' device, so a CUDA run needs a CUDA generator; derive it from the CPU
    one so the run stays reproducible from its seed."""
    if device.type == "cpu":
        return cpu_generator
    seed = int(torch.randint(0, 2**62, (1,), generator=cpu_generator))
    return torch.Generator(device=device).manual_seed(seed)
