"""latentsync: lip-sync a video to new speech with the LatentSync latent diffusion U-Net.

`latentsync.lipsync(video, audio, out, model="1.6")` runs once; `latentsync.LipSyncPipeline` keeps models
loaded across runs. Both are imported on first use, so `import latentsync` stays cheap.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["LipSyncPipeline", "RunOptions", "lipsync"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from latentsync.pipeline import lipsync as module

        return getattr(module, name)
    raise AttributeError(f"module 'latentsync' has no attribute {name!r}")
