"""One chunk of aligned faces -> lip-synced faces: the model side of inference, as upstream computes it.

Per chunk of F (<= 16) aligned crops: mask the lower face, VAE-encode the masked and the unmasked crops
(the unmasked ones are the reference), start from the video's shared initial noise, run DDIM with
classifier-free guidance on the audio, decode, keep the original pixels wherever the mask says keep, then clamp.
The video's last chunk has the frames that are left (fewer than 16), as upstream's: see `batch`.

Speed settings (each measured in bench/RESULTS.md): the sampler and its step count; DeepCache (`cache_interval`
> 1: the deep U-Net features are recomputed every N-th step only); and several chunks denoised as one batch, which
reads the U-Net's weights once per step for all of them. The masked and reference latents are encoded once per
chunk and reused by every step, and a crop seen before in the run (a still image, a looped video) is not encoded
again.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.models.modeldir import Models
from latentsync.models.scheduler import make_scheduler
from latentsync.models.unet import FeatureCache
from latentsync.models.vae import decode, latent_moments, sample_latents, vae_factor
from latentsync.pipeline.guidance import predict_noise

LATENT_CHANNELS = 4
MOMENTS_KEPT = 256  # encoded crops remembered per run (about 32 MB at 512 px in fp16)


@dataclass(frozen=True)
class DenoiseSettings:
    steps: int = 20
    guidance: float = 1.5
    seed: int = 1247
    num_frames: int = 16  # frames the U-Net sees at once (its motion modules were trained on 16)
    sampler: str = "ddim"
    cache_interval: int = 1  # DeepCache: full U-Net every N-th step (1 = every step, no reuse)
    cache_depth: int = 1  # DeepCache branch: outer levels recomputed on the other steps

    def describe(self) -> str:
        """One line for run summaries: "ddim, 20 steps, guidance 1.5[, DeepCache every 2 steps (depth 1)]"."""
        text = f"{self.sampler}, {self.steps} steps, guidance {self.guidance:g}"
        if self.cache_interval > 1:
            text += f", DeepCache every {self.cache_interval} steps (depth {self.cache_depth})"
        return text


class ChunkDenoiser:
    """Holds what is shared by every chunk of a run: scheduler, mask tensors, initial noise, generator."""

    def __init__(self, models: Models, mask: np.ndarray, settings: DenoiseSettings,
                 moments: OrderedDict[bytes, tuple[torch.Tensor, ...]] | None = None, keep: int = MOMENTS_KEPT) -> None:
        """`moments` may be shared between denoisers of the same model and mask whose crops repeat (a live avatar's
        sessions), with `keep` at least the number of distinct crops, so that none is dropped while another reads
        it."""
        self.models = models
        self.keep = keep
        self.settings = settings
        self.device, self.dtype = models.device, models.dtype
        size = models.resolution // vae_factor(models.vae)
        self.pixel_mask = torch.tensor(mask, dtype=self.dtype, device=self.device)[None, None]  # [1,1,res,res]
        self.latent_mask = F.interpolate(self.pixel_mask, size=(size, size))  # nearest
        self.scheduler = make_scheduler(settings.sampler)
        # Upstream draws one [1, 4, 1, h, w] noise for the whole video and repeats it over frames, which keeps
        # the generated mouth texture consistent from chunk to chunk.
        self.generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        noise = torch.randn(1, LATENT_CHANNELS, 1, size, size, generator=self.generator)
        self.initial_noise = (noise * self.scheduler.init_noise_sigma).to(self.device, self.dtype)
        self.moments = OrderedDict() if moments is None else moments  # crop digest -> VAE moments

    @torch.no_grad()
    def batch(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """Several chunks (crops, audio) denoised together as a batch of clips; one result per chunk.

        Per chunk: crops uint8 [F, res, res, 3] (F <= num_frames) and audio tokens [F, 50, D] in, uint8
        [F, res, res, 3] out. A chunk shorter than the others (the video's last) is denoised on its own with the
        frames it has, as upstream does; its neighbours still share U-Net calls.

        Each chunk's latents are encoded (and its results decoded) on its own, in order, so the random draws and
        the VAE's memory are those of one chunk; only the U-Net steps run on the whole batch.
        """
        results: list[torch.Tensor] = []
        # Runs of equal length, in order: the random draws stay in chunk order.
        for _, run in groupby(chunks, key=lambda chunk: chunk[0].shape[0]):
            results += self._batch(list(run))
        return results

    def _batch(self, chunks: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """`batch` for chunks of one length."""
        faces, audio, masked, ref = [], [], [], []
        for crops, tokens in chunks:
            pixels = crops.to(self.device).permute(0, 3, 1, 2).to(self.dtype) / 127.5 - 1.0  # [F, 3, r, r]
            faces.append(pixels)
            audio.append(tokens.to(self.device, self.dtype))
            chunk_masked, chunk_ref = self._latents(crops, pixels)
            masked.append(chunk_masked)
            ref.append(chunk_ref)
        b, frames = len(chunks), faces[0].shape[0]
        masked_latents, ref_latents, audio_embeds = torch.cat(masked), torch.cat(ref), torch.stack(audio)
        mask = self.latent_mask.unsqueeze(2).expand(b, 1, frames, *self.latent_mask.shape[-2:])
        latents = self.initial_noise.expand(b, LATENT_CHANNELS, frames, *self.initial_noise.shape[-2:]).clone()

        self.scheduler.set_timesteps(self.settings.steps, device=self.device)  # also resets a multistep solver
        cache = FeatureCache(depth=self.settings.cache_depth) if self.settings.cache_interval > 1 else None
        for i, t in enumerate(self.scheduler.timesteps):
            if cache is not None:
                cache.refresh = i % self.settings.cache_interval == 0
            eps = predict_noise(
                self.models.unet, latents, mask, masked_latents, ref_latents, t, audio_embeds, self.settings.guidance,
                cache=cache,
            )
            latents = self.scheduler.step(eps, t, latents).prev_sample
        return [composite(decode(self.models.vae, latents[k].transpose(0, 1)), pixels, self.pixel_mask)
                for k, pixels in enumerate(faces)]

    def _latents(self, crops: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's masked and reference latents, each [1, 4, F, h, w], sampled with the run's generator as
        upstream does. The VAE runs only on crops this run has not encoded yet: a still image and a looped video's
        repeats reuse the posterior moments of identical crops."""
        keys = [hashlib.blake2b(crop.numpy().tobytes(), digest_size=16).digest() for crop in crops]
        first: dict[bytes, int] = {}
        for i, k in enumerate(keys):
            first.setdefault(k, i)
            if k in self.moments:
                self.moments.move_to_end(k)  # recently used: kept longest
        new = [i for k, i in first.items() if k not in self.moments]
        if new:
            fresh = pixels[new]
            moments = (*latent_moments(self.models.vae, fresh * self.pixel_mask), *latent_moments(self.models.vae, fresh))
            for j, i in enumerate(new):
                self.moments[keys[i]] = tuple(m[j].clone() for m in moments)  # not views that pin the batch
        while len(self.moments) > self.keep:  # the oldest are never this chunk's
            self.moments.popitem(last=False)
        stacked = [torch.stack([self.moments[k][n] for k in keys]) for n in range(4)]
        return self._sample(*stacked[:2]), self._sample(*stacked[2:])

    def _sample(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        latents = sample_latents(mean, std, generator=_device_generator(self.generator, self.device))
        return latents.transpose(0, 1).unsqueeze(0)


def composite(decoded: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Upstream's order: keep the original pixels where the mask says keep, on the unclamped decode, and only then
    clamp and quantise. Clamping first would pull a decode beyond [-1, 1] back before the blend, which changes
    every pixel where the mask is between 0 and 1 (the 512 px mask's soft ring). In: [F, 3, r, r] in [-1, 1]
    (the decode may overshoot), mask [1, 1, r, r] with 1 = keep. Out: uint8 [F, r, r, 3] on the CPU."""
    out = decoded * (1 - mask) + pixels * mask
    out = ((out + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return out.permute(0, 2, 3, 1).cpu()


def _device_generator(cpu_generator: torch.Generator, device: torch.device) -> torch.Generator:
    """diffusers samples on the parameters' device, so a CUDA run needs a CUDA generator; derive it from the CPU
    one so the run stays reproducible from its seed."""
    if device.type == "cpu":
        return cpu_generator
    seed = int(torch.randint(0, 2**62, (1,), generator=cpu_generator))
    return torch.Generator(device=device).manual_seed(seed)
