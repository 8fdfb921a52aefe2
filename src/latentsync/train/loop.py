"""The parts every trainer shares: config files, checkpoints, metrics, distributed setup and the optimizer step.

Kept free of any model so the SyncNet and U-Net trainers read as a plain loop over these helpers.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import os
import re
import tempfile
import time
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler
import yaml
from torch import nn

from latentsync.errors import CheckpointError, ConfigError, DeviceError
from latentsync.models.checkpoint import read_checkpoint, save_checkpoint
from latentsync.paths import CONFIG_DIR

T = TypeVar("T")


# ---------------------------------------------------------------- config


@dataclass
class OptimizerConfig:
    lr: float = 1e-5  # upstream, constant, no warm-up
    weight_decay: float = 1e-2  # AdamW's default, which upstream keeps
    schedule: str = "constant"  # or cosine: from lr at step 0 down to lr * final_lr at run.max_steps
    final_lr: float = 0.1  # the cosine schedule's last lr, as a fraction of lr


@dataclass
class RunConfig:
    max_steps: int = 10_000
    val_every: int = 1000
    ckpt_every: int = 2500
    log_every: int = 10
    keep_last: int = 3  # checkpoints kept on disk; older ones are deleted
    mixed_precision: str = "no"  # no | fp16 (CUDA, with loss scaling) | bf16
    grad_accum: int = 1
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    seed: int = 1247
    device: str = "auto"  # auto | cpu | cuda
    output_dir: str = "runs/train"

    def __post_init__(self) -> None:
        for name in ("val_every", "ckpt_every", "log_every", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"run.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0:
            raise ConfigError(f"run.max_steps must not be negative, got {self.max_steps}")


@dataclass
class CkptConfig:
    resume_from: str | None = None  # null, a checkpoint path, or "latest" (the newest in output_dir, if any)


def load_config(cls: type[T], path: str | os.PathLike, overrides: Mapping[str, Any] | None = None) -> T:
    """Read a training YAML into the dataclass `cls` (sections are nested dataclasses), then apply overrides.

    Overrides are dotted keys (`run.max_steps`) whose values are used as given, or YAML-parsed when strings
    (what `--set key=value` produces). Unknown keys anywhere are a ConfigError: a typo must not silently
    train with the default.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {path}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a mapping of config sections")
    for key, value in (overrides or {}).items():
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is not a section")
        node[leaf] = yaml.safe_load(value) if isinstance(value, str) else value
    return _build(cls, data, "")


