"""`latentsync train vae CONFIG`: train the demo model's small VAE (a diffusers `AutoencoderKL`) on face crops.

The real model uses the pretrained sd-vae-ft-mse; this trainer makes the demo's own VAE (and serves research).
Samples are single frames from the aligned clips (`latentsync data synth` writes them), pixels in [-1, 1],
optionally flipped and cropped. The loss is SD's recipe without the discriminator: L1 (+ L2, + LPIPS when VGG16
weights are given) on the reconstruction of a posterior sample, plus a small KL term.

Latent scale. `latentsync.models.vae.encode/decode` scale latents by the constant 0.18215 (not the config's
`scaling_factor`, for upstream compatibility), and the demo U-Net assumes scaled latents with a std near 1, as
SD's are. Nothing else pins the scale of a VAE trained from scratch: at SD's KL weight the KL term is far too weak
to move it within a demo-length run, and a fresh small VAE's latent means have a std of ~0.2-0.3, which scales to ~0.05.
So the loss adds `latent_std * log(std)^2`, std being that of the scaled latent means of the batch: zero at std 1,
the same pull towards 1 from either side. Train and validation stds are logged (`latent_std`, `val_latent_std`);
with `vae_small.yaml` the validation std settles at ~1.1 within 125 steps (channel stds 0.5-1.0, means up to -1.4).

    output_dir/config.yaml        the resolved training config
    output_dir/checkpoints/       checkpoint-<step>.pt (the AutoencoderKL state_dict) + .train.pt (optimizer, RNG)
    output_dir/vae/               diffusers folder of the newest checkpoint, replaced whole at each checkpoint:
                                  what `latentsync model init --vae DIR` and `train unet --set vae=DIR` take
    output_dir/metrics.csv        step, time, loss, l1, mse, kl, lpips, latent_std, grad_norm, lr, val_psnr, ...
    output_dir/curves.png         the metrics, plotted at the end
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from diffusers import AutoencoderKL
from torch import nn
from torch.utils.data import Dataset

from latentsync.data.dataset import read_filelist
from latentsync.errors import ConfigError, VideoError
from latentsync.models.vae import SCALING_FACTOR, init_vae, load_vae, save_vae
from latentsync.pipeline.progress import progress_bar
from latentsync.train import loop
from latentsync.train.loop import CkptConfig, OptimizerConfig, RunConfig
from latentsync.train.schedule import set_lr
from latentsync.video.reader import VideoFrames

log = logging.getLogger(__name__)
METRICS = ("loss", "l1", "mse", "kl", "lpips", "latent_std", "grad_norm", "lr", "val_psnr", "val_latent_std")


@dataclass
class VaeModelConfig:
    config: str = "small"  # VAE preset (small, sd-vae-ft-mse) or a folder with config.json, for a fresh VAE
    init_from: str | None = None  # a VAE folder or file to fine-tune instead (its own architecture; `config` unused)
    # all, or decoder: the encoder (and quant_conv) frozen, so the latents stay exactly what they were and a U-Net
    # trained on them stays valid while the decoder keeps improving (fine-tuning an init_from VAE)
    train: str = "all"


@dataclass
class VaeDataConfig:
    root: str = ""  # folder with the aligned clips and filelist.txt
    filelist: str = "filelist.txt"
    val_filelist: str | None = None  # null: validate on (fixed) frames of the training clips
    resolution: int = 128
    crop: int | None = None  # train on random crops this size (half size: a quarter of the cost); null: whole frames
    flip: bool = True  # random horizontal flips (faces are roughly symmetric)
    batch_size: int = 8  # per process
    num_workers: int = 2
    samples_per_epoch: int = 10_000
    val_samples: int = 64  # fixed by run.seed, the same frames at every validation


@dataclass
class VaeLossConfig:
    l1: float = 1.0
    l2: float = 0.0
    kl: float = 1e-6  # SD's weight, for a KL summed over the latent and a reconstruction summed over the pixels
    latent_std: float = 0.1  # pull of the std of scaled latents towards 1 (see the module docstring)
    lpips: float = 0.0  # needs vgg_path
    vgg_path: str | None = None  # torchvision-layout VGG16 weights for LPIPS


@dataclass
class VaeTrainConfig:
    vae: VaeModelConfig = field(default_factory=VaeModelConfig)
    data: VaeDataConfig = field(default_factory=VaeDataConfig)
    loss: VaeLossConfig = field(default_factory=VaeLossConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(lr=5e-4))
    run: RunConfig = field(default_factory=RunConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)


def train_vae(config_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Path:
    """Train (or resume) from a training YAML; returns the final diffusers VAE folder. Run under torchrun for DDP."""
    cfg = loop.load_config(VaeTrainConfig, loop.resolve_config(config_path), overrides)
    if cfg.loss.lpips > 0 and not cfg.loss.vgg_path:
        raise ConfigError(f"loss.lpips {cfg.loss.lpips} needs VGG16 weights: set loss.vgg_path, or loss.lpips=0")
    if not cfg.data.root:
        raise ConfigError("data.root is not set (the folder with filelist.txt); pass --set data.root=DIR")
    if cfg.vae.train not in ("all", "decoder"):
        raise ConfigError(f"vae.train must be all or decoder, got {cfg.vae.train!r}")
    if cfg.vae.train == "decoder" and not cfg.vae.init_from:
        raise ConfigError("vae.train=decoder fine-tunes a trained VAE's decoder: set vae.init_from to it")
    owns_group = not torch.distributed.is_initialized()
    env = loop.setup_distributed(cfg.run.device, cfg.run.seed)
    try:
        return _train(cfg, env)
    finally:
        if owns_group:
            loop.cleanup()


class FrameDataset(Dataset):
    """Single frames [3, res, res] (or [3, crop, crop]) in [-1, 1]: a random clip, a random frame of it.

    Each item draws from a generator seeded by (seed, epoch, index), so it does not depend on the worker that
    makes it, and a fixed seed gives a fixed validation set. Clips of another size are resized (bicubic).
    """

    def __init__(self, root: str | os.PathLike, filelist: str | os.PathLike, resolution: int, samples_per_epoch: int,
                 seed: int, crop: int | None = None, flip: bool = False) -> None:
        if resolution <= 0 or samples_per_epoch <= 0 or (crop is not None and not 0 < crop <= resolution):
            raise ConfigError(f"need resolution > 0, 0 < crop <= resolution and samples_per_epoch > 0, "
                              f"got {resolution}, {crop}, {samples_per_epoch}")
        self.clips = read_filelist(root, filelist)
        self.resolution, self.samples_per_epoch, self.seed = resolution, samples_per_epoch, seed
        self.crop, self.flip = crop, flip
        self.epoch = 0

    def __len__(self) -> int:
        return self.samples_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        video = _open_video(str(self.clips[int(rng.integers(len(self.clips)))]))
        if video.info.width != video.info.height:
            shape = f"{video.info.width}x{video.info.height}"
            raise VideoError(f"{video.path} is {shape}; training clips must be square face crops")
        k = int(rng.integers(len(video)))
        frame = torch.from_numpy(next(iter(video.iter_range(k, k + 1)))).permute(2, 0, 1).float()
        if frame.shape[-1] != self.resolution:
            size = (self.resolution, self.resolution)
            frame = F.interpolate(frame[None], size=size, mode="bicubic", antialias=True)[0].clamp_(0, 255)
        if self.crop is not None:
            top, left = (int(rng.integers(self.resolution - self.crop + 1)) for _ in range(2))
            frame = frame[:, top : top + self.crop, left : left + self.crop]
        if self.flip and rng.random() < 0.5:
            frame = frame.flip(-1)
        return frame / 127.5 - 1.0


@functools.lru_cache(maxsize=256)
def _open_video(path: str) -> VideoFrames:
    """Keep clips' timelines per process: opening demuxes the whole file, as much work as decoding a frame."""
    return VideoFrames(path)


