"""Train StableSyncNet: lower-half face frames vs a mel window, BCE on the cosine of their embeddings.

Upstream's recipe (configs/train/syncnet_16_pixel_attn.yaml): batches of 16-frame windows, half of them paired
with their own mel (y = 1), half with the mel of another window of the same clip (y = 0); AdamW at a constant
1e-5, fp16 with loss scaling, gradient clipping at 1.0; DDP over torchrun. Checkpoints are official SyncNet files
(`{"state_dict", "global_step"}`) next to a `syncnet.yaml`, so `load_syncnet(yaml, checkpoint)` reads them and
the U-Net trainer can use them as its sync loss.

    output_dir/config.yaml        the resolved training config
    output_dir/syncnet.yaml       the model config, upstream format
    output_dir/checkpoints/       checkpoint-<step>.pt (+ .train.pt: optimizer, scaler, RNG)
    output_dir/metrics.csv        step, time, loss, acc, grad_norm, lr, val_loss, val_acc, multiway, val_rank
    output_dir/curves.png         the metrics, plotted at the end

`loss.multiway` (off by default: upstream's recipe) adds multi-way matching: each in-sync window's frames must
also pick their own mel out of `loss.negatives` mels of the same clip shifted by at least `loss.min_shift` frames
(cross-entropy over cosines / `loss.temperature`). The pair loss gives one bit per pair; the matching term sets
every window against several offsets at once, all from the same voice and face, so only the timing can tell them
apart (mels of other clips would let it match voices to faces instead). See docs/real-faces.md for what it did
for a small CPU run on real faces. Scoring is unchanged: the cosine.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from latentsync.audio.mel import mel_window_length
from latentsync.data.dataset import SyncNetDataset, prepare_cache
from latentsync.errors import ConfigError
from latentsync.models.syncnet import StableSyncNet, SyncNetConfig, load_syncnet_yaml, sync_probability, visual_input
from latentsync.pipeline.progress import progress_bar
from latentsync.train import loop
from latentsync.train.loop import CkptConfig, OptimizerConfig, RunConfig
from latentsync.train.schedule import set_lr

log = logging.getLogger(__name__)
METRICS = ("loss", "acc", "grad_norm", "lr", "val_loss", "val_acc", "multiway", "val_rank")


@dataclass
class SyncNetDataConfig:
    root: str = ""  # data folder; relative paths are relative to the working directory
    filelist: str = "filelist.txt"  # relative to root
    val_filelist: str | None = None  # held-out clips; no validation without it
    resolution: int = 256
    num_frames: int = 16
    batch_size: int = 256  # per process
    num_workers: int = 4
    samples_per_epoch: int = 100_000
    val_samples: int = 1024  # fixed by run.seed, the same set at every validation
    augment: bool = False  # vary the training windows' frames: flip, contrast, shift (never the validation's)


@dataclass
class SyncNetLossConfig:
    multiway: float = 0.0  # weight of the multi-way matching term (0: upstream's pair BCE only)
    negatives: int = 4  # shifted mels per window for the matching term
    min_shift: int = 4  # frames: the smallest offset of a shifted mel
    temperature: float = 0.1  # of the matching term's softmax over cosines in [0, 1]


@dataclass
class SyncNetTrainConfig:
    model: Any = "syncnet_16_pixel_attn"  # a SyncNet preset, a yaml path, or an inline upstream `model:` section
    data: SyncNetDataConfig = field(default_factory=SyncNetDataConfig)
    loss: SyncNetLossConfig = field(default_factory=SyncNetLossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)


def train_syncnet(config_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Path:
    """Train (or resume) from a training YAML; returns the final checkpoint. Run under torchrun for DDP."""
    cfg = loop.load_config(SyncNetTrainConfig, loop.resolve_config(config_path), overrides)
    model_yaml = syncnet_yaml(cfg)
    return loop.distributed_run(cfg.run, lambda env: _train(cfg, model_yaml, env))


def _train(cfg: SyncNetTrainConfig, model_yaml: dict, env: loop.Distributed) -> Path:
    data, run = cfg.data, cfg.run
    if not data.root:
        raise ConfigError("data.root is not set (the folder with filelist.txt); pass --set data.root=DIR")
    out = Path(run.output_dir)
    if env.main:  # audio caches first, by one process, with progress; the other ranks then only read them
        for filelist in filter(None, (data.filelist, data.val_filelist)):
            prepare_cache(data.root, filelist, workers=data.num_workers)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(loop.config_dict(cfg), sort_keys=False))
        (out / "syncnet.yaml").write_text(yaml.safe_dump(model_yaml, sort_keys=False))
    loop.barrier()

    shifts = cfg.loss.negatives if cfg.loss.multiway > 0 else 0
    train_set = SyncNetDataset(data.root, data.filelist, data.resolution, data.num_frames,
                               data.samples_per_epoch, seed=run.seed, shifts=shifts, min_shift=cfg.loss.min_shift,
                               augment=data.augment)
    loader = loop.make_loader(train_set, data.batch_size, data.num_workers, env)
    val_loader = None
    if data.val_filelist and env.main:
        # One shifted mel per window, as far off as the pair loss's negatives: `val_rank` compares the two.
        val_set = SyncNetDataset(data.root, data.val_filelist, data.resolution, data.num_frames,
                                 data.val_samples, seed=run.seed + 1, shifts=1, min_shift=data.num_frames)
        val_loader = DataLoader(val_set, data.batch_size, num_workers=data.num_workers)

    model: nn.Module = StableSyncNet(SyncNetConfig.from_dict(model_yaml)).to(env.device)
    if env.world_size > 1:
        device_ids = [env.local_rank] if env.device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    stepper = loop.Stepper(model, optimizer, env.device, run.mixed_precision, run.grad_accum, run.grad_clip)
    checkpoints = loop.Checkpointer(out / "checkpoints", run.keep_last)
    step = checkpoints.resume(cfg.ckpt.resume_from, model, stepper)
    metrics = loop.MetricsLog(out / "metrics.csv", METRICS, resume_step=step, enabled=env.main)
    if step:
        log.info("resumed at step %d", step)

    if val_loader is not None and step == 0:
        metrics.log(0, **_validate(loop.unwrap(model), val_loader, stepper))
    batches = loop.endless(loader, train_set, lambda: step)
    sums: dict[str, float] = {}
    with progress_bar("train syncnet", unit="step", quiet=not env.main) as progress:
        while step < run.max_steps:
            model.train()
            for _ in range(run.grad_accum):
                loss, correct, matching = _loss(model, next(batches), stepper, cfg.loss)
                stepper.backward(loss)
                loop.accumulate(sums, loss=loss.item() / run.grad_accum, acc=correct / run.grad_accum,
                                **({"multiway": matching / run.grad_accum} if cfg.loss.multiway > 0 else {}))
            lr = set_lr(optimizer, cfg.optimizer, step, run.max_steps)
            loop.accumulate(sums, grad_norm=stepper.step(), lr=lr, n=1)
            step += 1
            if step % run.log_every == 0 or step == run.max_steps:
                n = sums.pop("n")
                metrics.log(step, **{k: v / n for k, v in sums.items()})
                log.info("step %d: loss %.4f acc %.3f", step, sums["loss"] / n, sums["acc"] / n)
                sums.clear()
            if val_loader is not None and (step % run.val_every == 0 or step == run.max_steps):
                metrics.log(step, **_validate(loop.unwrap(model), val_loader, stepper))
            if step % run.ckpt_every == 0 or step == run.max_steps:
                checkpoints.save(step, model, stepper)
            progress(step, run.max_steps)
    if env.main:
        loop.plot_curves(out / "metrics.csv", out / "curves.png")
    final = checkpoints.latest()
    if final is None:  # max_steps 0 and nothing to resume: an untrained model is still a valid result
        final = checkpoints.save(step, model, stepper)
    return final


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], stepper: loop.Stepper,
          weights: SyncNetLossConfig = SyncNetLossConfig()) -> tuple[torch.Tensor, float, float]:
    """Mean BCE of the batch (+ the weighted matching term), its accuracy (cosine > 0.5 agrees with y), and the
    matching term's value (0 when off).

    Only the encoders run under autocast: BCE is not autocast-safe and the cosine wants fp32 anyway.
    """
    frames = batch["frames"].to(stepper.device, non_blocking=True)
    mel = batch["mel"].to(stepper.device, non_blocking=True)
    y = batch["y"].to(stepper.device, non_blocking=True).float()
    matching = weights.multiway > 0 and "shifted_mel" in batch
    if matching:  # one forward for every mel: the encoders are independent, so DDP sees one call
        shifted = batch["shifted_mel"].to(stepper.device, non_blocking=True)
        mel = torch.cat([mel, shifted.flatten(0, 1)])
    with stepper.autocast():
        vision, audio = model(visual_input(frames), mel)
    vision, audio = vision.float(), audio.float()
    b = len(y)
    sims = sync_probability(vision, audio[:b])
    loss = nn.functional.binary_cross_entropy(sims, y)
    correct = ((sims > 0.5) == (y > 0.5)).float().mean().item()
    positive = y > 0.5
    if not matching or not positive.any():
        return loss, correct, 0.0
    candidates = torch.cat([audio[:b, None], audio[b:].view(b, -1, audio.shape[1])], dim=1)[positive]
    term = multiway_loss(vision[positive], candidates, weights.temperature)
    return loss + weights.multiway * term, correct, term.item()


def multiway_loss(vision: torch.Tensor, candidates: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of picking candidate 0 (the in-sync mel) for each `vision` [N, D] among its `candidates`
    [N, 1 + K, D], by cosine / temperature."""
    cos = nn.functional.cosine_similarity(vision[:, None], candidates, dim=-1)
    return nn.functional.cross_entropy(cos / temperature, torch.zeros(len(vision), dtype=torch.long, device=cos.device))