def resolve_config(name_or_path: str | os.PathLike) -> Path:
    """A config path, or the name of a packaged one (`syncnet_small` -> configs/train/syncnet_small.yaml)."""
    path = Path(name_or_path)
    packaged = CONFIG_DIR / "train" / f"{name_or_path}.yaml"
    if not path.is_file() and path.suffix == "" and packaged.is_file():
        return packaged
    return path


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """`["run.max_steps=100", ...]` -> {"run.max_steps": "100"}; values are parsed later, as YAML."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value
    return out


def config_dict(config: Any) -> dict[str, Any]:
    """The config as plain data, to write next to the checkpoints."""
    return dataclasses.asdict(config)


def _build(cls: type[T], data: Any, where: str) -> T:
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section {where.rstrip('.') or '(top)'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    return cls(**{key: _coerce(hints[key], value, f"{where}{key}") for key, value in data.items()})


def _coerce(hint: Any, value: Any, where: str) -> Any:
    """Check a YAML value against a field type, converting where YAML is lax (`1e-5` is a string in YAML 1.1)."""
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{where}.")
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options or Any in options:
            return None
        raise ConfigError(f"config key {where} must not be null")
    for option in options:
        if option is Any:
            return value
        if option is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except ValueError:
                continue
        if isinstance(value, option) and (option is bool) == isinstance(value, bool):  # True is not an int here
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key {where} must be {names}, got {value!r}")


# ---------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run and the device it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto", seed: int | None = None) -> Distributed:
    """Read torchrun's RANK / WORLD_SIZE / LOCAL_RANK, join the process group if there is more than one process.

    NCCL on CUDA, gloo on the CPU. Each rank is seeded with `seed + rank` (as upstream), so dropout and any
    sampling differ across ranks while DDP keeps the weights identical.
    """
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise DeviceError("run.device is cuda but no CUDA device is available")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://", rank=rank, world_size=world)
    if seed is not None:
        torch.manual_seed(seed + rank)
    return Distributed(rank, world, local, torch.device("cuda", local) if use_cuda else torch.device("cpu"))


def distributed_run(run: "RunConfig", train: Callable[[Distributed], T]) -> T:
    """Set up the process group (when torchrun started several processes), call `train(env)`, tear it down.

    A group that already existed (a caller's) is left alone, so trainers can also run inside a larger program.
    """
    owns_group = not dist.is_initialized()
    env = setup_distributed(run.device, run.seed)
    try:
        return train(env)
    finally:
        if owns_group:
            cleanup()


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, env: Distributed) -> DataLoader:
    """Training batches for this process: under DDP each rank draws its own share of the epoch's samples; a
    partial last batch is dropped so every rank takes the same number of steps."""
    sampler = DistributedSampler(dataset, shuffle=False, drop_last=True) if env.world_size > 1 else None
    loader = DataLoader(dataset, batch_size, sampler=sampler, num_workers=num_workers, drop_last=True,
                        pin_memory=env.device.type == "cuda")
    if len(loader) == 0:
        raise ConfigError(f"data.samples_per_epoch {len(dataset)} is less than one batch of {batch_size} per process")
    return loader


def accumulate(sums: dict[str, float], **values: float) -> None:
    """Add `values` into running sums (averaged and logged every `run.log_every` steps)."""
    for key, value in values.items():
        sums[key] = sums.get(key, 0.0) + value


def is_main() -> bool:
    """Rank 0, also before the process group is set up or after it is gone (then from torchrun's RANK)."""
    return dist.get_rank() == 0 if dist.is_initialized() else int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper: its state_dict keys have no `module.` prefix, as official files."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# ---------------------------------------------------------------- optimizer step


class Stepper:
    """Mixed precision, gradient accumulation and clipping around one optimizer.

    fp16 (CUDA only) scales the loss so small gradients survive and skips steps whose gradients overflowed;
    bf16 has fp32's range and needs no scaling. Under DDP, gradients are all-reduced only on the last
    micro-batch of an accumulation.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 mixed_precision: str = "no", grad_accum: int = 1, grad_clip: float = 1.0) -> None:
        if mixed_precision not in ("no", "fp16", "bf16"):
            raise ConfigError(f"run.mixed_precision must be no, fp16 or bf16, got {mixed_precision!r}")
        if mixed_precision == "fp16" and device.type != "cuda":
            raise DeviceError("run.mixed_precision fp16 needs CUDA; use bf16 or no on the CPU")
        if grad_accum < 1:
            raise ConfigError(f"run.grad_accum must be at least 1, got {grad_accum}")
        self.model, self.optimizer, self.device = model, optimizer, device
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
        self.grad_accum, self.grad_clip = grad_accum, grad_clip
        self.scaler = torch.amp.GradScaler(device.type, enabled=mixed_precision == "fp16")
        self._micro = 0

    def autocast(self) -> ContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of one micro-batch's loss (averaged over the accumulation)."""
        self._micro += 1
        last = self._micro == self.grad_accum
        no_sync = isinstance(self.model, nn.parallel.DistributedDataParallel) and not last
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            self.scaler.scale(loss / self.grad_accum).backward()

    def step(self) -> float:
        """Unscale, clip, step and zero the gradients; returns the gradient norm before clipping."""
        if self._micro != self.grad_accum:
            raise RuntimeError(f"step() after {self._micro} of {self.grad_accum} micro-batches")
        self._micro = 0
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


# ---------------------------------------------------------------- checkpoints


class Checkpointer:
    """`<dir>/checkpoint-<step>.pt` in the official layout, plus `checkpoint-<step>.train.pt` with the rest.

    The official file ({"state_dict", "global_step"}) is what upstream and `load_syncnet` read, so it stays
    free of training state; the sidecar holds the optimizer, the loss scaler and every rank's RNG state.
    """

    PATTERN = re.compile(r"checkpoint-(\d+)\.pt")

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        self.dir = Path(directory)
        self.keep_last = keep_last

    def path(self, step: int) -> Path:
        return self.dir / f"checkpoint-{step}.pt"

    def all(self) -> list[Path]:
        """Official checkpoint files in step order."""
        found = [(int(m[1]), p) for p in self.dir.glob("checkpoint-*.pt") if (m := self.PATTERN.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        paths = self.all()
        return paths[-1] if paths else None

    def save(self, step: int, model: nn.Module, stepper: Stepper) -> Path:
        """Collective under DDP (every rank's RNG state is gathered); only the main rank writes."""
        cuda = stepper.device.type == "cuda"
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if cuda else None}
        states = [rng]
        if dist.is_initialized():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng)
        path = self.path(step)
        if is_main():
            train = {"global_step": step, "optimizer": stepper.optimizer.state_dict(),
                     "scaler": stepper.scaler.state_dict(), "rng": states}
            _atomic_save(train, _sidecar(path))
            save_checkpoint(path, unwrap(model).state_dict(), step)
            for old in self.all()[: -self.keep_last] if self.keep_last > 0 else []:
                old.unlink(missing_ok=True)
                _sidecar(old).unlink(missing_ok=True)
        barrier()
        return path

    def resume(self, target: str | os.PathLike | None, model: nn.Module, stepper: Stepper) -> int:
        """Load weights (strict) and, when its sidecar exists, the training state; returns the global step.

        `"latest"` with no checkpoint yet starts from scratch (step 0), so one config both starts and resumes
        a run. A file without a sidecar (e.g. a released checkpoint) restores the weights and step only.
        """
        if target is None:
            return 0
        path = self.latest() if str(target) == "latest" else Path(target)
        if path is None:
            return 0
        ckpt = read_checkpoint(path, map_location=stepper.device)
        try:
            unwrap(model).load_state_dict(ckpt.state_dict, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path} does not fit the model: {str(exc).splitlines()[0]}") from None
        sidecar = _sidecar(path)
        if sidecar.is_file():
            train = torch.load(sidecar, map_location="cpu", weights_only=True)
            stepper.optimizer.load_state_dict(train["optimizer"])
            stepper.scaler.load_state_dict(train["scaler"])
            rank = dist.get_rank() if dist.is_initialized() else 0
            if rank < len(train["rng"]):  # a run resumed with more ranks keeps its fresh seeds on the new ones
                torch.set_rng_state(train["rng"][rank]["torch"])
                if train["rng"][rank]["cuda"] is not None and stepper.device.type == "cuda":
                    torch.cuda.set_rng_state(train["rng"][rank]["cuda"])
        return ckpt.global_step


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name[: -len(".pt")] + ".train.pt")


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- metrics


class MetricsLog:
    """A CSV of `step, time, <fields>` (blank where a row lacks a metric), written by the main rank only.

    On resume, rows after the resumed step are dropped (that stretch is about to be trained again) and `time`
    (seconds of training) continues from the last kept row.
    """

    def __init__(
        self, path: str | os.PathLike, fields: Sequence[str], resume_step: int = 0, enabled: bool = True
    ) -> None:
        self.path, self.enabled = Path(path), enabled
        self.columns = ["step", "time", *fields]
        self.offset = 0.0
        if not enabled:
            return
        rows = []
        if resume_step > 0 and self.path.is_file():
            with self.path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
            self.offset = max((float(r["time"]) for r in rows if r.get("time")), default=0.0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, self.columns, restval="", extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
        self.start = time.perf_counter()

    def log(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        unknown = set(metrics) - set(self.columns)
        if unknown:
            raise ValueError(f"metrics {sorted(unknown)} are not columns of {self.path}")
        row = {"step": step, "time": f"{self.offset + time.perf_counter() - self.start:.2f}"}
        row.update({k: f"{v:.6g}" for k, v in metrics.items()})
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, self.columns, restval="").writerow(row)


def read_metrics(path: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Column -> [(step, value)] over the rows where it is set."""
    series: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key not in ("step", "time") and value:
                    series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def curve_panels(series: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, list[str]]:
    """Panel title -> the series drawn in it (see `plot_curves`); all-zero series get no panel."""
    shown = [name for name, points in series.items() if any(v != 0 for _, v in points)]
    train = [name for name in shown if not name.startswith("val_")]
    panels: dict[str, list[str]] = {}
    for name in shown:
        base = name.removeprefix("val_")
        owner = max((t for t in train if base == t or base.startswith(t + "_")), key=len, default=base)
        panels.setdefault(owner, []).append(name)
    return panels


def plot_curves(csv_path: str | os.PathLike, png_path: str | os.PathLike) -> Path:
    """One panel per metric; `x`, `val_x` and variants `val_x_...` share a panel so they compare directly.

    Series that are zero throughout (losses switched off) are left out; gradient norms are drawn on a log scale,
    since the first steps' norms can be orders of magnitude above the rest.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = read_metrics(csv_path)
    panels = curve_panels(series)
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3), squeeze=False)
    for ax, (title, names) in zip(axes[0], panels.items()):
        for name in sorted(names, key=lambda n: n.startswith("val_")):  # training first: same colours everywhere
            steps, values = zip(*series[name])
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        if title == "grad_norm":
            ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path


def endless(loader: Iterable[T], dataset: Any, current_step: Callable[[], int]) -> Iterator[T]:
    """Cycle through a DataLoader forever; each pass calls `dataset.set_epoch(current_step())` first.

    Seeding a pass by the step it starts at gives every pass new samples, and a run resumed at a pass
    boundary draws exactly what an uninterrupted run would have.
    """
    while True:
        dataset.set_epoch(current_step())
        yield from loader
