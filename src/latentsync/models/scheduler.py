"""Samplers with upstream's noise schedule (configs/scheduler_config.json), via diffusers.

`ddim` is upstream's sampler (20 steps by default). `dpm++` is DPM-Solver++ (Lu et al. 2022), 2nd-order
multistep on the same trained schedule: a higher-order solver that stays close to DDIM's result at about
half the steps (see bench/RESULTS.md for the measured quality at each step count). `ddim-trailing` is DDIM on
"trailing" timesteps (999, 499 for 2 steps): its first step starts at the noise level the trajectory really starts
at, which 1-4 step sampling needs (upstream's "leading" grid would start 1 step at t = 1). The distilled students
sample with it (`train/distill.py`).
"""

from __future__ import annotations

import json

from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from latentsync.errors import ConfigError
from latentsync.paths import CONFIG_DIR

SCHEDULER_CONFIG_PATH = CONFIG_DIR / "scheduler_config.json"
SAMPLERS = ("ddim", "dpm++", "ddim-trailing")


def scheduler_config() -> dict:
    """Upstream's scheduler config: scaled-linear betas 0.00085..0.012, 1000 steps, steps_offset 1, epsilon."""
    return json.loads(SCHEDULER_CONFIG_PATH.read_text())


def make_scheduler(sampler: str = "ddim") -> SchedulerMixin:
    """A fresh scheduler; each run gets its own because `set_timesteps` mutates it (and DPM-Solver++ keeps the
    previous model outputs, so a run calls `set_timesteps` again before each trajectory)."""
    if sampler == "ddim":
        return DDIMScheduler.from_config(scheduler_config())
    if sampler == "ddim-trailing":
        return DDIMScheduler.from_config({**scheduler_config(), "timestep_spacing": "trailing"})
    if sampler == "dpm++":
        config = {k: v for k, v in scheduler_config().items() if k not in ("clip_sample", "set_alpha_to_one")}
        # "trailing" spacing ends the trajectory at t = 999 .. near 0 evenly, which suits few steps.
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing"
        )
    raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