class Autoencoder(nn.Module):
    """Encode, sample the posterior, decode, as one `forward`: DDP syncs gradients only through `forward`."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction of a posterior sample, posterior mean, posterior log-variance)."""
        posterior = self.vae.encode(pixels).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.mean, posterior.logvar


def vae_loss(model: nn.Module, pixels: torch.Tensor, weights: VaeLossConfig, stepper: loop.Stepper,
             lpips: nn.Module | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted loss of one batch and its unweighted parts (for the metrics).

    LDM sums the reconstruction loss over pixels and the KL over latent elements; dividing both by the pixel
    count keeps SD's ratio (so kl 1e-6 means what it means there) with the reconstruction terms as plain means.
    """
    with stepper.autocast():
        recon, mean, logvar = model(pixels)
    recon, mean, logvar = recon.float(), mean.float(), logvar.float()
    diff = recon - pixels
    l1, mse = diff.abs().mean(), diff.square().mean()
    kl = 0.5 * (mean.square() + logvar.exp() - 1 - logvar).sum() / pixels.numel()
    std = (mean * SCALING_FACTOR).std()
    loss = weights.l1 * l1 + weights.l2 * mse + weights.kl * kl + weights.latent_std * std.log().square()
    parts = {"l1": l1.item(), "mse": mse.item(), "kl": kl.item(), "latent_std": std.item()}
    if lpips is not None:
        perceptual = lpips(recon, pixels).mean()
        loss = loss + weights.lpips * perceptual
        parts["lpips"] = perceptual.item()
    parts["loss"] = loss.item()
    return loss, parts


def _train(cfg: VaeTrainConfig, env: loop.Distributed) -> Path:
    data, run = cfg.data, cfg.run
    out = Path(run.output_dir)
    train_set = FrameDataset(data.root, data.filelist, data.resolution, data.samples_per_epoch, run.seed,
                             crop=data.crop, flip=data.flip)
    loader = loop.make_loader(train_set, data.batch_size, data.num_workers, env)
    val_frames = None
    if env.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(loop.config_dict(cfg), sort_keys=False))
        val_set = FrameDataset(data.root, data.val_filelist or data.filelist, data.resolution, data.val_samples,
                               run.seed + 1)
        val_frames = torch.stack([val_set[i] for i in range(len(val_set))])

    vae = _make_vae(cfg.vae).to(env.device).train().requires_grad_(True)
    if cfg.vae.train == "decoder":
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    model: nn.Module = Autoencoder(vae)
    if env.world_size > 1:
        ids = [env.local_rank] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    stepper = loop.Stepper(model, optimizer, env.device, run.mixed_precision, run.grad_accum, run.grad_clip)
    lpips = None
    if cfg.loss.lpips > 0:
        from latentsync.train.lpips import load_lpips

        lpips = load_lpips(cfg.loss.vgg_path, device=env.device)
    checkpoints = loop.Checkpointer(out / "checkpoints", run.keep_last)
    step = checkpoints.resume(cfg.ckpt.resume_from, vae, stepper)  # the bare VAE: official files hold its keys
    metrics = loop.MetricsLog(out / "metrics.csv", METRICS, resume_step=step, enabled=env.main)
    if step:
        log.info("resumed at step %d", step)
    start = step

    if val_frames is not None and step == 0:
        metrics.log(0, **validate(vae, val_frames, stepper, data.batch_size))
    batches = loop.endless(loader, train_set, lambda: step)
    sums: dict[str, float] = {}
    with progress_bar("train vae", unit="step", quiet=not env.main) as progress:
        while step < run.max_steps:
            model.train()
            for _ in range(run.grad_accum):
                loss, parts = vae_loss(model, next(batches).to(env.device, non_blocking=True), cfg.loss, stepper, lpips)
                stepper.backward(loss)
                _add(sums, **{k: v / run.grad_accum for k, v in parts.items()})
            lr = set_lr(optimizer, cfg.optimizer, step, run.max_steps)
            _add(sums, grad_norm=stepper.step(), lr=lr, n=1)
            step += 1
            if step % run.log_every == 0 or step == run.max_steps:
                n = sums.pop("n")
                metrics.log(step, **{k: v / n for k, v in sums.items()})
                sums.clear()
            if val_frames is not None and (step % run.val_every == 0 or step == run.max_steps):
                scores = validate(vae, val_frames, stepper, data.batch_size)
                metrics.log(step, **scores)
                log.info("step %d: val PSNR %.2f dB, scaled latent std %.3f", step, scores["val_psnr"],
                         scores["val_latent_std"])
            if step % run.ckpt_every == 0 or step == run.max_steps:
                checkpoints.save(step, vae, stepper)
                if env.main:
                    publish_vae(vae, out / "vae")
            progress(step, run.max_steps)
    if env.main:
        if step == start:  # nothing trained (resumed at max_steps, or max_steps 0): publish the VAE as loaded
            publish_vae(vae, out / "vae")
        loop.plot_curves(out / "metrics.csv", out / "curves.png")
    loop.barrier()
    return out / "vae"


def _make_vae(cfg: VaeModelConfig) -> AutoencoderKL:
    if cfg.init_from:
        log.info("fine-tuning %s", cfg.init_from)
        return load_vae(cfg.init_from)
    return init_vae(cfg.config)


@torch.no_grad()
def validate(vae: AutoencoderKL, frames: torch.Tensor, stepper: loop.Stepper, batch_size: int) -> dict[str, float]:
    """Mean PSNR (dB, pixels in [0, 1]) of reconstructions from the latent means, and the std of the scaled means.

    Decoding the mean, not a sample, measures the VAE as the diffusion model uses it: the U-Net's output is
    decoded as it is.
    """
    vae.eval()
    psnr, latents = [], []
    for chunk in frames.split(batch_size):
        pixels = chunk.to(stepper.device)
        with stepper.autocast():
            mean = vae.encode(pixels).latent_dist.mean
            recon = vae.decode(mean).sample
        mse = ((recon.float().clamp(-1, 1) - pixels) / 2).square().mean(dim=(1, 2, 3))
        psnr.append(-10 * torch.log10(mse.clamp_min(1e-10)))
        latents.append(mean.float() * SCALING_FACTOR)
    vae.train()
    return {"val_psnr": torch.cat(psnr).mean().item(), "val_latent_std": torch.cat(latents).std().item()}


def publish_vae(vae: AutoencoderKL, folder: Path) -> Path:
    """Replace `folder` by a diffusers folder of `vae`: written beside it, then swapped in by two renames.

    A reader never sees a half-written folder; between the renames (microseconds) the folder is absent.
    """
    new, old = (folder.with_name(f".{folder.name}.{tag}") for tag in ("new", "old"))
    for stale in (new, old):  # left by an interrupted run
        shutil.rmtree(stale, ignore_errors=True)
    save_vae(vae, new)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def _add(sums: dict[str, float], **values: float) -> None:
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + value
