"""The DDIM sampler with upstream's constants (configs/scheduler_config.json), via diffusers."""

from __future__ import annotations

import json

from diffusers import DDIMScheduler

from latentsync.paths import CONFIG_DIR

SCHEDULER_CONFIG_PATH = CONFIG_DIR / "scheduler_config.json"


def scheduler_config() -> dict:
    """Upstream's scheduler config: scaled-linear betas 0.00085..0.012, 1000 steps, steps_offset 1, epsilon."""
    return json.loads(SCHEDULER_CONFIG_PATH.read_text())


def make_scheduler() -> DDIMScheduler:
    """A fresh DDIM scheduler; each run gets its own because `set_timesteps` mutates it."""
    return DDIMScheduler.from_config(scheduler_config())
