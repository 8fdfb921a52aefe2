"""What the web app and the HTTP service share: models loaded once, the installed-model list, face previews.

Upstream's app loads the models again for every request; here each model is loaded on first use and kept, so a
run costs only its own work. One `LipSyncPipeline` serves every request: its models are read-only at inference
and each run builds its own scheduler state, so runs may share it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from latentsync.errors import LatentSyncError, NoFaceError
from latentsync.face.landmarks import FaceLandmarker
from latentsync.models.modeldir import DEMO_MODEL, OFFICIAL_MODELS, ModelDir
from latentsync.pipeline.lipsync import LipSyncPipeline
from latentsync.video.reader import VideoFrames

PREVIEW_FRAMES = 75  # look for faces in the first 3 s (every 5th frame): enough to meet the speaker


class PipelineCache:
    """Pipelines by model name, each loaded once on first use and kept. Safe to call from several threads."""

    def __init__(self, device: str = "auto", dtype: str = "auto") -> None:
        self.device = device
        self.dtype = dtype
        self._pipelines: dict[str, LipSyncPipeline] = {}
        self._lock = threading.Lock()

    def get(self, model: str) -> LipSyncPipeline:
        with self._lock:  # one load at a time: two first requests for a model must not load it twice
            if model not in self._pipelines:
                self._pipelines[model] = LipSyncPipeline.from_model(model, self.device, self.dtype)
            return self._pipelines[model]

    @property
    def loaded(self) -> list[str]:
        return list(self._pipelines)


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's `model.yaml` (`inference:`) asks for; the page starts its settings there."""

    steps: int = 20
    guidance: float = 1.5
    sampler: str = "ddim"


def model_defaults(model: str) -> ModelDefaults:
    """The model's own sampling settings (upstream's for a model that cannot be read: the run then says why)."""
    try:
        inference = ModelDir.resolve(model).spec.inference
    except LatentSyncError:
        return ModelDefaults()
    return ModelDefaults(int(inference.get("steps", 20)), float(inference.get("guidance_scale", 1.5)),
                         str(inference.get("sampler", "ddim")))


def installed_models(extra: Sequence[str] = ()) -> list[str]:
    """`extra` (the user's `--model` values, first = default) then every known model name that resolves here."""
    names = list(dict.fromkeys(extra))
    for name in [DEMO_MODEL, *OFFICIAL_MODELS]:
        if name in names:
            continue
        try:
            ModelDir.resolve(name)
        except LatentSyncError:
            continue
        names.append(name)
    return names


@dataclass(frozen=True)
class FacePreview:
    """The faces of one frame, left to right: index i here is `--face i` in a run."""

    frame_index: int
    crops: list[np.ndarray]  # RGB uint8, a square crop around each face
    boxes: list[tuple[float, float, float, float]]


def preview_faces(video: str | Path, max_frames: int = PREVIEW_FRAMES, stride: int = 5) -> FacePreview:
    """The first frame (of the first `max_frames`, every `stride`-th) with the most faces seen so far.

    Raises NoFaceError when none of those frames has a face: the run would fail the same way, but later.
    """
    frames = VideoFrames(video)
    looked_at = min(len(frames), max_frames)
    best: FacePreview | None = None
    with FaceLandmarker() as landmarker:
        for index, image in enumerate(frames.iter_range(0, looked_at)):
            if index % stride:
                continue
            faces = landmarker.detect(image)
            if faces and (best is None or len(faces) > len(best.boxes)):
                best = FacePreview(index, [_square_crop(image, f.bbox) for f in faces], [f.bbox for f in faces])
    if best is None:
        where = "the image" if frames.info.is_image else f"the first {looked_at / frames.fps:.1f} s"
        raise NoFaceError(f"no face found in {where} of {Path(video).name}")
    return best


def _square_crop(image: np.ndarray, box: tuple[float, float, float, float], margin: float = 0.3) -> np.ndarray:
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    h, w = image.shape[:2]
    left, top = int(max(cx - side / 2, 0)), int(max(cy - side / 2, 0))
    right, bottom = int(min(cx + side / 2, w)), int(min(cy + side / 2, h))
    return np.ascontiguousarray(image[top:bottom, left:right])
