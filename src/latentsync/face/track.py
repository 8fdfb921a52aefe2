"""Follow one speaker's face through a video: pick it with `--face`, keep it, say None when it is not there.

The rule (what `FaceTracker` does each frame):

1. Faces that are implausible are dropped first: box under `min_size` px on either side, width/height outside
   upstream's [0.2, 1.5], or less than half of the box inside the frame.
2. While the speaker was seen on the previous frame, it is the face whose box centre is nearest the previous
   one, within half the previous box size and at 0.5x..2x its area. Faces are never re-ranked by the
   selector while the track holds, so "largest" does not flip between two people of similar size.
3. Every other face seen together with the speaker is remembered as another person (matched the same way,
   forgotten after `forget_after` frames unseen). When the speaker is missing, those people are matched
   first and are never taken as the speaker: if the speaker leaves the frame the result is None, not the
   person next to them.
4. A missing speaker is re-acquired from the remaining faces: first one where the speaker was last seen,
   else the selector's pick. Until the speaker has been found once, the selector alone decides each frame.
   Each acquisition starts a new track (`track_id` increments, landmark smoothing restarts), so the caller
   resets its `Aligner` whenever `track_id` changes.

Without face recognition a person who leaves and a different person who enters later are indistinguishable;
the rule above only guarantees that someone visible alongside the speaker is never swapped in.

Landmark smoothing is LatentSync 1.5's: each point moves from its previous smoothed position towards the new
detection with weight w = exp(-d^2 / (0.3 * width)) on the previous one (d: the point's displacement in px,
width: x-extent of the 68 iBUG-equivalent points), so sub-pixel jitter is damped and real motion followed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np

from latentsync.errors import ConfigError
from latentsync.face.landmarks import MEDIAPIPE_68, Face, FaceLandmarker

Box = tuple[float, float, float, float]
ASPECT_RANGE = (0.2, 1.5)  # upstream's accepted box width / height
_SELECTOR_HELP = "expected 'largest', a face index counted from the left (0, 1, ...) or a pixel 'x,y'"


@dataclass(frozen=True)
class FaceSelector:
    """Which face is the speaker, from the CLI's `--face largest|N|x,y`."""

    mode: Literal["largest", "index", "point"] = "largest"
    index: int = 0
    point: tuple[int, int] = (0, 0)

    @classmethod
    def parse(cls, text: str) -> FaceSelector:
        spec = text.strip().lower()
        if spec == "largest":
            return cls("largest")
        if re.fullmatch(r"\d+", spec):
            return cls("index", index=int(spec))
        match = re.fullmatch(r"(\d+)\s*,\s*(\d+)", spec)
        if match:
            return cls("point", point=(int(match[1]), int(match[2])))
        raise ConfigError(f"--face {text!r}: {_SELECTOR_HELP}")

    def check_frame(self, width: int, height: int) -> None:
        """A point outside the frame cannot name anyone (it would silently pick the nearest face)."""
        x, y = self.point
        if self.mode == "point" and not (x < width and y < height):
            raise ConfigError(f"--face {x},{y} is outside the {width}x{height} frame")

    def pick(self, faces: Sequence[Face], allowed: Sequence[int] | None = None) -> int | None:
        """Index into `faces` (sorted left to right) of the selected face among `allowed` ones, or None.

        "N" counts all faces, so it keeps meaning "the N-th from the left" with other people present, but the
        face it lands on must be allowed.
        """
        pool = list(range(len(faces))) if allowed is None else list(allowed)
        if not pool:
            return None
        if self.mode == "index":
            return self.index if self.index in pool else None
        if self.mode == "largest":
            return max(pool, key=lambda i: faces[i].size[0] * faces[i].size[1])
        x, y = self.point

        def distance(i: int) -> tuple[float, float]:
            # Containing boxes are all at distance 0; among those the nearest centre wins.
            return _point_box_distance(x, y, faces[i].bbox), _centre_distance(faces[i].center, (x, y))

        return min(pool, key=distance)


def parse_face_selector(text: str) -> FaceSelector:
    """The CLI's `--face` value as a FaceSelector; a one-line ConfigError on bad syntax."""
    return FaceSelector.parse(text)


@dataclass
class FaceStats:
    """What the tracker saw, to explain a video in which the speaker was never found."""

    most_faces: int = 0  # usable faces in the fullest frame
    too_small: int = 0  # detections dropped for being under the minimum size
    largest_too_small: float = 0.0  # the shorter side (px) of the biggest of those

    def explain(self, video: object, selector: FaceSelector, min_size: float) -> str:
        """The one-line reason no frame had the speaker."""
        if selector.mode == "index" and self.most_faces:
            return (f"--face {selector.index}: no frame has {selector.index + 1} faces (at most {self.most_faces} "
                    f"found; faces are counted from the left, from 0)")
        text = f"no face found in any frame of {video}"
        if self.too_small and not self.most_faces:
            text += (f": {self.too_small} detected face(s) were smaller than the {min_size:.0f} px minimum (largest "
                     f"{self.largest_too_small:.0f} px); use a video where the face is bigger, or crop it")
        return text


@dataclass
class _Person:
    box: Box
    last_seen: int


def _point_box_distance(x: float, y: float, box: Box) -> float:
    dx = max(box[0] - x, 0.0, x - box[2])
    dy = max(box[1] - y, 0.0, y - box[3])
    return math.hypot(dx, dy)


