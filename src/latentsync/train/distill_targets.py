"""What a distilled student learns from: the teacher's guided many-step results, made once and stored.

A target is one 16-frame training window as inference sees it (masked and reference latents, Whisper tokens, the
video's shared initial noise) and the latents the teacher's full sampler (20 DDIM steps with classifier-free
guidance, by default) ends at from that noise. The teacher's sampler is deterministic, so the pair (noise, result)
defines a straight line through latent space, x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, that DDIM would follow
exactly if every step predicted the same x0 and eps. The student is trained to predict that x0 (through the
epsilon output the official format has) from any point of the line at its own timesteps, so its 1-4 DDIM steps
land where the teacher's 20 guided steps did, and no unconditional pass is needed (docs/distill.md).

Targets are files `NNNNNN.safetensors` in a folder: made in order, each written whole (temporary name, then
renamed), so an interrupted run resumes at the first missing one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from latentsync.models.scheduler import make_scheduler
from latentsync.models.vae import encode
from latentsync.pipeline.denoise import LATENT_CHANNELS
from latentsync.pipeline.guidance import predict_noise
from latentsync.pipeline.progress import progress_bar



@dataclass(frozen=True)
class Sampling:
    """A sampler run: which sampler, how many steps, what guidance."""

    sampler: str
    steps: int
    guidance: float


@torch.no_grad()
def sample(unet: torch.nn.Module, how: Sampling, target: dict[str, torch.Tensor],
           mask: torch.Tensor) -> torch.Tensor:
    """The latents a sampler ends at for a batch of targets: [B, 4, F, h, w] from `noise` [B, 4, 1, h, w] repeated
    over the frames, as inference starts every chunk of a video."""
    masked, ref, audio = target["masked"], target["ref"], target["audio"]
    scheduler = make_scheduler(how.sampler)
    scheduler.set_timesteps(how.steps)
    latents = target["noise"].expand_as(masked).clone() * scheduler.init_noise_sigma
    mask = mask.expand(len(masked), 1, masked.shape[2], *mask.shape[-2:])
    for t in scheduler.timesteps:
        eps = predict_noise(unet, latents, mask, masked, ref, t, audio, how.guidance)
        latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def student_timesteps(steps: int) -> torch.Tensor:
    """The timesteps the student samples at (DDIM, trailing spacing): 999 for 1 step, 999 and 499 for 2 ..."""
    scheduler = make_scheduler("ddim-trailing")
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.clone()


def on_the_line(alphas: torch.Tensor, first: int, t: torch.Tensor, noise: torch.Tensor,
                x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, eps) on the DDIM line from `noise` at timestep `first` to `x0`: eps is the noise that line implies,
    constant along it, and x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps. Latents [B, 4, F, h, w], t [B]."""
    a_first = alphas[first]
    eps = (noise - a_first.sqrt() * x0) / (1 - a_first).sqrt()
    a = alphas[t].view(-1, 1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * eps, eps


def x0_loss(alphas: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor, eps_pred: torch.Tensor,
            x0: torch.Tensor) -> torch.Tensor:
    """Mean squared x0 error of an epsilon prediction, weighted by max(SNR, 1) ("truncated SNR", Salimans & Ho
    2022): at the first, all-noise step the x0 error itself counts (1-step sampling is that one prediction); at low
    noise the weight turns it back into the plain epsilon error, so no step is ignored."""
    a = alphas[t].view(-1, 1, 1, 1, 1)
    x0_pred = (x_t - (1 - a).sqrt() * eps_pred) / a.sqrt()
    weight = torch.clamp(a / (1 - a), min=1.0)
    return (weight * (x0_pred - x0) ** 2).mean()


class TargetMaker:
    """Turns dataset windows into stored targets with the teacher: `make(dataset, folder, count)`."""

    def __init__(self, unet: torch.nn.Module, vae: torch.nn.Module, latent_mask: torch.Tensor,
                 pixel_mask: torch.Tensor, how: Sampling, seed: int) -> None:
        self.unet, self.vae, self.how, self.seed = unet, vae, how, seed
        self.latent_mask, self.pixel_mask = latent_mask, pixel_mask  # [1, 1, 1, h, w], [1, 1, H, W]

    def make(self, dataset: Dataset, folder: Path, count: int, label: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with progress_bar(f"teacher targets ({label})", unit="window") as progress:
            for i in range(count):
                path = folder / f"{i:06d}.safetensors"
                if not path.is_file():
                    _save_whole(self.target(dataset[i], i), path)
                progress(i + 1, count)

    @torch.no_grad()
    def target(self, item: dict[str, torch.Tensor], index: int) -> dict[str, torch.Tensor]:
        """One window's target; the noise and the latent draws are seeded by (seed, index), so a remade target is
        the same."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        frames = item["frames"]  # [F, 3, H, W]

        def latents(pixels: torch.Tensor) -> torch.Tensor:
            return encode(self.vae, pixels, generator).float().transpose(0, 1).unsqueeze(0)  # [1, 4, F, h, w]

        masked, ref = latents(frames * self.pixel_mask[0]), latents(item["ref_frames"])
        noise = torch.randn(1, LATENT_CHANNELS, 1, *masked.shape[-2:], generator=generator)
        batch = {"masked": masked, "ref": ref, "audio": item["audio"][None].float(), "noise": noise}
        x0 = sample(self.unet, self.how, batch, self.latent_mask)
        out = {**batch, "x0": x0, "audio": batch["audio"].half()}  # the tokens are most of a target's size
        return {k: v[0].contiguous() for k, v in out.items()}


class TargetSet(Dataset):
    """Stored targets drawn at random, `samples_per_epoch` per epoch, seeded by (seed, epoch, index) as the clip
    datasets are: a resumed run draws what an uninterrupted one would have. Items are the stored dicts (masked, ref,
    audio, noise, x0), float32."""

    def __init__(self, folder: str | os.PathLike, count: int, samples_per_epoch: int, seed: int) -> None:
        self.paths = [Path(folder) / f"{i:06d}.safetensors" for i in range(count)]
        self.samples_per_epoch, self.seed, self.epoch = samples_per_epoch, seed, 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pick = int(np.random.default_rng([self.seed, self.epoch, index]).integers(len(self.paths)))
        return {k: v.float() for k, v in load_file(str(self.paths[pick])).items()}


def read_targets(folder: str | os.PathLike, count: int) -> list[dict[str, torch.Tensor]]:
    """All of a folder's first `count` targets, with a batch dimension of 1 (validation)."""
    return [{k: v.float()[None] for k, v in load_file(str(Path(folder) / f"{i:06d}.safetensors")).items()}
            for i in range(count)]


def _save_whole(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
