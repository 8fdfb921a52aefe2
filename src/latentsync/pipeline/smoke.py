"""`latentsync model info --check`: load a model folder and run each component once on made-up input.

It proves a folder is complete and consistent (shapes, dtypes, audio dim vs cross-attention dim) in seconds,
before a user commits to a long run. The numbers it prints are timings, not quality.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch

from latentsync.audio.features import audio_features, frame_windows
from latentsync.models.modeldir import ModelDir
from latentsync.models.scheduler import make_scheduler
from latentsync.models.vae import decode, vae_factor
from latentsync.pipeline.guidance import predict_noise


def _test_tone(seconds: float = 2.0, rate: int = 16000) -> np.ndarray:
    """A vowel-like buzz with a 4 Hz syllable envelope: speech-shaped enough to exercise Whisper."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 120 * k * t) / k for k in range(1, 12))
    return (0.3 * voice * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)


@torch.no_grad()
def smoke_check(model_dir: ModelDir, num_frames: int = 16) -> Iterator[str]:
    t0 = time.perf_counter()
    models = model_dir.load()
    yield f"loaded in {time.perf_counter() - t0:.2f} s on {models.device} ({models.dtype})"

    t0 = time.perf_counter()
    feats = audio_features(_test_tone(), models.audio_encoder)
    tokens = frame_windows(feats)[:num_frames]
    yield f"whisper features {list(feats.shape)} -> per-frame tokens {list(tokens.shape)} in {time.perf_counter() - t0:.2f} s"

    size = models.resolution // vae_factor(models.vae)
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, num_frames, size, size, generator=gen)
    mask = torch.ones(1, 1, num_frames, size, size)
    mask[..., size // 2 :, :] = 0
    cond = torch.randn(1, 4, num_frames, size, size, generator=gen)
    scheduler = make_scheduler()
    scheduler.set_timesteps(models.spec.inference.get("steps", 20))
    t = scheduler.timesteps[0]
    guidance = float(models.spec.inference.get("guidance_scale", 1.5))
    t0 = time.perf_counter()
    eps = predict_noise(models.unet, latents, mask, cond * mask, cond, t, tokens[None], guidance)
    latents = scheduler.step(eps, t, latents).prev_sample
    yield f"guided step (t={int(t)}, guidance {guidance}) -> {list(eps.shape)} in {time.perf_counter() - t0:.2f} s"

    t0 = time.perf_counter()
    frame = decode(models.vae, latents[:, :, 0])
    yield f"vae decode of one frame -> {list(frame.shape)} in {time.perf_counter() - t0:.2f} s"
    if not torch.isfinite(frame).all():
        raise RuntimeError("non-finite output from the VAE decoder")