def _centre_distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    return math.hypot(a[0] - b[0], a[1] - b[1])


def _box_area(box: Box) -> float:
    return max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)


def _match(box: Box, faces: Sequence[Face], free: Sequence[int]) -> int | None:
    """The free face continuing `box`: nearest centre within half the box size, area within 0.5x..2x."""
    area = _box_area(box)
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    best, best_d = None, 0.5 * math.sqrt(area)
    for i in free:
        ratio = _box_area(faces[i].bbox) / max(area, 1e-6)
        d = _centre_distance(faces[i].center, centre)
        if 0.5 <= ratio <= 2.0 and d <= best_d:
            best, best_d = i, d
    return best


def smooth_landmarks(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """LatentSync 1.5's per-point smoothing (module docstring); applied to all 468 points, width from the 68."""
    width = float(np.ptp(current[list(MEDIAPIPE_68), 0]))
    d2 = np.sum((current - previous) ** 2, axis=1, keepdims=True)
    w = np.exp(-d2 / max(width * 0.3, 1e-6))
    return (w * previous + (1 - w) * current).astype(np.float32)


class FaceTracker:
    """Per frame, the speaker's (smoothed) face or None; see the module docstring for the rule."""

    MIN_SIZE = 50.0  # px, upstream's smallest accepted box width (its height limit, 80 px, is relaxed here)

    def __init__(
        self,
        selector: FaceSelector | str = "largest",
        max_faces: int = 4,
        landmarker: FaceLandmarker | None = None,
        min_size: float = MIN_SIZE,
        forget_after: int = 25,
    ) -> None:
        self.selector = FaceSelector.parse(selector) if isinstance(selector, str) else selector
        self._owns_landmarker = landmarker is None
        self.landmarker = landmarker if landmarker is not None else FaceLandmarker(max_faces=max_faces)
        self.min_size = min_size
        self.forget_after = forget_after
        self.track_id = -1  # increments at every (re-)acquisition of the speaker
        self.stats = FaceStats()
        self.reset()

    def reset(self) -> None:
        """Forget the speaker and everyone else (a new video); `track_id` keeps counting."""
        self._frame = 0
        self._box: Box | None = None  # where the speaker was last seen
        self._visible = False  # seen on the previous frame
        self._others: list[_Person] = []
        self._smoothed: np.ndarray | None = None

    def plausible(self, face: Face, frame_shape: tuple[int, ...]) -> bool:
        """Big enough, face-shaped, and mostly inside the frame."""
        w, h = face.size
        if w < self.min_size or h < self.min_size or not ASPECT_RANGE[0] <= w / h <= ASPECT_RANGE[1]:
            return False
        x0, y0, x1, y1 = face.bbox
        inside = _box_area((max(x0, 0), max(y0, 0), min(x1, frame_shape[1]), min(y1, frame_shape[0])))
        return inside >= 0.5 * w * h

    def __call__(self, frame: np.ndarray) -> Face | None:
        """The speaker in this RGB frame (landmarks smoothed, box as detected), or None if not in view."""
        detected = self.landmarker.detect(frame)
        faces = [f for f in detected if self.plausible(f, frame.shape)]
        self._count(detected, faces)
        free = list(range(len(faces)))
        speaker = _match(self._box, faces, free) if self._visible and self._box is not None else None
        if speaker is not None:
            free.remove(speaker)
        self._follow_others(faces, free)
        new_track = False
        if speaker is None:
            speaker = self._reacquire(faces, free)
            new_track = speaker is not None
        if speaker is not None:  # everyone else in view alongside the speaker is someone else
            self._others += [_Person(faces[i].bbox, self._frame) for i in free]
        self._others = [p for p in self._others if self._frame - p.last_seen <= self.forget_after]
        self._frame += 1
        self._visible = speaker is not None
        if speaker is None:
            self._smoothed = None
            return None
        face = faces[speaker]
        self._box = face.bbox
        if new_track:
            self.track_id += 1
            self._smoothed = face.landmarks
        else:
            assert self._smoothed is not None
            self._smoothed = smooth_landmarks(self._smoothed, face.landmarks)
        return replace(face, landmarks=self._smoothed)

    def _count(self, detected: Sequence[Face], usable: Sequence[Face]) -> None:
        self.stats.most_faces = max(self.stats.most_faces, len(usable))
        for face in detected:
            if min(face.size) < self.min_size:
                self.stats.too_small += 1
                self.stats.largest_too_small = max(self.stats.largest_too_small, min(face.size))

    def _follow_others(self, faces: Sequence[Face], free: list[int]) -> None:
        """Match remembered people to faces (most recently seen first) and take those faces out of `free`."""
        for person in sorted(self._others, key=lambda p: -p.last_seen):
            i = _match(person.box, faces, free)
            if i is not None:
                person.box, person.last_seen = faces[i].bbox, self._frame
                free.remove(i)

    def _reacquire(self, faces: Sequence[Face], free: list[int]) -> int | None:
        if self._box is not None:
            again = _match(self._box, faces, free)
            if again is not None:
                free.remove(again)
                return again
        pick = self.selector.pick(faces, free)
        if pick is not None:
            free.remove(pick)
        return pick

    def close(self) -> None:
        if self._owns_landmarker:
            self.landmarker.close()

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
