"""The SD VAE (diffusers `AutoencoderKL`, as `stabilityai/sd-vae-ft-mse`) and LatentSync's latent scaling.

Upstream scales latents by 0.18215 with no shift: `z = sample(q(z|x)) * 0.18215`, `x = decode(z / 0.18215)`.
The VAE can come from a diffusers folder (`config.json` + weights), a single diffusers-format
safetensors file, or a single original-LDM file (e.g. `vae-ft-mse-840000-ema-pruned.safetensors`),
which diffusers converts using our packaged sd-vae-ft-mse config so no hub access is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from latentsync.errors import CheckpointError, ConfigError
from latentsync.models.checkpoint import read_checkpoint
from latentsync.paths import CONFIG_DIR

SCALING_FACTOR = 0.18215
SHIFT_FACTOR = 0.0
VAE_PRESETS = {
    "sd-vae-ft-mse": CONFIG_DIR / "vae" / "sd-vae-ft-mse",
    "small": CONFIG_DIR / "vae" / "small",  # 8x down, as SD: the synthetic demo model
    "small-f4": CONFIG_DIR / "vae" / "small-f4",  # 4x down: a 128 px crop gives 32 x 32 latents, as 1.5 at 256 px
}
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def vae_config(preset_or_dir: str | Path) -> dict:
    """The diffusers config dict of a preset name or of a folder holding `config.json`."""
    folder = VAE_PRESETS.get(str(preset_or_dir), Path(preset_or_dir))
    path = folder / "config.json"
    if not path.is_file():
        raise ConfigError(f"unknown VAE config {preset_or_dir!r}: use one of {sorted(VAE_PRESETS)} or a folder with config.json")
    return json.loads(path.read_text())


def vae_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along each side: 8 for SD's VAE, 4 for `small-f4` (one fewer downsampling level)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def init_vae(preset_or_dir: str | Path = "small", seed: int | None = None) -> AutoencoderKL:
    """A freshly initialised VAE (for training the demo model and for tests)."""
    if seed is not None:
        torch.manual_seed(seed)
    config = {k: v for k, v in vae_config(preset_or_dir).items() if not k.startswith("_")}
    return AutoencoderKL(**config)


def load_vae(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Load a VAE from a diffusers folder or a single weight file (diffusers or LDM key layout)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file() or not any((path / w).is_file() for w in _DIFFUSERS_WEIGHTS):
            raise CheckpointError(f"VAE folder {path} needs config.json and {_DIFFUSERS_WEIGHTS[0]}")
        try:
            # low_cpu_mem_usage needs `accelerate`, which we do not depend on; the VAE is small either way.
            vae = AutoencoderKL.from_pretrained(path, local_files_only=True, low_cpu_mem_usage=False, torch_dtype=dtype)
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot load VAE from {path}: {str(exc).splitlines()[0]}") from None
    elif path.is_file():
        vae = _load_single_file(path).to(dtype=dtype)
    else:
        raise CheckpointError(f"VAE not found: {path}")
    return vae.to(device=device).eval().requires_grad_(False)


def _load_single_file(path: Path) -> AutoencoderKL:
    state = read_checkpoint(path).state_dict
    if any(k.startswith("encoder.down.") for k in state):  # original LDM layout: let diffusers convert it
        return AutoencoderKL.from_single_file(str(path), config=str(VAE_PRESETS["sd-vae-ft-mse"]), local_files_only=True)
    vae = init_vae("sd-vae-ft-mse" if _is_sd_sized(state) else "small")
    missing, unexpected = vae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"VAE file {path} does not fit the sd-vae-ft-mse layout: "
            f"{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    return vae


def _is_sd_sized(state: dict[str, torch.Tensor]) -> bool:
    w = state.get("encoder.conv_in.weight")
    return w is None or w.shape[0] == 128


def save_vae(vae: AutoencoderKL, folder: str | Path) -> Path:
    """Write a diffusers folder (config.json + safetensors), the form `load_vae` reads fastest."""
    vae.save_pretrained(str(folder), safe_serialization=True)
    return Path(folder)


def encode(vae: AutoencoderKL, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels [N, 3, H, W] in [-1, 1] -> scaled latents [N, 4, H/8, W/8], sampled as upstream does."""
    return sample_latents(*latent_moments(vae, pixels), generator)


def latent_moments(vae: AutoencoderKL, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels [N, 3, H, W] in [-1, 1] -> the unscaled posterior's (mean, std), each [N, 4, H/8, W/8].

    The deterministic half of `encode`: a frozen VAE's moments can be stored once and sampled per training step.
    """
    dist = vae.encode(pixels.to(vae.dtype)).latent_dist
    return dist.mean, dist.std


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw from N(mean, std^2), scaled for the U-Net (the draw diffusers' `latent_dist.sample` makes)."""
    where = generator.device if generator is not None else mean.device
    noise = torch.randn(mean.shape, generator=generator, device=where, dtype=mean.dtype).to(mean.device)
    return (mean + std * noise - SHIFT_FACTOR) * SCALING_FACTOR


def decode(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents [N, 4, h, w] -> pixels [N, 3, 8h, 8w] (roughly in [-1, 1], not clamped)."""
    return vae.decode(latents.to(vae.dtype) / SCALING_FACTOR + SHIFT_FACTOR).sample
