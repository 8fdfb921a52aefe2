"""Face landmarks with mediapipe's face mesh (468 points), reduced to the three points the affine template needs.

Which points. Upstream's template (see `align.py`) expects an image-left eyebrow centre, an image-right eyebrow
centre and a nose centre. The LatentSync 1.5 release took them as means of 68-point (iBUG) landmarks:
17..21, 22..26 and 27..35. Its authors also shipped their own mediapipe-468 -> 68-point correspondence for
the case where their 68-point detector was absent, and we use exactly their indices for those points:

- image-left brow (68-pt 17..21):  71, 63, 105, 66, 107
- image-right brow (68-pt 22..26): 336, 296, 334, 293, 301
- nose (68-pt 27..35):             168, 197, 5, 4, 75, 97, 2, 326, 305

Because the correspondence is the authors' own, the means land where upstream's means land, which is what
the U-Net was trained on; a different choice of "brow" or "nose" points would shift every crop by a few
pixels. Alternatives measured on `skimage.data.astronaut()` (face 94 px wide, brows 54 px apart): the upper
brow contour (70, 63, 105, 66, 107 / 336, 296, 334, 293, 300) moves the brow means by 0.6 px; the lower brow
contour (46, 53, 52, 65, 55 / 276, 283, 282, 295, 285) by 4.1 px, mostly down; the nose ridge + tip
(168, 6, 197, 195, 5, 4, 1) moves the nose mean 8.4 px up; the tip region (1, 2, 98, 327, 4, 5, 195) 2.5 px down.
The three means are not rounded (1.6 rounded its InsightFace means; rounding only adds jitter).

Tracking. `FaceLandmarker(tracking=True)` runs mediapipe in video mode: the face detector runs while fewer
than `max_faces` faces are tracked, and each tracked face's landmarks come from the region of the previous
frame's landmarks, so a face being tracked is never re-detected (this is mediapipe's own graph; with one
person and max_faces=4 the cheap detector still runs every frame, looking for more faces).

Small faces. mediapipe's face mesh uses the short-range detector, which misses faces narrower than about 12%
of the frame width (measured in 1280x720: a face 154 px wide is found, 128 px is not). When the mesh finds
no face at all we run the full-range detector and, for each face it finds, the mesh on a zoomed crop: this
finds the astronaut down to 77 px wide (6%) with brow/nose means within 1.5 px of the large-face ones, at
~17 ms per frame instead of ~6 ms. The mesh on the crop is also a second opinion, so a false detection
yields nothing. A small face next to a large one is not looked for (the mesh found a face, so no fallback).
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import cv2
import numpy as np

from latentsync.errors import LatentSyncError

LEFT_BROW = (71, 63, 105, 66, 107)
RIGHT_BROW = (336, 296, 334, 293, 301)
NOSE = (168, 197, 5, 4, 75, 97, 2, 326, 305)
# The authors' mediapipe index for each of the 68 iBUG points (only used for the smoothing width).
MEDIAPIPE_68 = (
    162, 234, 93, 58, 172, 136, 149, 148, 152, 377, 378, 365, 397, 288, 323, 454, 389,
    71, 63, 105, 66, 107, 336, 296, 334, 293, 301,
    168, 197, 5, 4, 75, 97, 2, 326, 305,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)  # fmt: skip
NUM_LANDMARKS = 468
_CROP = 256  # side of the zoomed crop the mesh sees for a small face
_CROP_CONTEXT = 2.0  # crop side / detection box side: the mesh's detector wants the face at ~half the crop
_seen_a_face = False  # process-wide: mediapipe's one-time first-face warning has been emitted (and hidden)


@dataclass(frozen=True, eq=False)
class Face:
    """One face in one frame: mediapipe landmarks in pixel (x, y), their box, and a detector score if known."""

    landmarks: np.ndarray  # [468, 2] float32
    bbox: tuple[float, float, float, float]  # x0, y0, x1, y1 of the landmarks
    score: float | None = None  # the face mesh gives none; the small-face path gives the detector's

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, score: float | None = None) -> Face:
        lm = np.asarray(landmarks, dtype=np.float32)
        x0, y0 = lm.min(axis=0)
        x1, y1 = lm.max(axis=0)
        return cls(lm, (float(x0), float(y0), float(x1), float(y1)), score)

    @property
    def points3(self) -> np.ndarray:
        """[3, 2] float64: image-left brow centre, image-right brow centre, nose centre (the template's order)."""
        lm = self.landmarks.astype(np.float64)
        return np.stack([lm[list(LEFT_BROW)].mean(0), lm[list(RIGHT_BROW)].mean(0), lm[list(NOSE)].mean(0)])

    @property
    def size(self) -> tuple[float, float]:
        return self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]

    @property
    def center(self) -> tuple[float, float]:
        return (self.bbox[0] + self.bbox[2]) / 2, (self.bbox[1] + self.bbox[3]) / 2


