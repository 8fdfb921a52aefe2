"""`latentsync train distill CONFIG`: a 1-4 step student distilled from a teacher model's U-Net.

Method (docs/distill.md has the reasons and the figures): the teacher's full sampler (20 DDIM steps with guidance,
by default) is run once on each of `data.targets` training windows from the noise inference would start from; each
result and its noise define a straight DDIM line (`distill_targets`). The student, a copy of the teacher (same
architecture and file format, so every speed setting and loader still applies), is trained to predict the
teacher's result from points of that line at its own few timesteps (DDIM, trailing spacing), with the audio as
its only conditioning: guidance is folded in. The loss is the x0 error weighted by max(SNR, 1).

    output_dir/config.yaml        the resolved config
    output_dir/targets/           train/ and val/: the teacher's results (made once, resumable)
    output_dir/checkpoints/       checkpoint-<step>.pt (official {"state_dict", "global_step"}) + .train.pt
    output_dir/metrics.csv        step, time, loss, grad_norm, lr, val_mse, val_psnr, teacher_mse, teacher_psnr
    output_dir/curves.png         the metrics, plotted at the end
    output_dir/model/             a runnable model folder: the teacher's files, the newest student weights, and a
                                  model.yaml that samples with ddim-trailing at the student's steps, guidance 1

Validation compares, on held-out windows, the student's few-step result with the teacher's full one (latent MSE,
and PSNR of the decoded regenerated region); `teacher_*` are the same for the teacher's own few-step sampling
(its guidance, the same sampler and steps), the baseline the student has to beat.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from latentsync.data.dataset import UNetDataset, prepare_cache
from latentsync.errors import ConfigError
from latentsync.face.mask import load_mask
from latentsync.models.modeldir import ModelDir, ModelSpec, Models, place_file
from latentsync.models.scheduler import make_scheduler
from latentsync.models.vae import decode, vae_factor
from latentsync.paths import MASK_PATH
from latentsync.pipeline.guidance import unet_input
from latentsync.pipeline.progress import progress_bar
from latentsync.train import loop
from latentsync.train.distill_targets import (
    Sampling,
    TargetMaker,
    TargetSet,
    on_the_line,
    read_targets,
    sample,
    student_timesteps,
    x0_loss,
)
from latentsync.train.loop import CkptConfig, OptimizerConfig, RunConfig
from latentsync.train.schedule import set_lr

log = logging.getLogger(__name__)
METRICS = ("loss", "grad_norm", "lr", "val_mse", "val_psnr", "teacher_mse", "teacher_psnr")
STUDENT_SAMPLER = "ddim-trailing"
MAX_STUDENT_STEPS = 4


@dataclass
class TeacherConfig:
    model: str = "demo"  # a model name (demo, 1.5, 1.6) or folder
    steps: int = 20  # the teacher's sampler: what the student reproduces
    sampler: str = "ddim"
    guidance: float | None = None  # null: the teacher's model.yaml guidance_scale


@dataclass
class DistillDataConfig:
    root: str = ""  # folder with the aligned clips and filelist.txt (as for `train unet`)
    filelist: str = "filelist.txt"
    val_filelist: str | None = None  # held-out clips: validation targets come from these
    num_frames: int = 16
    targets: int = 256  # teacher results made once and trained on
    val_targets: int = 8
    batch_size: int = 1
    num_workers: int = 1
    samples_per_epoch: int = 1000


@dataclass
class DistillConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    steps: int = 2  # the student's sampling steps, 1-4
    data: DistillDataConfig = field(default_factory=DistillDataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    ckpt: CkptConfig = field(default_factory=CkptConfig)


def train_distill(config_path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> Path:
    """Distil (or resume) from a config; returns the final checkpoint. Runs on one process."""
    cfg = loop.load_config(DistillConfig, loop.resolve_config(config_path), overrides)
    if not 1 <= cfg.steps <= MAX_STUDENT_STEPS:
        raise ConfigError(f"steps (the student's) must be 1 to {MAX_STUDENT_STEPS}, got {cfg.steps}")
    if cfg.teacher.steps <= cfg.steps:
        raise ConfigError(f"teacher.steps ({cfg.teacher.steps}) must be more than the student's steps ({cfg.steps})")
    if not cfg.data.root:
        raise ConfigError("data.root is not set (the folder with filelist.txt); pass --set data.root=DIR")
    if cfg.data.targets < 1:
        raise ConfigError(f"data.targets must be at least 1, got {cfg.data.targets}")
    teacher = ModelDir.resolve(cfg.teacher.model)  # a missing model is refused before any work
    return loop.distributed_run(cfg.run, lambda env: _train(cfg, teacher, env))


def _train(cfg: DistillConfig, teacher_dir: ModelDir, env: loop.Distributed) -> Path:
    if env.world_size > 1:
        raise ConfigError("train distill runs on one process; start it without torchrun")
    data, run = cfg.data, cfg.run
    out = Path(run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(loop.config_dict(cfg), sort_keys=False))
    models = teacher_dir.load(device=env.device)
    spec = models.spec
    guidance = cfg.teacher.guidance or float(spec.inference.get("guidance_scale", 1.5))
    teacher_sampling = Sampling(cfg.teacher.sampler, cfg.teacher.steps, guidance)
    pixel_mask = torch.from_numpy(load_mask(spec.resolution).copy()).float()[None, None].to(env.device)
    size = spec.resolution // vae_factor(models.vae)
    latent_mask = F.interpolate(pixel_mask, size=(size, size)).unsqueeze(2)  # [1, 1, 1, h, w]

    maker = TargetMaker(models.unet, models.vae, latent_mask, pixel_mask, teacher_sampling, run.seed)
    sets = [("train", data.filelist, data.targets)]
    if data.val_filelist:
        sets.append(("val", data.val_filelist, data.val_targets))
    for label, filelist, count in sets:
        prepare_cache(data.root, filelist, encoder_path=spec.whisper_path, workers=data.num_workers)
        windows = UNetDataset(data.root, filelist, spec.resolution, data.num_frames, encoder_path=spec.whisper_path,
                              samples_per_epoch=count, seed=run.seed + (label == "val"))
        maker.make(windows, out / "targets" / label, count, label)

    student = copy.deepcopy(models.unet).train().requires_grad_(True)
    models.unet.requires_grad_(False)
    optimizer = torch.optim.AdamW(student.parameters(), lr=cfg.optimizer.lr, weight_decay=cfg.optimizer.weight_decay)
    stepper = loop.Stepper(student, optimizer, env.device, run.mixed_precision, run.grad_accum, run.grad_clip)
    checkpoints = loop.Checkpointer(out / "checkpoints", run.keep_last)
    step = checkpoints.resume(cfg.ckpt.resume_from, student, stepper)
    metrics = loop.MetricsLog(out / "metrics.csv", METRICS, resume_step=step)
    student_sampling = Sampling(STUDENT_SAMPLER, cfg.steps, 1.0)
    val = read_targets(out / "targets" / "val", data.val_targets) if data.val_filelist else []
    if val and step == 0:
        metrics.log(0, **_validate(models, models.unet, val, Sampling(STUDENT_SAMPLER, cfg.steps, guidance),
                                   latent_mask, pixel_mask, "teacher"))

    train_set = TargetSet(out / "targets" / "train", data.targets, data.samples_per_epoch, run.seed)
    batches = loop.endless(loop.make_loader(train_set, data.batch_size, data.num_workers, env), train_set,
                           lambda: step)
    alphas = make_scheduler().alphas_cumprod.to(env.device)
    timesteps = student_timesteps(cfg.steps)
    generator = torch.Generator().manual_seed(run.seed)
    sums: dict[str, float] = {}
    with progress_bar("train distill", unit="step") as progress:
        while step < run.max_steps:
            student.train()
            for _ in range(run.grad_accum):
                batch = {k: v.to(env.device) for k, v in next(batches).items()}
                t = timesteps[torch.randint(len(timesteps), (len(batch["x0"]),), generator=generator)].to(env.device)
                x_t, _ = on_the_line(alphas, int(timesteps[0]), t, batch["noise"], batch["x0"])
                sample_in = unet_input(x_t, latent_mask, batch["masked"], batch["ref"])
                with stepper.autocast():
                    eps = student(sample_in, t, batch["audio"])
                loss = x0_loss(alphas, t, x_t, eps.float(), batch["x0"])
                stepper.backward(loss)
                loop.accumulate(sums, loss=loss.item() / run.grad_accum)
            lr = set_lr(optimizer, cfg.optimizer, step, run.max_steps)
            loop.accumulate(sums, grad_norm=stepper.step(), lr=lr, n=1)
            step += 1
            if step % run.log_every == 0 or step == run.max_steps:
                n = sums.pop("n")
                metrics.log(step, **{k: v / n for k, v in sums.items()})
                sums.clear()
            if step % run.ckpt_every == 0 or step == run.max_steps:
                publish_student(out / "model", spec, checkpoints.save(step, student, stepper), cfg.steps)
            if val and (step % run.val_every == 0 or step == run.max_steps):
                metrics.log(step, **_validate(models, student, val, student_sampling, latent_mask, pixel_mask, "val"))
            progress(step, run.max_steps)
    loop.plot_curves(out / "metrics.csv", out / "curves.png")
    final = checkpoints.latest()
    if final is None:  # max_steps 0: the untrained copy is still a valid student
        final = checkpoints.save(step, student, stepper)
        publish_student(out / "model", spec, final, cfg.steps)
    return final


@torch.no_grad()
def _validate(models: Models, unet: nn.Module, targets: list[dict[str, torch.Tensor]], how: Sampling,
              latent_mask: torch.Tensor, pixel_mask: torch.Tensor, prefix: str) -> dict[str, float]:
    """Latent MSE and regenerated-region PSNR (decoded, in [0, 1]) of `how`'s results against the teacher's full
    ones, averaged over the validation targets."""
    was_training = unet.training
    unet.eval()
    device = latent_mask.device
    mse = psnr = 0.0
    region = (pixel_mask[0, 0] < 0.5).to(device)  # mask 0: the lower face the model regenerates
    for target in targets:
        target = {k: v.to(device) for k, v in target.items()}
        result = sample(unet, how, target, latent_mask)
        mse += F.mse_loss(result, target["x0"]).item()
        images = [(decode(models.vae, x[0].transpose(0, 1)).float().clamp(-1, 1) + 1) / 2
                  for x in (result, target["x0"])]
        err = ((images[0] - images[1]) ** 2)[..., region].mean().item()
        psnr += 10 * math.log10(1.0 / max(err, 1e-10))
    unet.train(was_training)
    return {f"{prefix}_mse": mse / len(targets), f"{prefix}_psnr": psnr / len(targets)}


def publish_student(model_dir: Path, teacher: ModelSpec, weights: Path, steps: int) -> ModelSpec:
    """Make `model_dir` a runnable model folder: the teacher's files (hard links where possible) with `weights` as
    the U-Net and a model.yaml that samples the way the student was trained to."""
    def moved(path: Path) -> Path:
        try:
            return model_dir / path.relative_to(teacher.root)
        except ValueError:  # a file outside the teacher's folder gets a place of its own
            return model_dir / path.name

    for src in teacher.required_files():
        if src in (teacher.unet_weights, MASK_PATH):  # the student's own weights; the packaged mask stays shared
            continue
        for file in sorted(src.rglob("*")) if src.is_dir() else [src]:
            if file.is_file():
                place_file(file, moved(src) / file.relative_to(src) if src.is_dir() else moved(file))
    student = ModelSpec(
        root=model_dir,
        name=f"{teacher.name}-{steps}step",
        resolution=teacher.resolution,
        unet_config=moved(teacher.unet_config),
        unet_weights=model_dir / "latentsync_unet.pt",
        vae=moved(teacher.vae),
        whisper=teacher.whisper if isinstance(teacher.whisper, str) else moved(teacher.whisper),
        syncnet_config=None if teacher.syncnet_config is None else moved(teacher.syncnet_config),
        syncnet_weights=None if teacher.syncnet_weights is None else moved(teacher.syncnet_weights),
        mask=teacher.mask if teacher.mask == MASK_PATH else moved(teacher.mask),
        inference={**teacher.inference, "sampler": STUDENT_SAMPLER, "steps": steps, "guidance_scale": 1.0},
    )
    place_file(weights, student.unet_weights)
    student.write()
    return student
