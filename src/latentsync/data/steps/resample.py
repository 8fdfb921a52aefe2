"""Step 2, `resample`: every video to constant 25 fps H.264 with 16 kHz mono AAC, the rates the models use.

Frames are resampled by timestamp (`video.reader`: any source rate, variable rate included) and the audio is
decoded and resampled the way inference loads it (`audio.load`), then both are encoded in one pass; the audio is
cut or padded to the video's length. Unlike upstream, which re-encodes only files that are not 25 fps already,
every file is re-encoded, so the later steps see one uniform format (and frame i is at i/25 s).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result, Step
from latentsync.data.steps.common import SAMPLE_RATE, Piece, output_path, write_pieces
from latentsync.video.reader import VideoFrames


@dataclass(frozen=True)
class ResampleStep(Step):
    name = "resample"

    def process(self, item: Item, out_dir: Path) -> Result:
        frames = VideoFrames(item.path)
        audio = load_audio(item.path, SAMPLE_RATE)
        piece = Piece(0, len(frames), 0)
        out = output_path(out_dir, item.name)
        write_pieces(frames, audio, [piece], [out])
        figures = {"frames": len(frames), "source_fps": round(frames.info.source_fps, 3)}
        return Result([out], [piece.seconds], figures=figures)
