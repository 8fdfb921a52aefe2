"""Load-time speed settings of the inference models: channels-last memory layout and `torch.compile`.

Both change how the same arithmetic is laid out, not what is computed, so they sit beside the per-run settings
(sampler, DeepCache, batching) rather than among them. Compilation happens lazily on the first run and again
for every new input shape (batch size, resolution), which is why the benchmark reports the first and the
following runs apart.
"""

from __future__ import annotations

import torch

from latentsync.errors import ConfigError
from latentsync.models.modeldir import Models

# "reduce-overhead" adds CUDA graphs (shapes are static: every chunk is 16 frames but a video's last, which is
# captured once more).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")


def optimize_models(models: Models, compile_mode: str = "off", channels_last: bool = False) -> Models:
    """Apply the settings to `models` in place (the U-Net and the VAE decoder; audio and SyncNet are minor)."""
    if compile_mode not in COMPILE_MODES:
        raise ConfigError(f"--compile must be one of {', '.join(COMPILE_MODES)}, got {compile_mode!r}")
    if channels_last:
        models.unet.to(memory_format=torch.channels_last)
        models.vae.to(memory_format=torch.channels_last)
    if compile_mode != "off":
        models.unet = torch.compile(models.unet, mode=compile_mode, dynamic=False)
        models.vae.decoder = torch.compile(models.vae.decoder, mode=compile_mode, dynamic=False)
    return models