@torch.no_grad()
def _validate(model: nn.Module, loader: DataLoader, stepper: loop.Stepper) -> dict[str, float]:
    """Loss and accuracy over the fixed validation samples (main rank only, on the unwrapped model), and
    `val_rank`: how often a window's in-sync mel scores above a mel of the same clip at least a window away
    (threshold-free, so a model whose cosines sit off 0.5 is judged on what it sorts)."""
    model.eval()
    total_loss = total_correct = count = ranked = pairs = 0.0
    for batch in loader:
        loss, correct, _ = _loss(model, batch, stepper)
        n = len(batch["y"])
        total_loss, total_correct, count = total_loss + loss.item() * n, total_correct + correct * n, count + n
        positive = batch["y"] > 0.5
        if "shifted_mel" in batch and positive.any():
            frames = batch["frames"][positive].to(stepper.device)
            mels = torch.cat([batch["mel"][positive], batch["shifted_mel"][positive, 0]]).to(stepper.device)
            vision, audio = model(visual_input(frames), mels)
            k = len(frames)
            ranked += (sync_probability(vision, audio[:k]) > sync_probability(vision, audio[k:])).sum().item()
            pairs += k
    model.train()
    out = {"val_loss": total_loss / count, "val_acc": total_correct / count}
    if pairs:
        out["val_rank"] = ranked / pairs
    return out



