"""Face clips for tests, synthesised from a real face photo (scikit-image's astronaut, a 512x512 portrait).

The head is cut out with a feathered ellipse and composited onto a smooth random background, moved by a slow
random similarity drift, so the face detector and tracker see a real face moving the way a talking head does.
Ground-truth face boxes come from the face's box in the photo mapped through the same transform.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Iterator

import cv2
import numpy as np

# Where things are in skimage.data.astronaut() (pixels): mediapipe's landmark box of the face, and an
# ellipse around the head (hair to chin/neck) that the cut-out keeps.
ASTRONAUT_FACE_BOX = (178.0, 72.0, 272.0, 176.0)
HEAD_CENTRE = (225.0, 125.0)
HEAD_AXES = (85.0, 110.0)
PHOTO_SIZE = 512

# Per face: centre x as a fraction of the frame width, face-box height as a fraction of the frame height, mirrored.
_SINGLE = [(0.5, 0.42, False)]
_PAIR = [(0.28, 0.45, False), (0.72, 0.38, True)]


@lru_cache(maxsize=1)
def astronaut() -> np.ndarray:
    """The photo, RGB uint8 [512, 512, 3]."""
    from skimage.data import astronaut as load

    return np.ascontiguousarray(load())


@lru_cache(maxsize=1)
def _head_alpha() -> np.ndarray:
    """float32 [512, 512] alpha of the head cut-out: 1 inside the ellipse, a ~12 px feather outside."""
    alpha = np.zeros((PHOTO_SIZE, PHOTO_SIZE), np.uint8)
    centre = tuple(int(v) for v in HEAD_CENTRE)
    axes = tuple(int(v) for v in HEAD_AXES)
    cv2.ellipse(alpha, centre, axes, 0, 0, 360, 255, thickness=-1)
    return cv2.GaussianBlur(alpha, (25, 25), 0).astype(np.float32) / 255.0


def _background(size: tuple[int, int], rng: np.random.Generator, textured: bool) -> np.ndarray:
    width, height = size
    if not textured:
        return np.full((height, width, 3), 96, np.uint8)
    coarse = rng.uniform(60, 190, size=(6, 10, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(smooth, 0, 255).astype(np.uint8)


def _drift(num_frames: int, fps: float, rng: np.random.Generator, enabled: bool) -> np.ndarray:
    """[num_frames, 4]: rotation (deg, +-5), relative scale (+-5%), tx, ty (px, +-40); a sum of slow sines."""
    amplitude = np.array([5.0, 0.05, 40.0, 40.0])
    if not enabled:
        return np.zeros((num_frames, 4))
    t = np.arange(num_frames)[:, None] / fps
    freq = rng.uniform(0.05, 0.4, size=(2, 4))  # Hz: head sway, not shake
    phase = rng.uniform(0, 2 * np.pi, size=(2, 4))
    wave = 0.5 * (np.sin(2 * np.pi * freq[0] * t + phase[0]) + np.sin(2 * np.pi * freq[1] * t + phase[1]))
    return wave * amplitude


def _placement(frame_size: tuple[int, int], layout: tuple[float, float, bool], motion: np.ndarray) -> np.ndarray:
    """2x3 photo -> frame map: mirror (optional), scale and rotate about the head centre, move to the target."""
    width, height = frame_size
    cx_frac, face_frac, mirrored = layout
    face_h = ASTRONAUT_FACE_BOX[3] - ASTRONAUT_FACE_BOX[1]
    scale = face_frac * height / face_h * (1 + motion[1])
    angle = math.radians(motion[0])
    rot = scale * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    flip = np.array([[-1.0, 0.0, PHOTO_SIZE - 1.0], [0.0, 1.0, 0.0]]) if mirrored else np.eye(2, 3)
    hx, hy = HEAD_CENTRE
    head = flip[:, :2] @ np.array([hx, hy]) + flip[:, 2]  # head centre after the flip
    target = np.array([cx_frac * width + motion[2], 0.5 * height + motion[3]])
    m = np.empty((2, 3))
    m[:, :2] = rot @ flip[:, :2]
    m[:, 2] = rot @ (flip[:, 2] - head) + target
    return m


def _box(m: np.ndarray) -> tuple[float, float, float, float]:
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ m[:, :2].T + m[:, 2]
    return (*corners.min(axis=0), *corners.max(axis=0))


def astronaut_frames(
    num_frames: int,
    size: tuple[int, int] = (1280, 720),
    fps: float = 30.0,
    seed: int = 0,
    drift: bool = True,
    absent: tuple[int, int] | None = None,
    two_faces: bool = False,
    absent_faces: tuple[int, ...] | None = None,
    textured: bool = True,
    with_boxes: bool = False,
) -> Iterator[np.ndarray] | Iterator[tuple[np.ndarray, list[tuple[float, float, float, float] | None]]]:
    """RGB uint8 [H, W, 3] frames (size is (width, height)) of the astronaut's head drifting over a background.

    `two_faces`: face 0 on the left (larger), face 1 on the right (mirrored, ~15% smaller), each drifting on
    its own. Frames `absent[0] <= i < absent[1]` leave out the faces in `absent_faces` (default: all), so
    nothing is detectable there. `with_boxes` yields (frame, boxes) instead, with each face's ground-truth
    (x0, y0, x1, y1) box in face order, None where the face is left out.
    """
    rng = np.random.default_rng(seed)
    layouts = _PAIR if two_faces else _SINGLE
    hidden = set(range(len(layouts)) if absent_faces is None else absent_faces)
    background = _background(size, rng, textured)
    motions = [_drift(num_frames, fps, rng, drift) for _ in layouts]
    photo = astronaut().astype(np.float32)
    alpha = _head_alpha()
    for i in range(num_frames):
        frame = background.astype(np.float32)
        boxes: list[tuple[float, float, float, float] | None] = []
        gone = absent is not None and absent[0] <= i < absent[1]
        for k, layout in enumerate(layouts):
            if gone and k in hidden:
                boxes.append(None)
                continue
            m = _placement(size, layout, motions[k][i])
            head = cv2.warpAffine(photo, m, size, flags=cv2.INTER_LINEAR)
            a = cv2.warpAffine(alpha, m, size, flags=cv2.INTER_LINEAR)[:, :, None]
            frame = a * head + (1 - a) * frame
            boxes.append(_box(m))
        out = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
        yield (out, boxes) if with_boxes else out
