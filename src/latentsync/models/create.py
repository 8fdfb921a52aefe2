"""`latentsync model init`: a freshly initialised model folder, for training from scratch and for tests."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import yaml

from latentsync.errors import ConfigError
from latentsync.models.checkpoint import save_checkpoint
from latentsync.models.modeldir import BUILTIN_WHISPER, ModelSpec, place_file


def create_model_dir(
    config: str | Path,
    out: str | Path,
    *,
    seed: int = 0,
    vae: str | Path | None = None,
    syncnet: str | Path | None = None,
    whisper: str | Path | None = None,
    force: bool = False,
) -> ModelSpec:
    """Write a complete model folder with random U-Net (and SyncNet) weights.

    `config` is a U-Net preset name (stage1, stage2, stage2_efficient, stage1_512, stage2_512, small) or an
    upstream-style yaml. The VAE defaults to the `small` preset for the small U-Net and to the sd-vae-ft-mse
    shape otherwise. The audio encoder defaults to a reference to the packaged real Whisper tiny.en weights
    (`builtin:tiny.en`, converted once); `whisper=PATH` copies that file into the folder instead.
    The folder is assembled next to `out` and renamed into place, so a failure leaves nothing behind.
    """
    from latentsync.models.syncnet import StableSyncNet, load_syncnet_yaml
    from latentsync.models.unet import UNet3DConditionModel, UNetConfig, load_unet_yaml
    from latentsync.models.vae import init_vae, save_vae

    out = Path(out)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    unet_yaml = load_unet_yaml(config)
    resolution = int(unet_yaml.get("data", {}).get("resolution", 256))
    is_small = int(UNetConfig.from_dict(unet_yaml["model"]).block_out_channels[0]) < 128
    vae = vae or ("small" if is_small else "sd-vae-ft-mse")
    whisper_src = Path(whisper) if whisper else None
    if whisper_src is not None and not whisper_src.is_file():
        raise ConfigError(f"Whisper weights not found: {whisper_src}")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(UNetConfig.from_dict(unet_yaml["model"]))
        spec = ModelSpec(
            root=stage,
            name=out.name,
            resolution=resolution,
            unet_config=stage / "unet.yaml",
            unet_weights=stage / "latentsync_unet.pt",
            vae=stage / "vae",
            whisper=stage / "whisper" / whisper_src.name if whisper_src else BUILTIN_WHISPER,
            inference={
                "steps": int(unet_yaml.get("run", {}).get("inference_steps", 20)),
                "guidance_scale": float(unet_yaml.get("run", {}).get("guidance_scale", 1.5)),
            },
        )
        spec.unet_config.write_text(yaml.safe_dump(unet_yaml, sort_keys=False))
        save_checkpoint(spec.unet_weights, unet.state_dict(), global_step=0)
        del unet
        save_vae(init_vae(vae, seed=seed), spec.vae)
        if whisper_src is not None:
            place_file(whisper_src, stage / "whisper" / whisper_src.name)
        if syncnet is not None:
            syncnet_yaml = load_syncnet_yaml(syncnet)
            torch.manual_seed(seed)
            spec.syncnet_config = stage / "syncnet.yaml"
            spec.syncnet_weights = stage / "stable_syncnet.pt"
            spec.syncnet_config.write_text(yaml.safe_dump(syncnet_yaml, sort_keys=False))
            save_checkpoint(spec.syncnet_weights, StableSyncNet(syncnet_yaml["model"]).state_dict(), global_step=0)
        spec.write()
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return ModelSpec.read(out)
