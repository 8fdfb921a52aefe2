"""Step 3, `shots`: split each video at its hard cuts, found by PySceneDetect's adaptive detector.

Upstream runs `scenedetect detect-adaptive --threshold 2 split-video`; we use the same detector and threshold
(other settings at PySceneDetect's defaults, as upstream's command leaves them, e.g. 0.6 s minimum shot length)
and cut frame-exactly with the audio of each shot. A video without cuts is passed on as it is, not re-encoded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from latentsync.audio.load import load_audio
from latentsync.data.runner import Item, Result, Step
from latentsync.data.steps.common import HOP, SAMPLE_RATE, Piece, output_path, pass_on, write_pieces
from latentsync.video.reader import FPS, VideoFrames

THRESHOLD = 2.0  # upstream's detect-adaptive --threshold


def detect_cuts(path: Path, num_frames: int, threshold: float = THRESHOLD) -> list[int]:
    """Frame indices where a new shot starts (0 excluded) in a constant-frame-rate video."""
    from scenedetect import AdaptiveDetector, detect

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # not an INFO line per file on the terminal
    scenes = detect(str(path), AdaptiveDetector(adaptive_threshold=threshold))
    return sorted({start.frame_num for start, _ in scenes} & set(range(1, num_frames)))


@dataclass(frozen=True)
class ShotsStep(Step):
    name = "shots"
    threshold: float = THRESHOLD

    def settings(self) -> str:
        return f"adaptive_threshold={self.threshold:g}"

    def process(self, item: Item, out_dir: Path) -> Result:
        frames = VideoFrames(item.path)
        n = len(frames)
        cuts = detect_cuts(item.path, n, self.threshold)
        if not cuts:
            return pass_on(item, n / FPS, shots=1, cuts=[])
        bounds = [0, *cuts, n]
        pieces = [Piece(a, b, a * HOP) for a, b in zip(bounds, bounds[1:])]
        outs = [output_path(out_dir, item.name, f"-shot{k:03d}") for k in range(len(pieces))]
        write_pieces(frames, load_audio(item.path, SAMPLE_RATE), pieces, outs)
        return Result(outs, [p.seconds for p in pieces], figures={"shots": len(pieces), "cuts": cuts})
