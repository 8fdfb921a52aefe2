"""The data pipeline's steps, one module each, in the order `latentsync data run` applies them."""

from __future__ import annotations

from pathlib import Path

from latentsync.data.runner import Step
from latentsync.data.steps.align import MAX_FACE_LOST, AlignStep
from latentsync.data.steps.broken import BrokenStep
from latentsync.data.steps.quality import QualityStep
from latentsync.data.steps.resample import ResampleStep
from latentsync.data.steps.segments import MIN_SECONDS, SegmentsStep
from latentsync.data.steps.shots import ShotsStep
from latentsync.data.steps.sync import SyncStep

STEP_NAMES = ("broken", "resample", "shots", "segments", "align", "sync", "quality")


def build_steps(
    resolution: int = 256,
    max_face_lost: float = MAX_FACE_LOST,
    syncnet: Path | None = None,
    iqa: Path | None = None,
    min_seconds: float = MIN_SECONDS,
) -> list[Step]:
    """All seven steps with the user's settings, in order."""
    return [
        BrokenStep(),
        ResampleStep(),
        ShotsStep(),
        SegmentsStep(min_seconds),
        AlignStep(resolution, max_face_lost),
        SyncStep(syncnet),
        QualityStep(iqa),
    ]
