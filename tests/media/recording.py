"""Capturing the frames a pipeline run hands to its video encoder, before lossy compression."""

from __future__ import annotations

import numpy as np
import pytest

import latentsync.pipeline.lipsync as lipsync_mod
from latentsync.video.writer import VideoWriter


def record_written_frames(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """Patch the pipeline's writer so every frame it encodes is also appended to the returned list."""
    frames: list[np.ndarray] = []

    class Recording(VideoWriter):
        def write(self, frame: np.ndarray) -> None:
            frames.append(frame.copy())
            super().write(frame)

    monkeypatch.setattr(lipsync_mod, "VideoWriter", Recording)
    return frames
