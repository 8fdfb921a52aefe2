"""Step 4, `segments`: cut each shot into pieces of 5 to 10 seconds (`--min-seconds M`: M to 2M).

Upstream cuts at a 5 s segment time with stream copy, so cuts land on the next keyframe and pieces come out
between 5 and 10 s. We re-encode, so we can cut exactly, and the rule is: a shot of n frames (25 fps) is cut into
k = floor(n / 125) pieces of equal length (n // k or n // k + 1 frames each). Every piece is then at least 5 s
and under 10 s (n < 125 (k + 1) gives n / k < 250), no leftover is dropped or padded, and pieces of one shot
differ by at most one frame. A shot under 5 s is dropped (`too short`); a shot of 5 to 10 s is passed on as it
is, without re-encoding. `--min-seconds` moves the 5 s (and so the 10 s) for short material: GRID sentences are
3 s, and U-Net training needs only 48 frames (1.92 s) per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result, Step
from latentsync.data.steps.common import (
    HOP,
    SAMPLE_RATE,
    Piece,
    output_path,
    pass_on,
    write_pieces,
)
from latentsync.errors import ConfigError
from latentsync.video.reader import FPS, VideoFrames

MIN_SECONDS = 5


def segment_bounds(num_frames: int, min_frames: int = MIN_SECONDS * FPS) -> list[int]:
    """Piece boundaries [0, ..., num_frames] of the equal split (module docstring); [] when too short."""
    pieces = num_frames // min_frames
    return [i * num_frames // pieces for i in range(pieces + 1)] if pieces else []


@dataclass(frozen=True)
class SegmentsStep(Step):
    min_seconds: float = MIN_SECONDS
    name = "segments"

    def __post_init__(self) -> None:
        if not self.min_seconds * FPS >= 1:
            raise ConfigError(f"--min-seconds must be at least one frame (0.04), got {self.min_seconds}")

    def settings(self) -> str:
        return f"min_seconds={self.min_seconds:g}"

    def process(self, item: Item, out_dir: Path) -> Result:
        frames = VideoFrames(item.path)
        n = len(frames)
        bounds = segment_bounds(n, round(self.min_seconds * FPS))
        if not bounds:
            return Result.drop("too short", f"{n / FPS:.2f} s, under {self.min_seconds:g} s", seconds=n / FPS)
        if len(bounds) == 2:
            return pass_on(item, n / FPS, segments=1)
        pieces = [Piece(a, b, a * HOP) for a, b in zip(bounds, bounds[1:])]
        outs = [output_path(out_dir, item.name, f"-seg{k:02d}") for k in range(len(pieces))]
        write_pieces(frames, load_audio(item.path, SAMPLE_RATE), pieces, outs)
        return Result(outs, [p.seconds for p in pieces], figures={"segments": len(pieces)})