def _solutions() -> tuple[Any, Any]:
    """mediapipe's face_mesh and face_detection modules, or a one-line error saying how to install it."""
    try:
        from mediapipe.python.solutions import face_detection, face_mesh
    except ImportError:
        raise LatentSyncError(
            "face landmarks need mediapipe: run `pip install --no-deps mediapipe==0.10.21` (or `make venv`)"
        ) from None
    return face_mesh, face_detection


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence fd 2 while mediapipe starts its graphs.

    Its C++ side (absl, TFLite) prints a handful of warnings on graph start that no setting turns off from
    Python; they come from native threads, so only redirecting the file descriptor works. It is done only
    around graph start-up and mediapipe calls (see `_Graph`), where nothing of ours writes to stderr.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _Graph:
    """A mediapipe solution started with stderr silenced.

    The graph opens its calculators (and logs) on worker threads, so construction alone is not enough: one
    blank warm-up frame makes sure start-up has finished before stderr is restored. A blank frame has no
    face, so it leaves no tracking state behind. The mesh also warns once per process on its first face
    (about z projection, which we do not use), so calls stay silenced until some graph has seen a face.
    """

    def __init__(self, factory: Any, **kwargs: Any) -> None:
        with _quiet_stderr():
            self._solution = factory(**kwargs)
            self._solution.process(np.zeros((64, 64, 3), np.uint8))

    def process(self, image: np.ndarray) -> Any:
        global _seen_a_face
        if _seen_a_face:
            return self._solution.process(image)
        with _quiet_stderr():
            result = self._solution.process(image)
        _seen_a_face = bool(getattr(result, "multi_face_landmarks", None))
        return result

    def close(self) -> None:
        self._solution.close()


def _to_pixels(landmark_list: Any, width: float, height: float) -> np.ndarray:
    pts = np.array([(p.x, p.y) for p in landmark_list.landmark[:NUM_LANDMARKS]], dtype=np.float32)
    return pts * np.array([width, height], dtype=np.float32)


class FaceLandmarker:
    """mediapipe face mesh over a stream of RGB frames; `detect` returns the faces sorted left to right.

    `tracking=True` is video mode (frames must come in order; one landmarker per video); `tracking=False`
    detects every frame from scratch. The thresholds are mediapipe's defaults (0.5), which keep its
    false-positive rate low: a frame without a clear face yields no Face rather than a guess.
    """

    def __init__(
        self,
        max_faces: int = 4,
        tracking: bool = True,
        min_detection_confidence: float = 0.5,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        face_mesh, face_detection = _solutions()
        self._face_mesh, self._face_detection = face_mesh, face_detection
        self.max_faces = max_faces
        self.min_detection_confidence = min_detection_confidence
        self._mesh: _Graph | None = _Graph(
            face_mesh.FaceMesh,
            static_image_mode=not tracking,
            max_num_faces=max_faces,
            refine_landmarks=False,
            min_detection_confidence=min_detection_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._far: _Graph | None = None  # full-range detector, built when first needed
        self._crop_mesh: _Graph | None = None

    def detect(self, frame: np.ndarray) -> list[Face]:
        """Faces in one RGB uint8 [H, W, 3] frame, sorted by box centre from left to right."""
        if self._mesh is None:
            raise RuntimeError("FaceLandmarker is closed")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 [H, W, 3] frame, got {frame.dtype} {frame.shape}")
        frame = np.ascontiguousarray(frame)
        h, w = frame.shape[:2]
        result = self._mesh.process(frame)
        found = result.multi_face_landmarks or []
        faces = [Face.from_landmarks(_to_pixels(lm, w, h)) for lm in found]
        if not faces:
            faces = self._detect_small(frame)
        return sorted(faces, key=lambda f: f.center[0])

    def _detect_small(self, frame: np.ndarray) -> list[Face]:
        """Faces the mesh's short-range detector missed: full-range detection, then the mesh on a zoomed crop."""
        if self._far is None:
            self._far = _Graph(
                self._face_detection.FaceDetection,
                model_selection=1,
                min_detection_confidence=self.min_detection_confidence,
            )
            self._crop_mesh = _Graph(
                self._face_mesh.FaceMesh,
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=False,
                min_detection_confidence=self.min_detection_confidence,
            )
        assert self._crop_mesh is not None
        h, w = frame.shape[:2]
        faces: list[Face] = []
        for det in (self._far.process(frame).detections or [])[: self.max_faces]:
            box = det.location_data.relative_bounding_box
            cx, cy = (box.xmin + box.width / 2) * w, (box.ymin + box.height / 2) * h
            side = _CROP_CONTEXT * max(box.width * w, box.height * h)
            if side < 8:
                continue
            scale = _CROP / side  # crop pixel = scale * (frame pixel - crop origin)
            to_crop = np.array([[scale, 0, _CROP / 2 - scale * cx], [0, scale, _CROP / 2 - scale * cy]])
            crop = cv2.warpAffine(
                frame, to_crop, (_CROP, _CROP), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            found = self._crop_mesh.process(crop).multi_face_landmarks
            if not found:
                continue
            lm = _to_pixels(found[0], _CROP, _CROP)
            lm = (lm - to_crop[:, 2].astype(np.float32)) / np.float32(scale)
            faces.append(Face.from_landmarks(lm, score=float(det.score[0])))
        return faces

    def close(self) -> None:
        for graph in (self._mesh, self._far, self._crop_mesh):
            if graph is not None:
                graph.close()
        self._mesh = self._far = self._crop_mesh = None

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
