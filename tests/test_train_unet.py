"""`latentsync train unet` end to end on synthetic talking faces: checkpoints, resume, validation, model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from latentsync.data.synth import synthesize
from latentsync.errors import ConfigError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.modeldir import ModelDir
from latentsync.models.vae import init_vae, save_vae
from latentsync.train.loop import read_metrics
from latentsync.train.unet import train_unet

CONFIGS = Path(__file__).parent / "configs"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("unet-train")
    synthesize(d / "synth", 2, seconds=(2.4, 2.4), resolution=64, size=(320, 180), seed=1)
    vae = save_vae(init_vae(CONFIGS / "vae_tiny", seed=0), d / "vae")
    config = {
        "model": str(CONFIGS / "unet_tiny.yaml"),
        "vae": str(vae),
        "trainable": "stage1",
        "gradient_checkpointing": True,
        "data": {"root": str(d / "synth" / "aligned"), "val_filelist": "filelist.txt", "batch_size": 1,
                 "num_workers": 0, "samples_per_epoch": 4, "val_samples": 2},
        "loss": {"sync": 0.0, "lpips": 0.0, "trepa": 0.0, "pixel_space": False},
        "optimizer": {"lr": 1e-3},
        "run": {"max_steps": 4, "val_every": 2, "ckpt_every": 2, "log_every": 1, "device": "cpu",
                "output_dir": str(d / "run")},
        "ckpt": {"resume_from": "latest"},
        "validation": {"video": str(d / "synth" / "raw" / "clip_0000.mp4"), "audio": None, "steps": 1},
    }
    path = d / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return {"dir": d, "config": path}


def test_train_checkpoint_validate_and_resume(setup):
    run = setup["dir"] / "run"
    final = train_unet(setup["config"])
    assert read_checkpoint(final).global_step == 4
    assert all(g > 0 for _, g in read_metrics(run / "metrics.csv")["grad_norm"])
    assert set(torch.load(final, weights_only=True)) == {"state_dict", "global_step"}  # upstream's layout
    metrics = read_metrics(run / "metrics.csv")
    assert [s for s, _ in metrics["mse"]] == [1, 2, 3, 4] and len(metrics["val_mse"]) == 2
    assert len(metrics["val_mse_no_audio"]) == 2
    assert (run / "val" / "step-0000004.mp4").is_file() and (run / "curves.png").is_file()
    model = ModelDir.resolve(run / "model")  # a runnable model folder holding the newest checkpoint
    assert read_checkpoint(model.spec.unet_weights).global_step == 4

    final = train_unet(setup["config"], {"run.max_steps": 6})
    assert read_checkpoint(final).global_step == 6
    assert [s for s, _ in read_metrics(run / "metrics.csv")["mse"]] == [1, 2, 3, 4, 5, 6]


def test_training_a_fresh_model_with_the_stage2_rule_is_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match="output layer is all zeros"):
        train_unet(setup["config"], {"trainable": "stage2", "run.output_dir": str(tmp_path / "run")})


def test_stage2_losses_without_weights_are_refused(setup, tmp_path):
    overrides = {"loss.pixel_space": True, "loss.sync": 0.05, "run.output_dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="sync loss weight 0.05 needs a SyncNet"):
        train_unet(setup["config"], overrides)


def test_training_on_cached_latents(setup, tmp_path):
    """data.latent_cache: the frozen VAE encodes every clip once, and steps train on draws from the cache."""
    overrides = {"data.latent_cache": True, "run.max_steps": 2, "run.output_dir": str(tmp_path / "run"),
                 "validation.video": None}
    final = train_unet(setup["config"], overrides)
    assert read_checkpoint(final).global_step == 2
    assert all(g > 0 for _, g in read_metrics(tmp_path / "run" / "metrics.csv")["grad_norm"])
    (latents,) = (setup["dir"] / "synth" / "aligned" / ".cache").glob("latents-*")
    assert sorted(p.name for p in latents.iterdir()) == ["clip_0000.mp4.safetensors", "clip_0001.mp4.safetensors"]
