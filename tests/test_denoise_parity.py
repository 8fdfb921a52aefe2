"""The model side of inference in upstream's order of operations, written out from its documented behaviour
(../shared/reference: SYSTEM_FACTS.md "Inference details", pipeline_constants.json) and compared with
`ChunkDenoiser` on a full chunk and a short last chunk, on a mask with a soft edge.

Upstream (a229c39), per video: one [1, 4, 1, h, w] noise draw times init_noise_sigma. Per chunk of up to 16 frames
(ceil(N / 16) chunks; the last has the frames that are left): the masked frames' latents are drawn from the VAE
posterior with the run's generator, then the unmasked (reference) frames' latents; DDIM with eta 0 and guidance
(zero audio as the unconditional half of one doubled batch); decode; paste the original pixels back where the
mask keeps them, on the unclamped decode; only then clamp to [-1, 1] and quantise.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from latentsync.pipeline.denoise import ChunkDenoiser, DenoiseSettings
from latentsync.pipeline.lipsync import LipSyncPipeline

SETTINGS = DenoiseSettings(steps=3, guidance=1.5, seed=1247)
SCALE = 0.18215


@pytest.fixture(scope="module")
def pipeline(tiny_model) -> LipSyncPipeline:
    pipeline = LipSyncPipeline.from_model(tiny_model, "cpu", "fp32")
    # A random decoder stays inside [-1, 1]; a trained one overshoots on highlights and dark edges. Amplify its
    # output so that the decode leaves [-1, 1] and the order of paste and clamp shows.
    conv_out = pipeline.models.vae.decoder.conv_out
    with torch.no_grad():
        conv_out.weight.mul_(30)
        conv_out.bias.mul_(30)
    return pipeline


@pytest.fixture(scope="module")
def chunks(pipeline) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A full chunk of 16 crops and a short last chunk of 5, with random audio tokens."""
    res = pipeline.models.resolution
    gen = torch.Generator().manual_seed(0)
    base = F.interpolate(torch.rand(21, 3, 8, 8, generator=gen), size=(res, res), mode="bicubic")
    crops = (base.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    audio = torch.randn(21, 50, 384, generator=gen)
    return [(crops[:16], audio[:16]), (crops[16:], audio[16:])]


def upstream_order(pipeline: LipSyncPipeline, chunks, clamp_first: bool = False) -> list[torch.Tensor]:
    """The chunks as upstream computes them (module docstring); `clamp_first` is the order this project used."""
    models, res = pipeline.models, pipeline.models.resolution
    config = json.loads((Path(__file__).parents[2] / "shared/reference/pipeline_constants.json").read_text())
    scheduler = DDIMScheduler.from_config(config["scheduler"])
    gen = torch.Generator().manual_seed(SETTINGS.seed)
    h = res // 8
    noise = torch.randn(1, 4, 1, h, h, generator=gen) * scheduler.init_noise_sigma
    pixel_mask = torch.from_numpy(np.array(pipeline.mask))[None, None]
    latent_mask = F.interpolate(pixel_mask, size=(h, h))  # nearest, the torch default
    results = []
    with torch.no_grad():
        for crops, audio in chunks:
            frames = crops.shape[0]
            pixels = crops.permute(0, 3, 1, 2).float() / 127.5 - 1
            masked = models.vae.encode(pixels * pixel_mask).latent_dist.sample(gen) * SCALE
            ref = models.vae.encode(pixels).latent_dist.sample(gen) * SCALE

            def clip(z: torch.Tensor) -> torch.Tensor:  # [F, c, h, w] -> [1, c, F, h, w]
                return z.permute(1, 0, 2, 3)[None]

            latents = noise.repeat(1, 1, frames, 1, 1)
            condition = [latent_mask[:, :, None].repeat(1, 1, frames, 1, 1), clip(masked), clip(ref)]
            scheduler.set_timesteps(SETTINGS.steps)
            for t in scheduler.timesteps:
                sample = torch.cat([latents, *condition], dim=1)
                both = torch.cat([torch.zeros_like(audio), audio]).reshape(2, frames, *audio.shape[1:])
                uncond, cond = models.unet(torch.cat([sample, sample]), t, both).chunk(2)
                latents = scheduler.step(uncond + SETTINGS.guidance * (cond - uncond), t, latents).prev_sample
            decoded = models.vae.decode(latents[0].permute(1, 0, 2, 3) / SCALE).sample
            if clamp_first:
                decoded = decoded.clamp(-1, 1)
            pasted = decoded * (1 - pixel_mask) + pixels * pixel_mask
            results.append(((pasted / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1))
    return results


@pytest.mark.parametrize("together", [False, True], ids=["chunk-by-chunk", "one-batch"])
def test_chunks_follow_upstreams_order(pipeline, chunks, together):
    """Equal to upstream's computation (to float rounding), the 5-frame last chunk included, whether the chunks
    go through one by one or as one batch (a short chunk is split off and denoised on its own)."""
    denoiser = ChunkDenoiser(pipeline.models, pipeline.mask, SETTINGS)
    ours = denoiser.batch(chunks) if together else [denoiser.batch([c])[0] for c in chunks]
    expected = upstream_order(pipeline, chunks)
    assert [o.shape[0] for o in ours] == [16, 5]
    for got, want in zip(ours, expected):
        assert (got.int() - want.int()).abs().max() <= 1


def test_the_soft_mask_edge_is_pasted_before_the_clamp(pipeline, chunks):
    """On the ring where the mask is strictly between 0 and 1, clamping before the paste gives other pixels; the
    decode there overshoots [-1, 1], so this test can tell the two orders apart."""
    mask = np.array(pipeline.mask)
    ring = (mask > 0.02) & (mask < 0.98)
    assert ring.sum() > 50, "the 64 px mask (Lanczos-resized) has a soft edge"
    upstream, clamped_first = upstream_order(pipeline, chunks[:1]), upstream_order(pipeline, chunks[:1], True)
    gap = (upstream[0].int() - clamped_first[0].int()).abs()[:, ring]
    assert gap.max() > 5
    ours = ChunkDenoiser(pipeline.models, pipeline.mask, SETTINGS).batch(chunks[:1])[0]
    assert (ours.int() - upstream[0].int()).abs()[:, ring].max() <= 1
