"""`latentsync train unet CONFIG`: train the lip-sync U-Net (stage 1, stage 2, or stage 2 efficient).

One training step is `UNetTrainStep` (noise MSE, plus the SyncNet / LPIPS / TREPA pixel losses in stage 2); this
module is the loop around it: data, optimizer over the stage's trainable parameters, mixed precision, gradient
accumulation and clipping (`loop.Stepper`), checkpoints in the official `{"state_dict", "global_step"}` layout,
resume, a metrics CSV and curves, validation loss, and a validation video made by the real inference pipeline.

`run.output_dir/model/` is a complete model folder from the first checkpoint on: its U-Net file is the newest
checkpoint, so `latentsync run --model <output_dir>/model` works during and after training. Under torchrun every
process trains on its own samples and DDP averages the gradients.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from latentsync.data.dataset import UNetDataset, prepare_cache, read_filelist
from latentsync.data.latents import LatentCache
from latentsync.errors import ConfigError
from latentsync.face.mask import load_mask
from latentsync.models.modeldir import BUILTIN_WHISPER, ModelDir, ModelSpec, Models, place_file
from latentsync.models.scheduler import make_scheduler
from latentsync.models.unet import UNet3DConditionModel, UNetConfig, load_unet_yaml
from latentsync.models.unet.loading import load_unet_weights
from latentsync.models.vae import load_vae
from latentsync.models.whisper import load_whisper_encoder
from latentsync.pipeline.progress import progress_bar
from latentsync.train import loop
from latentsync.train.loop import CkptConfig, OptimizerConfig, RunConfig
from latentsync.train.losses import LossWeights
from latentsync.train.schedule import set_lr
from latentsync.train.unet_step import METRICS as STEP_METRICS
from latentsync.train.unet_step import UNetTrainStep, trainable_parameters, training_rule

log = logging.getLogger(__name__)
METRICS = (*STEP_METRICS, "grad_norm", "lr", "val_mse", "val_mse_no_audio")


@dataclass
class UNetDataConfig:
    root: str = ""  # folder with the aligned clips and filelist.txt
    filelist: str = "filelist.txt"
    val_filelist: str | None = None  # held-out clips for the validation loss
    num_frames: int = 16
    batch_size: int = 1  # per process
    num_workers: int = 4
    samples_per_epoch: int = 100_000
    val_samples: int = 16
    whisper: str = BUILTIN_WHISPER  # the audio encoder the U-Net is conditioned on (a path, or builtin:tiny.en)
    # Encode every frame once with the frozen VAE and store its posterior (data/latents.py): steps then draw
    # latents instead of running the encoder three times; worth it when the VAE is a large part of a step.
    latent_cache: bool = False


@dataclass
class LossConfig:
    recon: float = 1.0
    sync: float = 0.05
    lpips: float = 0.1
    trepa: float = 10.0
    pixel_space: bool = True  # decode the one-step x0 estimate for the pixel losses (stage 2)
    mixed_noise_alpha: float | None = 1.0  # null: one noise draw repeated over frames


@dataclass
class UNetCkptConfig(CkptConfig):
    init_from: str | None = None  # a checkpoint or model folder to start from (stage 2 starts from stage 1)
    syncnet_path: str | None = None  # frozen SyncNet for the sync loss
    syncnet_config: str = "syncnet_16_pixel_attn"
    vgg_path: str | None = None  # torchvision-layout VGG16 weights for LPIPS
    trepa_path: str | None = None  # VideoMAE-v2 ViT-g weights for TREPA


@dataclass
class ValidationConfig:
    video: str | None = None  # a clip (and speech) to lip-sync at every run.val_every steps
    audio: str | None = None
    steps: int = 20
    guidance: float = 1.5


@dataclass
class UNetTrainConfig:
    model: Any = "stage2_512"  # a U-Net preset, a yaml path, or an inline upstream config (model/data/run)
    vae: str = ""  # diffusers VAE folder or file (frozen)
    # What trains: null = upstream's rule for the model (everything without motion modules, else the model yaml's
    # run.trainable_modules), or stage1 (everything) | stage2 | stage2_efficient | a list of name substrings.
    trainable: Any = None
    gradient_checkpointing: bool = True
    data: UNetDataConfig = field(default_factory=UNetDataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ckpt: UNetCkptConfig = field(default_factory=UNetCkptConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


def train_unet(config_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Path:
    """Train (or resume) from a training YAML; returns the final checkpoint. Run under torchrun for DDP."""
    cfg = loop.load_config(UNetTrainConfig, loop.resolve_config(config_path), overrides)
    unet_yaml = load_unet_yaml(cfg.model) if isinstance(cfg.model, str) else dict(cfg.model)
    return loop.distributed_run(cfg.run, lambda env: _train(cfg, unet_yaml, env))


def _train(cfg: UNetTrainConfig, unet_yaml: dict, env: loop.Distributed) -> Path:
    data, run = cfg.data, cfg.run
    if not data.root:
        raise ConfigError("data.root is not set (the folder with filelist.txt); pass --set data.root=DIR")
    if not cfg.vae:
        raise ConfigError("vae is not set (a diffusers VAE folder); pass --set vae=DIR")
    resolution = int(unet_yaml.get("data", {}).get("resolution", 256))
    whisper = _whisper_path(data.whisper)
    out = Path(run.output_dir)
    model_dir = out / "model"
    filelists = [f for f in (data.filelist, data.val_filelist) if f]
    vae = load_vae(cfg.vae, device=env.device)
    latents = LatentCache(data.root, cfg.vae, load_mask(resolution)) if data.latent_cache else None
    if env.main:
        for filelist in filelists:
            prepare_cache(data.root, filelist, encoder_path=whisper, workers=data.num_workers)
        if latents is not None:
            latents.prepare([clip for f in filelists for clip in read_filelist(data.root, f)], vae)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(loop.config_dict(cfg), sort_keys=False))
    loop.barrier()

    unet = UNet3DConditionModel(UNetConfig.from_dict(unet_yaml["model"])).to(env.device)
    if cfg.ckpt.init_from:
        init = Path(cfg.ckpt.init_from)
        report = load_unet_weights(unet, ModelDir.resolve(init).spec.unet_weights if init.is_dir() else init)
        log.info("initialised from %s (%d missing, %d unexpected)", init, len(report.missing), len(report.unexpected))
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = trainable_parameters(unet, cfg.trainable or training_rule(unet_yaml))
    if not unet.conv_out.weight.requires_grad and not unet.conv_out.weight.any():
        raise ConfigError("the U-Net's output layer is all zeros (a fresh model) and not trained, so no gradient can "
                          "flow: train everything first (trainable: stage1, or init_from a trained model)")
    model: nn.Module = unet
    if env.world_size > 1:
        model = nn.parallel.DistributedDataParallel(unet, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(params, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    stepper = loop.Stepper(model, optimizer, env.device, run.mixed_precision, run.grad_accum, run.grad_clip)
    train_step = _make_step(cfg, model, vae, resolution, env)

    sources = {"encoder_path": whisper, "latents": latents, "frames": latents is None or train_step.decodes}
    train_set = UNetDataset(data.root, data.filelist, resolution, data.num_frames,
                            samples_per_epoch=data.samples_per_epoch, seed=run.seed, **sources)
    loader = loop.make_loader(train_set, data.batch_size, data.num_workers, env)
    val_loader = None
    if data.val_filelist and env.main:
        val_set = UNetDataset(data.root, data.val_filelist, resolution, data.num_frames,
                              samples_per_epoch=data.val_samples, seed=run.seed + 1, **sources)
        val_loader = DataLoader(val_set, data.batch_size, num_workers=data.num_workers)

    checkpoints = loop.Checkpointer(out / "checkpoints", run.keep_last)
    step = checkpoints.resume(cfg.ckpt.resume_from, model, stepper)
    metrics = loop.MetricsLog(out / "metrics.csv", METRICS, resume_step=step, enabled=env.main)
    batches = loop.endless(loader, train_set, lambda: step)
    sums: dict[str, float] = {}
    with progress_bar("train unet", unit="step", quiet=not env.main) as progress:
        while step < run.max_steps:
            model.train()
            for _ in range(run.grad_accum):
                with stepper.autocast():
                    loss, parts = train_step(next(batches))
                stepper.backward(loss)
                loop.accumulate(sums, **{k: v / run.grad_accum for k, v in parts.items()})
            lr = set_lr(optimizer, cfg.optimizer, step, run.max_steps)
            loop.accumulate(sums, grad_norm=stepper.step(), lr=lr, n=1)
            step += 1
            if step % run.log_every == 0 or step == run.max_steps:
                n = sums.pop("n")
                metrics.log(step, **{k: v / n for k, v in sums.items()})
                sums.clear()
            if step % run.ckpt_every == 0 or step == run.max_steps:
                path = checkpoints.save(step, model, stepper)
                if env.main:
                    _publish_model(model_dir, cfg, unet_yaml, resolution, path)
            if env.main and (step % run.val_every == 0 or step == run.max_steps):
                if val_loader is not None:
                    metrics.log(step, **_validate(train_step, model, val_loader, run.seed))
                if cfg.validation.video and (model_dir / "model.yaml").is_file():
                    _validation_video(cfg, unet, vae, whisper, model_dir, out / "val" / f"step-{step:07d}.mp4", env)
            progress(step, run.max_steps)
    if env.main:
        loop.plot_curves(out / "metrics.csv", out / "curves.png")
    final = checkpoints.latest()
    if final is None:
        final = checkpoints.save(step, model, stepper)
    return final


def _make_step(cfg: UNetTrainConfig, model: nn.Module, vae: nn.Module, resolution: int, env: loop.Distributed) -> UNetTrainStep:
    """The training step with the loss models the weights ask for; a missing one is refused by UNetTrainStep."""
    from latentsync.models.syncnet import load_syncnet, load_syncnet_yaml
    from latentsync.train.lpips import load_lpips
    from latentsync.train.trepa import load_trepa

    lc, ck = cfg.loss, cfg.ckpt
    weights = LossWeights(recon=lc.recon, sync=lc.sync, lpips=lc.lpips, trepa=lc.trepa)
    half = torch.float16 if env.device.type == "cuda" else torch.float32  # frozen loss networks
    syncnet = lpips = trepa = None
    syncnet_resolution = 256
    if lc.pixel_space and weights.sync > 0 and ck.syncnet_path:
        syncnet = load_syncnet(ck.syncnet_config, ck.syncnet_path, device=env.device, dtype=half)
        syncnet_resolution = int(load_syncnet_yaml(ck.syncnet_config).get("data", {}).get("resolution", 256))
    if lc.pixel_space and weights.lpips > 0 and ck.vgg_path:
        lpips = load_lpips(ck.vgg_path, device=env.device)
    if lc.pixel_space and weights.trepa > 0 and ck.trepa_path:
        trepa = load_trepa(ck.trepa_path, device=env.device, dtype=half, gradient_checkpointing=True)
    generator = torch.Generator().manual_seed(cfg.run.seed + env.rank)
    return UNetTrainStep(model, vae, load_mask(resolution), make_scheduler(), weights, syncnet, lpips, trepa,
                         pixel_space=lc.pixel_space, mixed_noise_alpha=lc.mixed_noise_alpha,
                         syncnet_resolution=syncnet_resolution, generator=generator)


@torch.no_grad()
def _validate(step: UNetTrainStep, model: nn.Module, loader: DataLoader, seed: int) -> dict[str, float]:
    """Noise MSE on the fixed validation samples with fixed noise, so the curve compares like with like.

    `val_mse_no_audio` is the same with the audio features zeroed (the unconditional input of guidance): the gap
    between the two is how much the U-Net has learned to take from the speech.
    """
    model.eval()
    saved = step.generator
    totals = {"val_mse": 0.0, "val_mse_no_audio": 0.0}
    count = 0
    for name in totals:
        step.generator = torch.Generator().manual_seed(seed)
        count = 0
        for batch in loader:
            if name == "val_mse_no_audio":
                batch = {**batch, "audio": torch.zeros_like(batch["audio"])}
            _, parts = step(batch)
            n = len(batch["audio"])
            totals[name], count = totals[name] + parts["mse"] * n, count + n
    step.generator = saved
    model.train()
    return {name: total / count for name, total in totals.items()}


def _publish_model(model_dir: Path, cfg: UNetTrainConfig, unet_yaml: dict, resolution: int, ckpt: Path) -> None:
    """Keep `model_dir` a runnable model folder whose U-Net is the newest checkpoint."""
    spec = ModelSpec(
        root=model_dir,
        name=model_dir.parent.name,
        resolution=resolution,
        unet_config=model_dir / "unet.yaml",
        unet_weights=model_dir / "latentsync_unet.pt",
        vae=model_dir / "vae",
        whisper=cfg.data.whisper if cfg.data.whisper.startswith("builtin:") else model_dir / "whisper" / "whisper.pt",
        inference={"steps": cfg.validation.steps, "guidance_scale": cfg.validation.guidance},
    )
    if not spec.unet_config.is_file():
        model_dir.mkdir(parents=True, exist_ok=True)
        spec.unet_config.write_text(yaml.safe_dump(unet_yaml, sort_keys=False))
        vae = Path(cfg.vae)
        for src in sorted(vae.iterdir()) if vae.is_dir() else [vae]:
            place_file(src, spec.vae / src.name if vae.is_dir() else spec.vae)
        if isinstance(spec.whisper, Path):
            place_file(Path(cfg.data.whisper), spec.whisper)
    place_file(ckpt, spec.unet_weights)
    spec.write()


def _validation_video(cfg: UNetTrainConfig, unet: nn.Module, vae: nn.Module, whisper: Path, model_dir: Path,
                      out: Path, env: loop.Distributed) -> None:
    """Lip-sync the validation clip with the live U-Net through the inference pipeline."""
    from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions

    unet.eval()
    models = Models(spec=ModelSpec.read(model_dir), unet=unet, vae=vae,
                    audio_encoder=load_whisper_encoder(whisper, device=env.device), syncnet=None,
                    unet_yaml={}, device=env.device, dtype=torch.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = LipSyncPipeline(models).run(cfg.validation.video, cfg.validation.audio, out,
                                         RunOptions(steps=cfg.validation.steps, guidance=cfg.validation.guidance))
    log.info("validation video %s (%d frames)", out, report.frames)
    unet.train()


def _whisper_path(value: str) -> Path:
    if value == BUILTIN_WHISPER:
        from latentsync.models.whisper_ct2 import tiny_en_path

        return tiny_en_path()
    if value.startswith("builtin:"):
        raise ConfigError(f"data.whisper: unknown builtin {value!r} (known: {BUILTIN_WHISPER})")
    return Path(value)

