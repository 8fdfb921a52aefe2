"""`latentsync train vae` on synthetic face crops: it learns, publishes a loadable VAE, resumes, checks losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from latentsync.data.synth import synthesize
from latentsync.errors import ConfigError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.vae import load_vae
from latentsync.train.loop import read_metrics
from latentsync.train.vae import FrameDataset, train_vae

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: these small convolutions gain little from two, and lose 5x on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("vae-train")
    synthesize(d / "synth", 2, seconds=(2.0, 2.0), resolution=64, size=(320, 180), seed=1)
    config = {
        "vae": {"config": str(CONFIGS / "vae_tiny")},
        "data": {"root": str(d / "synth" / "aligned"), "resolution": 64, "batch_size": 4, "num_workers": 0,
                 "samples_per_epoch": 1000, "val_samples": 8},
        "optimizer": {"lr": 2e-3},
        "run": {"max_steps": 30, "val_every": 15, "ckpt_every": 15, "log_every": 5, "device": "cpu",
                "output_dir": str(d / "run")},
        "ckpt": {"resume_from": "latest"},
    }
    path = d / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"dir": d, "config": path}


def test_train_publish_and_resume(setup):
    run = setup["dir"] / "run"
    folder = train_vae(setup["config"])
    assert folder == run / "vae" and (run / "curves.png").is_file()
    metrics = read_metrics(run / "metrics.csv")
    psnr = dict(metrics["val_psnr"])
    assert list(psnr) == [0, 15, 30]
    assert psnr[30] > psnr[0] + 5  # measured: 9.1 dB untrained, 15.6 dB after 20 steps
    assert 0.5 < dict(metrics["val_latent_std"])[30] < 1.5  # the latent_std term pulls it from 0.06 to ~1

    ckpt = read_checkpoint(run / "checkpoints" / "checkpoint-30.pt")
    assert ckpt.global_step == 30
    vae = load_vae(folder)  # the published folder is a plain diffusers VAE holding the newest weights
    assert all(torch.equal(value, ckpt.state_dict[key]) for key, value in vae.state_dict().items())
    assert not list(run.glob(".vae.*"))  # no temporary folders left behind

    train_vae(setup["config"], {"run.max_steps": 32})
    assert read_checkpoint(run / "checkpoints" / "checkpoint-32.pt").global_step == 32
    steps = [s for s, _ in read_metrics(run / "metrics.csv")["l1"]]
    assert steps == [5, 10, 15, 20, 25, 30, 32]  # continued from 30, not restarted


def test_lpips_without_vgg_weights_is_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match="loss.lpips 0.1 needs VGG16 weights"):
        train_vae(setup["config"], {"loss.lpips": 0.1, "run.output_dir": str(tmp_path / "run")})


def test_decoder_only_fine_tuning_keeps_the_latents(setup, tmp_path):
    """vae.train=decoder: the encoder and quant_conv come out bit-identical (a U-Net trained on the latents stays
    valid) while the decoder trains; without a VAE to start from it is refused."""
    start = setup["dir"] / "run" / "vae"
    if not start.is_dir():
        train_vae(setup["config"])
    overrides = {"vae.init_from": str(start), "vae.train": "decoder", "run.max_steps": 3, "run.val_every": 3,
                 "run.ckpt_every": 3, "run.output_dir": str(tmp_path / "run")}
    before, after = load_vae(start).state_dict(), load_vae(train_vae(setup["config"], overrides)).state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    with pytest.raises(ConfigError, match="set vae.init_from"):
        train_vae(setup["config"], {"vae.train": "decoder", "run.output_dir": str(tmp_path / "other")})


def test_frames_are_seeded_cropped_and_in_range(setup):
    root = setup["dir"] / "synth" / "aligned"
    a = FrameDataset(root, "filelist.txt", 64, 4, seed=3, crop=32, flip=True)
    b = FrameDataset(root, "filelist.txt", 64, 4, seed=3, crop=32, flip=True)
    assert a[2].shape == (3, 32, 32) and torch.equal(a[2], b[2])
    assert -1 <= a[2].min() and a[2].max() <= 1
    a.set_epoch(1)
    assert not torch.equal(a[2], b[2])