def syncnet_yaml(cfg: SyncNetTrainConfig) -> dict:
    """The upstream-format SyncNet yaml for this run, checked against the data settings.

    A forward pass on the meta device (free) catches a visual encoder that does not take 3 * num_frames
    channels, or embeddings whose sizes differ at this resolution, before any data is touched.
    """
    if isinstance(cfg.model, str):
        source = load_syncnet_yaml(cfg.model)
    elif isinstance(cfg.model, dict):
        source = {"model": cfg.model.get("model", cfg.model)}
    else:
        raise ConfigError("config key model must be a SyncNet preset name, a yaml path or a model section")
    if source.get("data", {}).get("latent_space"):
        raise ConfigError("latent-space SyncNets are not supported for training; use a pixel config")
    data = cfg.data
    frames = 3 * data.num_frames
    with torch.device("meta"):
        net = StableSyncNet(SyncNetConfig.from_dict(source))
        try:
            vision, audio = net(torch.empty(1, frames, data.resolution // 2, data.resolution),
                                torch.empty(1, 1, 80, mel_window_length(data.num_frames)))
        except RuntimeError as exc:
            raise ConfigError(f"the SyncNet does not fit {data.num_frames} frames at {data.resolution} px: "
                              f"{str(exc).splitlines()[0]}") from None
    if vision.shape != audio.shape:
        raise ConfigError(f"at {data.resolution} px the visual embedding has {vision.shape[1]} values but the "
                          f"audio embedding {audio.shape[1]}; change data.resolution or the model")
    return {"model": source["model"], "data": {"num_frames": data.num_frames, "resolution": data.resolution,
                                               "latent_space": False, "lower_half": True}}


def add_train_syncnet_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="training yaml, or a packaged one: syncnet_small, syncnet_16_pixel_attn")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set data.root=data/aligned --set run.max_steps=500")


def run_train_syncnet(args: argparse.Namespace) -> int:
    path = train_syncnet(args.config, loop.parse_overrides(args.overrides))
    if loop.is_main():
        print(f"final checkpoint {path}")
    return 0
