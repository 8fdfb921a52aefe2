"""The face a live session animates: a short video played ping-pong, or a still image, prepared once.

Tracking and cropping cost about as much per frame as the rest of the CPU side put together, so it is done
once, when the avatar is opened, for one whole ping-pong cycle (forward, then backward: the offline pipeline's
`looped` order). Frame i of a session is then entry i mod (2n) of that cycle. For the first cycle this is
exactly the offline run's tracking; later cycles repeat the first, where offline tracking would carry its
smoothing state on (a difference below a pixel of crop position, at the turn-around frames only).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentsync.errors import ConfigError, NoFaceError
from latentsync.face.track import FaceStats, FaceTracker, parse_face_selector
from latentsync.pipeline.faces import FaceFrame, aligned_frames
from latentsync.video.reader import VideoFrames

MAX_SECONDS = 10.0  # a 10 s 1080p avatar holds 250 frames of 6 MB in memory


@dataclass
class Avatar:
    """Source frames (25 fps) and, per entry of the ping-pong cycle, which frame it shows and its face crop."""

    name: str
    frames: list[np.ndarray]
    cycle: list[FaceFrame]  # cycle[j].index: the source frame entry j shows; affine/crop None without a face
    # VAE moments of its crops, filled by the first session and reused by the next ones (per model and mask)
    moments: dict[tuple[int, int], OrderedDict] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path, resolution: int, face: str = "largest",
             max_seconds: float = MAX_SECONDS) -> "Avatar":
        """Decode, track and crop `path` (a video or an image). Refused in one line when it is too long or has no
        usable face."""
        selector = parse_face_selector(face)
        source = VideoFrames(path)
        info = source.info
        selector.check_frame(info.width, info.height)
        if not info.is_image and info.duration > max_seconds:
            raise ConfigError(f"{path}: the avatar video is {info.duration:.1f} s long; live avatars take at most "
                              f"{max_seconds:g} s (a short loop of the face talking or at rest)")
        frames = [image for _, image in source.looped(max(1, len(source)))]
        order = list(range(len(frames))) + list(range(len(frames) - 1, -1, -1)) if len(frames) > 1 else [0]
        seen = FaceStats()
        cycle = []
        for j, item in enumerate(aligned_frames(((i, frames[i]) for i in order), selector, resolution,
                                                seen=seen, still=len(frames) == 1)):
            item.index = order[j]
            item.image = frames[order[j]]
            cycle.append(item)
        if all(item.crop is None for item in cycle):
            raise NoFaceError(seen.explain(path, selector, FaceTracker.MIN_SIZE))
        return cls(Path(path).stem, frames, cycle)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of its frames."""
        height, width = self.frames[0].shape[:2]
        return width, height

    def frame(self, index: int) -> FaceFrame:
        """A fresh FaceFrame for output frame `index`: the cycle entry's crop, sharing (not copying) the source
        image; pasting makes its own copy."""
        entry = self.cycle[index % len(self.cycle)]
        return FaceFrame(index, entry.image, entry.affine, entry.crop)
