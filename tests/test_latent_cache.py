"""The U-Net training latent cache: stored posteriors equal a fresh encode, and a step on them equals a step on
the frames; entries follow the clip, the VAE and the mask; held-out lists name their own folder's clips."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.data.dataset import UNetDataset, read_filelist
from latentsync.data.latents import LatentCache
from latentsync.data.synth import synthesize
from latentsync.face.mask import load_mask
from latentsync.models.scheduler import make_scheduler
from latentsync.models.unet import UNet3DConditionModel, UNetConfig, load_unet_yaml
from latentsync.models.vae import encode, init_vae, latent_moments, load_vae, save_vae
from latentsync.models.whisper_ct2 import tiny_en_path
from latentsync.train.losses import LossWeights
from latentsync.train.unet_step import UNetTrainStep

CONFIGS = Path(__file__).parent / "configs"
RES = 64


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("latents")
    synthesize(d / "synth", 2, seconds=(2.4, 2.4), resolution=RES, size=(320, 180), seed=3)
    vae_dir = save_vae(init_vae(CONFIGS / "vae_tiny", seed=0), d / "vae")
    root = d / "synth" / "aligned"
    cache = LatentCache(root, vae_dir, load_mask(RES))
    cache.prepare(read_filelist(root, "filelist.txt"), load_vae(vae_dir), quiet=True)
    return {"dir": d, "root": root, "vae_dir": vae_dir, "cache": cache}


def _datasets(setup: dict) -> tuple[UNetDataset, UNetDataset]:
    common = dict(encoder_path=tiny_en_path(), samples_per_epoch=4, seed=11)
    pixels = UNetDataset(setup["root"], "filelist.txt", RES, **common)
    cached = UNetDataset(setup["root"], "filelist.txt", RES, latents=setup["cache"], frames=False, **common)
    return pixels, cached


def test_cached_moments_are_the_vae_posterior_of_the_sampled_windows(setup: dict) -> None:
    pixels, cached = _datasets(setup)
    a, b = pixels[2], cached[2]
    assert "frames" not in b and b["latent_mean"].shape == (16, 4, RES // 8, RES // 8)
    torch.testing.assert_close(a["audio"], b["audio"])
    vae = load_vae(setup["vae_dir"])
    mask = torch.from_numpy(np.array(load_mask(RES)))
    with torch.no_grad():
        for frames, prefix in ((a["frames"], "latent"), (a["frames"] * mask, "masked"), (a["ref_frames"], "ref")):
            mean, std = latent_moments(vae, frames)
            torch.testing.assert_close(b[f"{prefix}_mean"], mean, atol=2e-3, rtol=2e-3)  # float16 storage
            torch.testing.assert_close(b[f"{prefix}_std"], std, atol=2e-3, rtol=2e-3)


def test_a_step_on_cached_latents_equals_a_step_on_frames(setup: dict) -> None:
    """Same seed, same sample: the loss is the same whether the step encodes the frames or draws from the cache."""
    pixels, cached = _datasets(setup)
    vae = load_vae(setup["vae_dir"])
    torch.manual_seed(0)
    unet = UNet3DConditionModel(UNetConfig.from_dict(load_unet_yaml(str(CONFIGS / "unet_tiny.yaml"))["model"]))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.02)  # a fresh model outputs zeros whatever its input
    losses = []
    for ds in (pixels, cached):
        batch = {k: v.unsqueeze(0) for k, v in ds[1].items()}
        step = UNetTrainStep(unet, vae, load_mask(RES), make_scheduler(), LossWeights(sync=0, lpips=0, trepa=0),
                             generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            losses.append(step(batch)[1]["mse"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)
    with torch.no_grad():  # and the draw itself is diffusers' sample: same generator, same latent
        frames = pixels[1]["frames"]
        mean, std = latent_moments(vae, frames)
        expected = vae.encode(frames).latent_dist.sample(torch.Generator().manual_seed(9)) * 0.18215
        torch.testing.assert_close(encode(vae, frames, torch.Generator().manual_seed(9)), expected)


def test_entries_follow_the_clip_the_vae_and_the_mask(setup: dict, tmp_path: Path) -> None:
    cache, root = setup["cache"], setup["root"]
    clip = read_filelist(root, "filelist.txt")[0]
    entry = cache.path_for(clip)
    assert cache.is_current(clip) and entry.parent.parent == root / ".cache"
    other_vae = save_vae(init_vae(CONFIGS / "vae_tiny", seed=1), tmp_path / "vae")
    assert LatentCache(root, other_vae, load_mask(RES)).dir != cache.dir
    other_mask = np.array(load_mask(RES))
    other_mask[: RES // 4] = 0
    assert LatentCache(root, setup["vae_dir"], other_mask).dir != cache.dir
    stamp = clip.stat().st_mtime_ns
    os.utime(clip, ns=(stamp + 10**9, stamp + 10**9))  # the clip changed: its entry is stale and is rebuilt
    assert not cache.is_current(clip)
    cache.prepare([clip], load_vae(setup["vae_dir"]), quiet=True)
    assert cache.is_current(clip) and not list(entry.parent.glob(".*tmp"))


def test_a_held_out_list_names_clips_of_its_own_folder(tmp_path: Path) -> None:
    for folder in ("train", "val"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip_0000.mp4").write_bytes(b"")
        (tmp_path / folder / "filelist.txt").write_text("clip_0000.mp4\n")
    assert read_filelist(tmp_path / "train", "filelist.txt") == [tmp_path / "train" / "clip_0000.mp4"]
    held_out = read_filelist(tmp_path / "train", tmp_path / "val" / "filelist.txt")
    assert held_out == [tmp_path / "val" / "clip_0000.mp4"]
