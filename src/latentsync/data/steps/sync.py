"""Step 6, `sync`: keep clips whose speech matches the lips, and fix a constant audio offset.

A SyncNet evaluator measures each aligned clip: `{"conf": confidence, "offset": frames}` in SyncNet v2's
convention (LSE-C, and the AV offset: positive when the audio runs ahead of the lips). As upstream, a clip is kept
when conf >= 3 and |offset| <= 6; a non-zero offset is corrected by delaying the audio by offset / 25 s. We
correct it by trimming instead of padding: the first `offset` frames (audio ahead) or the last `-offset` frames
(audio behind) are cut, with the matching audio, so the clip has no inserted silence and is at most 6 frames
shorter. A clip with offset 0 is passed on as it is.

Which evaluator reads a weights file is `load_sync_evaluator`'s decision (the project's StableSyncNet, or the
original SyncNet v2 when the user has `syncnet_v2.model`). Without `--syncnet` the step passes every clip on
unchecked, with a warning (see `FilterStep`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result
from latentsync.data.steps.common import (
    HOP, SAMPLE_RATE, Evaluator, FilterStep, Loader, Piece, output_path, pass_on, write_pieces,
)
from latentsync.errors import ConfigError
from latentsync.video.reader import VideoFrames

MIN_CONFIDENCE = 3.0
MAX_OFFSET = 6  # frames


def load_sync_evaluator(weights: Path, device: str) -> Evaluator:
    """The SyncNet evaluator for a weights file: clip -> {"conf", "offset"} (module docstring).

    None is wired in yet: the data pipeline runs its sync step only without weights (skipped, with a warning).
    """
    raise ConfigError(f"--syncnet {weights}: no SyncNet evaluator is available to the data pipeline yet")


def shift_piece(num_frames: int, offset: int) -> Piece:
    """The frames and audio that put audio running `offset` frames ahead of the lips (behind, if negative) in sync."""
    return Piece(max(offset, 0), num_frames - max(-offset, 0), max(-offset, 0) * HOP)


@dataclass(frozen=True)
class SyncStep(FilterStep):
    name = "sync"
    what = "SyncNet"
    option = "--syncnet"
    loader: Loader | None = load_sync_evaluator

    def settings(self) -> str:
        return f"{super().settings()} min_conf={MIN_CONFIDENCE:g} max_offset={MAX_OFFSET}"

    def judge(self, item: Item, out_dir: Path, figures: dict[str, float], seconds: float) -> Result:
        conf, offset = float(figures["conf"]), int(round(figures["offset"]))
        if conf < MIN_CONFIDENCE:
            return Result.drop("low sync confidence", f"confidence {conf:.2f} < {MIN_CONFIDENCE:g}", **figures)
        if abs(offset) > MAX_OFFSET:
            return Result.drop("audio offset", f"audio offset {offset} frames, more than {MAX_OFFSET}", **figures)
        if offset == 0:
            return pass_on(item, seconds, **figures)
        frames = VideoFrames(item.path)
        piece = shift_piece(len(frames), offset)
        out = output_path(out_dir, item.name)
        write_pieces(frames, load_audio(item.path, SAMPLE_RATE), [piece], [out])
        return Result([out], [piece.seconds], figures={**figures, "shifted_frames": offset})
