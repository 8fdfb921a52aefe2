"""Model folders: init, resolve, load, and the errors a user sees when something is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from latentsync.errors import ConfigError, ModelNotFoundError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.models.create import create_model_dir, pack_model_dir
from latentsync.models.modeldir import ModelDir, ModelSpec
from latentsync.paths import DEMO_MODEL_DIR


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    return create_model_dir("small", tmp_path_factory.mktemp("models") / "small", seed=0, syncnet="small").root


def test_init_writes_official_layout_and_resolves(small_dir):
    spec = ModelDir.resolve(small_dir).spec
    assert spec.resolution == 128
    ckpt = read_checkpoint(spec.unet_weights)
    assert ckpt.global_step == 0 and "conv_in.weight" in ckpt.state_dict
    raw = torch.load(spec.unet_weights, weights_only=True)
    assert set(raw) == {"state_dict", "global_step"}  # exactly what upstream training saves
    assert (spec.vae / "config.json").is_file() and spec.whisper == "builtin:tiny.en" and spec.whisper_path.is_file()
    assert spec.syncnet_weights is not None and spec.syncnet_weights.is_file()
    assert ModelSpec.read(small_dir).required_files() == spec.required_files()


def test_load_gives_working_components(small_dir):
    models = ModelDir.resolve(small_dir).load(with_syncnet=True)
    assert models.syncnet is not None
    latent = models.resolution // 8
    sample = torch.randn(1, 13, 16, latent, latent)
    audio = torch.randn(1, 16, 50, 384)
    with torch.no_grad():
        out = models.unet(sample, torch.tensor(500), encoder_hidden_states=audio)
    assert out.shape == (1, 4, 16, latent, latent)


def test_seed_decides_the_weights(small_dir, tmp_path):
    again = create_model_dir("small", tmp_path / "again", seed=0)
    other = create_model_dir("small", tmp_path / "other", seed=1)
    ref = read_checkpoint(ModelSpec.read(small_dir).unet_weights).state_dict
    same = read_checkpoint(again.unet_weights).state_dict
    diff = read_checkpoint(other.unet_weights).state_dict
    key = "down_blocks.0.resnets.0.conv1.weight"
    assert torch.equal(ref[key], same[key]) and not torch.equal(ref[key], diff[key])


def test_init_refuses_to_overwrite_and_leaves_nothing_on_failure(small_dir, tmp_path):
    with pytest.raises(ConfigError, match="already exists"):
        create_model_dir("small", small_dir)
    with pytest.raises(ConfigError):
        create_model_dir("no-such-preset", tmp_path / "bad")
    assert list(tmp_path.iterdir()) == []


def test_missing_file_names_the_file_and_the_fix(small_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(small_dir, broken)
    (broken / "latentsync_unet.pt").unlink()
    with pytest.raises(ModelNotFoundError, match=r"latentsync_unet\.pt is missing.*latentsync (model init|download)"):
        ModelDir.resolve(broken)


def test_official_names_point_at_download(tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTSYNC_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"latentsync download --model 1\.6"):
        ModelDir.resolve("1.6")
    with pytest.raises(ModelNotFoundError, match="unknown model 'nonsense'"):
        ModelDir.resolve("nonsense")


def test_whisper_is_referenced_by_default_and_copied_on_request(tmp_path):
    from latentsync.models.whisper_ct2 import tiny_en_path

    copied = create_model_dir("small", tmp_path / "copied", whisper=tiny_en_path())
    assert isinstance(copied.whisper, type(tmp_path)) and copied.whisper.parent == copied.root / "whisper"
    assert copied.whisper_path.stat().st_size == tiny_en_path().stat().st_size
    assert "builtin:" not in (copied.root / "model.yaml").read_text()


def test_pack_halves_the_weights_and_keeps_the_model(small_dir, tmp_path):
    """`model pack`: float16 files, half the bytes, loading casts back and the U-Net computes the same thing."""
    packed = pack_model_dir(small_dir, tmp_path / "packed", steps=7, paste="seamless")
    assert packed.inference["steps"] == 7 and packed.inference["paste"] == "seamless"
    assert packed.whisper == "builtin:tiny.en"
    state = read_checkpoint(packed.unet_weights).state_dict
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert read_checkpoint(packed.syncnet_weights).state_dict["audio_encoder.conv_in.weight"].dtype == torch.float16

    def size(root):
        return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    assert size(packed.root) < 0.55 * size(small_dir)
    full, half = ModelDir.resolve(small_dir).load(with_syncnet=True), ModelDir.resolve(packed.root).load(with_syncnet=True)
    assert next(half.unet.parameters()).dtype == torch.float32 and half.syncnet is not None
    torch.manual_seed(0)
    for module in (full.unet.conv_out, half.unet.conv_out):  # a fresh U-Net outputs zeros: give it an output layer
        torch.nn.init.normal_(module.weight, std=0.05, generator=torch.Generator().manual_seed(1))
    sample, audio = torch.randn(1, 13, 16, 16, 16), torch.randn(1, 16, 50, 384)
    with torch.no_grad():
        a = full.unet(sample, torch.tensor(500), encoder_hidden_states=audio)
        b = half.unet(sample, torch.tensor(500), encoder_hidden_states=audio)
        pixels = torch.rand(1, 3, 128, 128) * 2 - 1
        va, vb = full.vae.decode(full.vae.encode(pixels).latent_dist.mean).sample, half.vae.decode(
            half.vae.encode(pixels).latent_dist.mean).sample
    assert a.abs().max() > 0.1 and (a - b).abs().max() < 0.02 * a.abs().max()
    assert (va - vb).abs().max() < 0.02
    with pytest.raises(ConfigError, match="already exists"):
        pack_model_dir(small_dir, packed.root)


def test_demo_is_the_bundled_model():
    spec = ModelDir.resolve("demo").spec
    assert spec.root == DEMO_MODEL_DIR and spec.resolution == 128 and spec.syncnet_weights is not None
    assert spec.inference["paste"] == "seamless"  # no grey rectangle on faces it has not seen
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.rglob("*") if p.is_file()) < 50 * 2**20


def test_a_vae_that_downsamples_4x_gives_the_unet_finer_latents(tmp_path):
    """`small-f4`-style VAEs (one fewer level): inference and the training step size the latents from the VAE."""
    from media.clips import write_clip
    from media.faces import astronaut_frames
    from media.speech import write_audio

    from latentsync.face.mask import load_mask
    from latentsync.models.scheduler import make_scheduler
    from latentsync.models.vae import vae_factor
    from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
    from latentsync.train.losses import LossWeights
    from latentsync.train.unet_step import UNetTrainStep

    configs = Path(__file__).parent / "configs"
    spec = create_model_dir(configs / "unet_tiny.yaml", tmp_path / "f4", vae=configs / "vae_tiny_f4", seed=0)
    pipeline = LipSyncPipeline.from_model(spec.root, "cpu", "fp32")
    assert vae_factor(pipeline.models.vae) == 4
    shapes = []
    pipeline.models.unet.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    video = write_clip(tmp_path / "in.mp4", astronaut_frames(8, size=(320, 240), fps=25), fps=25)
    audio = write_audio(tmp_path / "a.wav", np.zeros(16000 * 8 // 25, np.float32), 16000)
    report = pipeline.run(video, audio, tmp_path / "out.mp4", RunOptions(steps=1))
    assert report.frames == 8 and shapes[0][-2:] == (16, 16)  # 64 px crops / 4
    step = UNetTrainStep(pipeline.models.unet, pipeline.models.vae, load_mask(64), make_scheduler(),
                         LossWeights(sync=0, lpips=0, trepa=0))
    assert step.latent_mask.shape[-2:] == (16, 16)
    real = ModelDir.resolve(create_model_dir("small_f4", tmp_path / "small_f4", seed=0).root).load()
    assert vae_factor(real.vae) == 4 and real.resolution == 128  # the preset names its VAE: 32 x 32 latents
