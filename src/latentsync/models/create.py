"""`latentsync model init` and `model pack`: a freshly initialised model folder (for training from scratch and for
tests), and a compact self-contained copy of a trained one (how the bundled demo model is made)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
import yaml

from latentsync.errors import ConfigError
from latentsync.models.checkpoint import read_checkpoint, save_checkpoint
from latentsync.models.modeldir import BUILTIN_WHISPER, ModelDir, ModelSpec, place_file


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
    unet_yaml = load_unet_yaml(config)
    resolution = int(unet_yaml.get("data", {}).get("resolution", 256))
    is_small = int(UNetConfig.from_dict(unet_yaml["model"]).block_out_channels[0]) < 128
    vae = vae or unet_yaml.get("vae") or ("small" if is_small else "sd-vae-ft-mse")
    whisper_src = Path(whisper) if whisper else None
    if whisper_src is not None and not whisper_src.is_file():
        raise ConfigError(f"Whisper weights not found: {whisper_src}")

    with _staged_folder(out, force) as stage:
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
    return ModelSpec.read(out)


def pack_model_dir(
    src: str | Path,
    out: str | Path,
    *,
    half: bool = True,
    syncnet_config: str | Path | None = None,
    syncnet_weights: str | Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    paste: str | None = None,
    force: bool = False,
) -> ModelSpec:
    """Copy the model `src` (a folder or a name `ModelDir.resolve` knows) to `out`, ready to ship.

    `half` stores the U-Net, VAE and SyncNet weights in float16: half the bytes, and loading casts them back to the
    run's dtype (the rounding moves a small model's output far less than its own sampling noise). A trained
    SyncNet can be added (its preset or yaml, and a checkpoint), and the inference defaults set (`paste`: the
    run's default paste, `upstream` or `seamless`). Assembled next to `out` and renamed into place, like
    `create_model_dir`.
    """
    from latentsync.models.syncnet import load_syncnet_yaml
    from latentsync.models.vae import load_vae, save_vae

    if (syncnet_config is None) != (syncnet_weights is None):
        raise ConfigError("a SyncNet needs both its config and its weights")
    source = ModelDir.resolve(src).spec
    out = Path(out)
    with _staged_folder(out, force) as stage:
        spec = ModelSpec(
            root=stage,
            name=out.name,
            resolution=source.resolution,
            unet_config=stage / "unet.yaml",
            unet_weights=stage / "latentsync_unet.pt",
            vae=stage / "vae",
            whisper=source.whisper,
            inference={**source.inference, **({"steps": steps} if steps else {}),
                       **({"guidance_scale": guidance} if guidance else {}), **({"paste": paste} if paste else {})},
        )
        place_file(source.unet_config, spec.unet_config)
        _copy_weights(source.unet_weights, spec.unet_weights, half)
        vae = load_vae(source.vae)
        save_vae(vae.half() if half else vae, spec.vae)
        if isinstance(source.whisper, Path):
            spec.whisper = stage / "whisper" / source.whisper.name
            place_file(source.whisper, spec.whisper)
        sync_config, sync_weights = syncnet_config, syncnet_weights
        if sync_config is None and source.syncnet_config is not None:
            sync_config, sync_weights = source.syncnet_config, source.syncnet_weights
        if sync_config is not None and sync_weights is not None:
            spec.syncnet_config, spec.syncnet_weights = stage / "syncnet.yaml", stage / "stable_syncnet.pt"
            spec.syncnet_config.write_text(yaml.safe_dump(load_syncnet_yaml(str(sync_config)), sort_keys=False))
            _copy_weights(Path(sync_weights), spec.syncnet_weights, half)
        spec.write()
    return ModelSpec.read(out)


@contextlib.contextmanager
def _staged_folder(out: Path, force: bool) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces `out` when the block succeeds and is removed when it fails,
    so a model folder is either complete or absent."""
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield stage
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _copy_weights(src: Path, dst: Path, half: bool) -> None:
    """A checkpoint in the official `{state_dict, global_step}` layout, floating tensors in float16 if `half`."""
    ckpt = read_checkpoint(src)
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    save_checkpoint(dst, state, global_step=ckpt.global_step)
