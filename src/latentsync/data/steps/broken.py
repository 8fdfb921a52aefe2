"""Step 1, `broken`: set aside files that cannot be used, before anything is spent on them.

A file is broken when it cannot be opened as a video (not a video, a still image), when it has no length, no
audio stream, or when its video or audio cannot be decoded to the end: a truncated download fails here, not
half-way through a later step. A file whose index promises more video than its data holds counts as truncated
even when what is there decodes cleanly. Broken files are recorded in the manifest and left where they are;
good files go on unchanged (this step writes no video).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result, Step
from latentsync.data.steps.common import pass_on
from latentsync.errors import AudioError, VideoError
from latentsync.video.reader import FPS, VideoFrames

TRUNCATION_TOLERANCE = 1.0  # seconds; edit lists and rounding make the index and the packets differ slightly


def _declared_seconds(path: Path) -> float | None:
    """The video stream's duration as the container's index states it (None where the format has none)."""
    with av.open(str(path)) as container:
        stream = next((s for s in container.streams.video if s.duration), None)
        return float(stream.duration * stream.time_base) if stream is not None else None


@dataclass(frozen=True)
class BrokenStep(Step):
    name = "broken"

    def process(self, item: Item, out_dir: Path) -> Result:
        try:
            frames = VideoFrames(item.path)
        except VideoError as exc:
            return Result.drop("unreadable", str(exc))
        info = frames.info
        if info.is_image:
            return Result.drop("still image", f"{item.path} is a still image, not a video")
        if info.duration < 1 / FPS:
            return Result.drop("zero duration", f"{item.path} lasts {info.duration:.3f} s", duration=info.duration)
        if not info.has_audio:
            return Result.drop("no audio", f"{item.path} has no audio stream", duration=info.duration)
        declared = _declared_seconds(item.path)
        if declared is not None and declared > info.duration + TRUNCATION_TOLERANCE:
            detail = f"{item.path} is truncated: {declared:.2f} s of video indexed, {info.duration:.2f} s present"
            return Result.drop("corrupt video", detail, duration=info.duration)
        try:
            for _ in frames.iter_range(0, len(frames)):
                pass
        except VideoError as exc:
            return Result.drop("corrupt video", str(exc), duration=info.duration)
        try:
            audio_seconds = len(load_audio(item.path)) / 16000
        except AudioError as exc:
            return Result.drop("corrupt audio", str(exc), duration=info.duration)
        return pass_on(
            item, info.duration, width=info.width, height=info.height, fps=round(info.source_fps, 3),
            duration=round(info.duration, 3), audio_seconds=round(audio_seconds, 3),
        )  # fmt: skip
