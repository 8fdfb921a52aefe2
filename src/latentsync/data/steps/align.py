"""Step 5, `align`: the speaker's face as a res x res crop, made by the inference path's own code.

`FaceTracker` (mediapipe landmarks, speaker tracking, landmark smoothing) and `Aligner` (upstream's affine
template) are used exactly as `pipeline.lipsync` uses them, so training crops are what the model sees at
inference. The audio goes along unchanged (already 16 kHz mono).

Frames where the speaker is not found take the transform of the nearest earlier found frame (of the first found
frame at the start of a clip), as a short miss is a detector hiccup, not a moving head. A clip where the face is
missing in more than `max_face_lost` of its frames is dropped (`face lost`); the default, 4% (5 frames of a 5 s
clip), lets a blink of the detector through. Upstream drops a clip at the first frame without a face.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentsync.data.runner import Item, Result, Step
from latentsync.data.steps.common import output_path
from latentsync.errors import ConfigError
from latentsync.face.align import Aligner
from latentsync.face.track import FaceTracker
from latentsync.video.reader import FPS, VideoFrames
from latentsync.video.writer import VideoWriter

MAX_FACE_LOST = 0.04


@dataclass(frozen=True)
class AlignStep(Step):
    name = "align"
    clips = True
    resolution: int = 256
    max_face_lost: float = MAX_FACE_LOST

    def settings(self) -> str:
        return f"resolution={self.resolution} max_face_lost={self.max_face_lost:g}"

    def check(self) -> None:
        if not 64 <= self.resolution <= 2048 or self.resolution % 8:
            raise ConfigError(f"--resolution must be a multiple of 8 from 64 to 2048, got {self.resolution}")
        if not 0 <= self.max_face_lost < 1:
            raise ConfigError(f"--max-face-lost must be a share from 0 to below 1, got {self.max_face_lost}")

    def process(self, item: Item, out_dir: Path) -> Result:
        frames = VideoFrames(item.path)
        n = len(frames)
        limit = int(self.max_face_lost * n)
        res = self.resolution
        out = output_path(out_dir, item.name)
        out.parent.mkdir(parents=True, exist_ok=True)
        aligner = Aligner(res)
        affine: np.ndarray | None = None
        waiting: list[np.ndarray] = []  # frames before the first face, warped once it is found
        lost, tracks, track_id = 0, 0, None
        with FaceTracker("largest") as tracker, VideoWriter(out, res, res, FPS, audio_path=item.path) as writer:
            for index, frame in enumerate(frames.iter_range(0, n)):
                face = tracker(frame)
                if face is None:
                    lost += 1
                    if lost > limit:
                        writer.abort()
                        share = f"{self.max_face_lost:.0%}"
                        detail = f"no face in {lost} of the first {index + 1} frames (of {n}): over {share}"
                        return Result.drop("face lost", detail, frames=n, face_lost=lost)
                else:
                    if tracker.track_id != track_id:  # a new track: no smoothing across the break
                        aligner.reset()
                        track_id = tracker.track_id
                        tracks += 1
                    affine = aligner.fit(face.points3)
                if affine is None:
                    waiting.append(frame)
                    continue
                for early in waiting:
                    writer.write(aligner.warp(early, affine))
                waiting.clear()
                writer.write(aligner.warp(frame, affine))
        return Result([out], [n / FPS], figures={"frames": n, "face_lost": lost, "tracks": tracks})
