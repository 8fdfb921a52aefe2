"""VAE loading in every supported form, latent scaling, and DDIM with upstream's constants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.scheduler import make_scheduler
from latentsync.models.vae import SCALING_FACTOR, decode, encode, init_vae, load_vae, save_vae, vae_config


def test_sd_vae_config_is_sd_vae_ft_mse_shaped():
    cfg = vae_config("sd-vae-ft-mse")
    assert cfg["block_out_channels"] == [128, 256, 512, 512]
    assert cfg["latent_channels"] == 4 and cfg["layers_per_block"] == 2
    assert cfg["scaling_factor"] == SCALING_FACTOR == 0.18215
    with pytest.raises(ConfigError, match="unknown VAE config"):
        vae_config("nope")


def test_vae_roundtrip_folder_and_single_file(tmp_path):
    vae = init_vae("small", seed=3).eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ref = vae.decode(vae.encode(x).latent_dist.mean).sample
    save_vae(vae, tmp_path / "vae")
    single = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(single))
    for source in (tmp_path / "vae", single):
        loaded = load_vae(source)
        with torch.no_grad():
            out = loaded.decode(loaded.encode(x).latent_dist.mean).sample
        assert torch.equal(out, ref), source


def test_encode_samples_then_scales_and_decode_inverts_the_scale():
    vae = init_vae("small", seed=0).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
        eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(0))
        z = encode(vae, x, torch.Generator().manual_seed(0))
        assert z.shape == (2, 4, 4, 4)
        assert torch.allclose(z, (dist.mean + dist.std * eps) * SCALING_FACTOR, atol=1e-6)
        assert torch.allclose(decode(vae, dist.mean * SCALING_FACTOR), vae.decode(dist.mean).sample, atol=1e-4)


def test_vae_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_vae(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json"):
        load_vae(tmp_path / "empty")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_vae(bad)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"encoder.conv_in.weight": torch.zeros(32, 3, 3, 3)}, str(wrong))
    with pytest.raises(CheckpointError, match="missing"):
        load_vae(wrong)


def test_ddim_matches_upstream_constants():
    s = make_scheduler()
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2  # scaled_linear
    assert np.allclose(s.betas.numpy(), betas, atol=1e-9)
    assert s.final_alpha_cumprod.item() == pytest.approx(s.alphas_cumprod[0].item())  # set_alpha_to_one False
    s.set_timesteps(20)
    assert s.timesteps.tolist() == list(range(951, 0, -50))  # leading spacing + steps_offset 1
    assert s.config.prediction_type == "epsilon" and not s.config.clip_sample


def test_ddim_step_recovers_x0_from_exact_noise():
    """With eta 0 and the true epsilon, one step from t to the previous t stays on the same trajectory."""
    s = make_scheduler()
    s.set_timesteps(20)
    x0 = torch.randn(1, 4, 2, 8, 8)
    eps = torch.randn_like(x0)
    t, t_prev = s.timesteps[0], s.timesteps[1]
    xt = s.add_noise(x0, eps, t)
    out = s.step(eps, t, xt, eta=0.0)
    assert torch.allclose(out.pred_original_sample, x0, atol=1e-4)
    assert torch.allclose(out.prev_sample, s.add_noise(x0, eps, t_prev), atol=1e-4)
