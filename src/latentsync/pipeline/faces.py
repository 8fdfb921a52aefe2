"""The face side of a run, around the model: track and crop the speaker before it, paste the result back after it.

Shared by the offline pipeline (`lipsync.py`) and live sessions (`latentsync.live`), so that both cut the same
crops from the same frames and paste them back the same way: a live session over an avatar gives the offline
run's frames for the same audio.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from latentsync.errors import ConfigError
from latentsync.face.align import Aligner
from latentsync.face.blend import PASTE_MODES, colour_match, paste_weight
from latentsync.face.track import FaceSelector, FaceStats, FaceTracker
from latentsync.pipeline.report import StageClock


@dataclass
class FaceFrame:
    """One video frame on its way through a run."""

    index: int
    image: np.ndarray
    affine: np.ndarray | None = None  # frame -> crop; None: no face, the frame passes through untouched
    crop: np.ndarray | None = None  # the aligned source crop
    generated: np.ndarray | None = None  # the denoiser's crop for it


def aligned_frames(
    frames: Iterable[tuple[int, np.ndarray]], selector: FaceSelector, resolution: int,
    clock: StageClock | None = None, seen: FaceStats | None = None, still: bool = False,
) -> Iterator[FaceFrame]:
    """Track the speaker's face through `frames` and crop it, frame by frame, in order.

    A still image is fitted once: every frame then has the very same crop, so the landmarks run once and the VAE
    encodes the crop once (`ChunkDenoiser` reuses identical crops), where per-frame tracking would jitter. `seen`
    is filled as frames go by, so a caller can explain a video in which the speaker was never found.
    """
    aligner = Aligner(resolution)
    track_id = None
    fitted: tuple[np.ndarray | None, np.ndarray | None] | None = None
    with FaceTracker(selector) as tracker:
        if seen is not None:
            tracker.stats = seen
        for index, (_, image) in enumerate(frames):
            with clock("face") if clock is not None else nullcontext():
                item = FaceFrame(index, image)
                face = tracker(image) if fitted is None else None
                if face is not None:
                    if tracker.track_id != track_id:  # a new track: no smoothing across the break
                        aligner.reset()
                        track_id = tracker.track_id
                    item.affine = aligner.fit(face.points3)
                    item.crop = aligner.warp(image, item.affine)
                if still:
                    fitted = fitted or (item.affine, item.crop)
                    item.affine, item.crop = fitted
            yield item


class Paster:
    """Puts a generated crop back into its frame: upstream's feathered paste of the whole crop, or the seamless
    paste of only the regenerated region with its colour matched (`face/blend.py`)."""

    def __init__(self, resolution: int, mask: np.ndarray, mode: str) -> None:
        if mode not in PASTE_MODES:
            raise ConfigError(f"paste must be one of {', '.join(PASTE_MODES)}, got {mode!r}")
        self.aligner = Aligner(resolution)
        self.weight = paste_weight(mask) if mode == "seamless" else None

    def __call__(self, frame: FaceFrame) -> None:
        """Replace `frame.image` by a copy with `frame.generated` pasted in (the input array is not modified)."""
        assert frame.generated is not None and frame.crop is not None and frame.affine is not None
        crop = frame.generated if self.weight is None else colour_match(frame.crop, frame.generated, self.weight)
        frame.image = self.aligner.restore(frame.image, crop, frame.affine, self.weight)
