"""The learning-rate schedule: a function of the step alone, so that resuming needs no scheduler state and a run
resumed with a longer `run.max_steps` or another `optimizer.schedule` follows the new config."""

from __future__ import annotations

import math

import torch

from latentsync.errors import ConfigError
from latentsync.train.loop import OptimizerConfig


def set_lr(optimizer: torch.optim.Optimizer, config: OptimizerConfig, step: int, max_steps: int) -> float:
    """Set the lr of the step about to be taken (a function of the step alone, so a resumed run, or one resumed
    with another schedule or a longer max_steps, follows the config rather than the checkpoint); returns it."""
    if config.schedule == "constant":
        lr = config.lr
    elif config.schedule == "cosine":
        progress = min(step / max(max_steps, 1), 1.0)
        lr = config.lr * (config.final_lr + (1 - config.final_lr) * 0.5 * (1 + math.cos(math.pi * progress)))
    else:
        raise ConfigError(f"optimizer.schedule must be constant or cosine, got {config.schedule!r}")
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
