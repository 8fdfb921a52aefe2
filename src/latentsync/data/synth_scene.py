"""One synthetic clip's scene: background, where the face(s) sit and how they drift, lighting and camera noise.

Everything random is drawn once from the clip's own generator when the scene is built (per-frame camera noise
is drawn in frame order from the same generator), so a clip is a pure function of its seed. The variation is
what the data has to teach invariance to: head motion (slow translation, +-5 degree roll, +-8% scale, the way
a talking head sways, not shakes), global lighting and colour temperature, background, an optional second
person, sensor noise. The speaker is always the largest face, so the tracker's default choice is the speaker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from latentsync.data.synth_face import MouthAnimator

MAX_ROLL = 5.0  # degrees
MAX_SCALE = 0.08  # relative
MAX_SHIFT = (0.05, 0.04)  # fraction of the frame's width, height
_NOISE_MARGIN = 64  # the noise bank is this much larger than a frame, for random per-frame offsets


@dataclass
class _Person:
    """A face photo placed in the frame: its face centre, face height (px) and mirroring, plus motion."""

    centre: tuple[float, float]
    face_height: float
    mirrored: bool
    motion: np.ndarray  # [num_frames, 4]: roll (deg), relative scale, dx, dy (px)
    still: np.ndarray | None = None  # a fixed rendering (another person), or None for the animated speaker


def _motion(rng: np.random.Generator, num_frames: int, size: tuple[int, int], fps: float) -> np.ndarray:
    """[num_frames, 4] slow drift: each channel is the mean of two sines of 0.05..0.4 Hz, random phase."""
    amount = rng.uniform(0.3, 1.0)
    amplitude = amount * np.array([MAX_ROLL, MAX_SCALE, MAX_SHIFT[0] * size[0], MAX_SHIFT[1] * size[1]])
    t = np.arange(num_frames)[:, None] / fps
    freq = rng.uniform(0.05, 0.4, size=(2, 4))
    phase = rng.uniform(0, 2 * np.pi, size=(2, 4))
    return 0.5 * amplitude * (np.sin(2 * np.pi * freq[0] * t + phase[0]) + np.sin(2 * np.pi * freq[1] * t + phase[1]))


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (0..255) of the kind walls and furniture have: any hue, low saturation, mid brightness."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(10, 130), rng.uniform(60, 220)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _background(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """float32 [H, W, 3]: a smoothly shaded wall, a few soft-edged panels (doors, shelves), fine grain."""
    width, height = size
    grid = (int(rng.integers(2, 5)), int(rng.integers(3, 8)))
    shade = 1 + rng.normal(0, 0.15, size=(*grid, 1)) + rng.normal(0, 0.04, size=(*grid, 3))
    image = cv2.resize((_muted_colour(rng) * shade).astype(np.float32), size, interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(0, 5))):
        x0, x1 = sorted(rng.uniform(0, width, 2).astype(int))
        y0, y1 = sorted(rng.uniform(0, height, 2).astype(int))
        panel = np.zeros((height, width), np.float32)
        panel[y0:y1, x0:x1] = 1.0
        k = 2 * int(rng.integers(1, 12)) + 1
        panel = cv2.GaussianBlur(panel, (k, k), 0)[:, :, None]
        image += panel * (_muted_colour(rng) - image)
    grain = rng.normal(0, 1, size=(max(height // 2, 1), max(width // 2, 1))).astype(np.float32)
    image += rng.uniform(0, 6) * cv2.resize(grain, size, interpolation=cv2.INTER_LINEAR)[:, :, None]
    return np.clip(image, 0, 255)


def _lighting(rng: np.random.Generator) -> np.ndarray:
    """A [1, 256, 3] uint8 lookup table: contrast, brightness, gamma and colour temperature, per channel."""
    x = np.linspace(0, 1, 256)[:, None]
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    gamma = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    warmth = rng.uniform(-0.12, 0.12)  # > 0 warmer (more red, less blue)
    gains = np.array([1 + warmth, 1 + 0.2 * warmth, 1 - warmth])
    y = np.clip((x - 0.5) * contrast + 0.5 + brightness, 0, 1) ** gamma * gains
    return np.clip(np.rint(255 * y), 0, 255).astype(np.uint8)[None]


class Scene:
    """Renders the frames of one clip; the speaker's mouth state is supplied per frame."""

    def __init__(
        self,
        animator: MouthAnimator,
        rng: np.random.Generator,
        size: tuple[int, int],
        num_frames: int,
        other_faces: bool = False,
        fps: float = 25.0,
    ) -> None:
        self.animator = animator
        self._rng = rng
        width, height = size
        self._background = _background(rng, size)
        self._lut = _lighting(rng)
        # Camera noise: one bank of Gaussian noise, a random window of it per frame (fresh-looking noise every
        # frame for the cost of an index, instead of drawing 0.7 M normals per 640x360 frame).
        sigma = rng.uniform(0.5, 4.0)
        bank = (height + _NOISE_MARGIN, width + _NOISE_MARGIN, 3)
        self._noise = np.rint(rng.normal(0, sigma, size=bank)).astype(np.int16)
        self._alpha = animator.head_alpha()
        ys, xs = np.nonzero(self._alpha > 1e-3)  # the cut-out's box in the photo, as 4 corners
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        self._support = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], np.float64)
        face_height = rng.uniform(0.36, 0.5) * height
        if other_faces:  # the speaker on one side, a smaller, silent person on the other
            side = 1 if rng.random() < 0.5 else -1
            centre = ((0.5 + side * rng.uniform(0.18, 0.24)) * width, rng.uniform(0.45, 0.55) * height)
            other_centre = ((0.5 - side * rng.uniform(0.18, 0.24)) * width, rng.uniform(0.45, 0.55) * height)
            other_height = face_height * rng.uniform(0.65, 0.8)
            motion = _motion(rng, num_frames, size, fps)
            other = _Person(other_centre, other_height, bool(rng.random() < 0.5), motion, animator.render(0.0))
        else:
            other = None
            centre = (rng.uniform(0.38, 0.62) * width, rng.uniform(0.45, 0.55) * height)
        self.speaker = _Person(centre, face_height, bool(rng.random() < 0.5), _motion(rng, num_frames, size, fps))
        self._people = [p for p in (other, self.speaker) if p is not None]  # back to front

    def placement(self, person: _Person, index: int) -> np.ndarray:
        """2x3 photo -> frame map: mirror, roll and scale about the face centre, move it to its place."""
        roll, scale, dx, dy = person.motion[index]
        x0, y0, x1, y1 = self.animator.face_box
        s = person.face_height / (y1 - y0) * (1 + scale)
        a = math.radians(roll)
        linear = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        if person.mirrored:
            linear = linear @ np.diag([-1.0, 1.0])
        face_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
        target = np.array([person.centre[0] + dx, person.centre[1] + dy])
        return np.concatenate([linear, (target - linear @ face_centre)[:, None]], axis=1)

    def speaker_face(self, index: int) -> tuple[tuple[float, float], float]:
        """Where the speaker's face centre is in frame `index`, and its face width in pixels."""
        m = self.placement(self.speaker, index)
        x0, y0, x1, y1 = self.animator.face_box
        centre = m[:, :2] @ np.array([(x0 + x1) / 2, (y0 + y1) / 2]) + m[:, 2]
        return (float(centre[0]), float(centre[1])), float(np.linalg.norm(m[:, 0]) * (x1 - x0))

    def frame(self, index: int, opening: float, roundness: float) -> np.ndarray:
        """RGB uint8 [H, W, 3] frame `index` with the speaker's mouth in the given state."""
        image = self._background.copy()
        for person in self._people:
            photo = person.still if person.still is not None else self.animator.render(opening, roundness)
            self._paste(image, photo, self.placement(person, index))
        out = cv2.LUT(cv2.convertScaleAbs(image), self._lut)  # convertScaleAbs rounds and saturates to uint8
        height, width = out.shape[:2]
        dy, dx = self._rng.integers(0, _NOISE_MARGIN, size=2)
        noisy = out.astype(np.int16) + self._noise[dy : dy + height, dx : dx + width]
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def _paste(self, image: np.ndarray, photo: np.ndarray, m: np.ndarray) -> None:
        """Composite the head cut-out of `photo` into `image` (in place), warping only the box it lands in."""
        corners = self._support @ m[:, :2].T + m[:, 2]
        height, width = image.shape[:2]
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 1, 0)
        x1 = min(int(np.ceil(corners[:, 0].max())) + 2, width)
        y1 = min(int(np.ceil(corners[:, 1].max())) + 2, height)
        if x1 <= x0 or y1 <= y0:
            return
        shifted = m.copy()
        shifted[:, 2] -= (x0, y0)
        box = (x1 - x0, y1 - y0)
        head = cv2.warpAffine(photo, shifted, box, flags=cv2.INTER_LINEAR)
        alpha = cv2.warpAffine(self._alpha, shifted, box, flags=cv2.INTER_LINEAR)[:, :, None]
        region = image[y0:y1, x0:x1]
        region += alpha * (head - region)
