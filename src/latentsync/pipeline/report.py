"""What a run did: frame counts, time per stage, peak memory. Printed by the CLI, returned by the API."""

from __future__ import annotations

import resource
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

Progress = Callable[[int, int], None]
"""progress(frames_done, frames_total): the one callback type every long loop reports through."""


@dataclass
class RunReport:
    output: Path
    frames: int = 0
    frames_without_face: int = 0
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    peak_rss_mb: float = 0.0
    peak_vram_mb: float | None = None
    sampling: str = ""  # what denoised it, e.g. "ddim, 20 steps, guidance 1.5": defaults come from the model
    audio_damage: str = ""  # e.g. "1 damaged audio packet(s) skipped (0.03 s replaced by silence)"

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds else 0.0
        return (
            f"wrote {self.output}: {self.frames} frames, {self.frames_without_face} without a face, "
            f"{self.seconds:.1f} s ({fps:.2f} frames/s)" + (f"; {self.sampling}" if self.sampling else "")
            + (f"; {self.audio_damage}" if self.audio_damage else "")
        )

    def stage_table(self) -> str:
        rows = [f"{name:<10} {secs:8.2f} s  {1000 * secs / max(self.frames, 1):8.1f} ms/frame"
                for name, secs in self.stage_seconds.items()]
        memory = f"peak RSS {self.peak_rss_mb:.0f} MB"
        if self.peak_vram_mb is not None:
            memory += f", peak VRAM {self.peak_vram_mb:.0f} MB"
        return "\n".join(rows + [memory])


class StageClock:
    """Accumulates wall time per named stage; stages run in different threads, each under its own name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def peak_vram_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
