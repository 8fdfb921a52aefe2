"""Make a still face photo talk: open its jaw and lips by a piecewise-affine warp and draw the mouth inside.

Why a warp of the photo and not a drawn cartoon: SyncNet and the U-Net are trained on these frames and then
meet real faces, so everything except the mouth's motion should stay photographic (skin, lips, shading).

How. mediapipe's 468 landmarks are found once on the photo. The mesh is mediapipe's own face triangulation,
whose mouth is a hole (so no triangle ties the upper lip to the lower one), with that hole filled by a strip
of triangles between the inner lip contours, and two fixed rings around the face (see `_mesh`). A mouth state
(opening, roundness) moves the landmarks; every triangle that moves is mapped back to its rest position with
its own affine transform, which is continuous across shared edges, so the warp has no seams. The moves:

- inner lips: the mouth is rebuilt around the photo's own lip seam (the midline between the inner upper and
  lower lip contours), so the photo's resting expression does not matter (the astronaut smiles with her teeth
  showing; at opening 0 her lips meet). The gap is an arch, widest in the middle and 0 at the corners; the
  upper lip takes 10% of it upwards, the lower lip and jaw 90% downwards, as a jaw hinge does;
- outer lips follow their inner partner, so the lips keep their thickness;
- every other landmark follows a smooth field: below the seam it moves with the jaw (full at the chin, fading
  towards the ears), above it with the upper lip (fading towards the nose); the rings stay, so the neck and
  cheeks stretch smoothly;
- roundness pulls the lips towards the mouth's centre (rounded vowels are narrower).

Inside the new inner-lip polygon the photo's own mouth is replaced by a dark cavity with the upper teeth
showing once the mouth is open by a few pixels (lower teeth at wider openings), and a faint line marks the
closed lips, so every photo gets the same, clearly visible mouth interior.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from latentsync.errors import LatentSyncError, NoFaceError
from latentsync.face.landmarks import FaceLandmarker

# mediapipe lip contours, corner to corner (image-left to image-right); index k of an upper chain pairs with
# index k of the lower chain of the same contour.
UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
_EYE_CORNERS = (33, 263)  # outer eye corners: the face's horizontal axis
_CHEEKS = (234, 454)  # face-oval points at cheek height: the face's width
_CHIN = 152
_LIPS = sorted(set(UPPER_OUTER + LOWER_OUTER + UPPER_INNER + LOWER_INNER))

MAX_GAP = 0.36  # inner-lip gap at opening 1, as a fraction of the mouth's width (outer corners)
UPPER_SHARE = 0.1  # how much of the gap the upper lip rises (the rest is the jaw dropping)
CORNER_DROP = 0.15  # how far the mouth corners drop, as a fraction of the gap
LIP_EDGE = 0.04  # how far outside mediapipe's inner-lip contour the lips are sampled, per mouth width
ROUNDING = 0.18  # lateral shrink of the lips at roundness 1 and opening 1
MAX_FACE_HEIGHT = 256  # px; larger photos are shrunk first (cheaper warps; 640x360 frames show faces <= 195 px)
_CAVITY = np.array([62.0, 20.0, 26.0], np.float32)
_TEETH = np.array([228.0, 222.0, 208.0], np.float32)
_TONGUE = np.array([132.0, 52.0, 60.0], np.float32)
_LIP_LINE = np.array([80.0, 32.0, 38.0], np.float32)
_SUBPIXEL = 4  # bits of fixed-point precision for cv2's polygon drawing
_MIN_MOVE = 0.25  # px: landmarks moved less than this are treated as fixed (keeps the warped region small)


def load_photo(photo: str | os.PathLike | None) -> tuple[np.ndarray, str]:
    """RGB uint8 photo and a name for messages; None is scikit-image's astronaut (a 512x512 portrait)."""
    if photo is None:
        from skimage.data import astronaut

        return np.ascontiguousarray(astronaut()), "astronaut"
    path = Path(photo)
    if not path.is_file():
        raise LatentSyncError(f"photo not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise LatentSyncError(f"cannot read {path} as an image")
    return np.ascontiguousarray(image[:, :, ::-1]), str(path)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@lru_cache(maxsize=1)
def _face_mesh() -> tuple[np.ndarray, tuple[int, ...]]:
    """mediapipe's canonical face triangles ([F, 3] landmark indices) and its face-oval landmarks.

    mediapipe ships the mesh as edges; its triangles are the edge triples that close (854 of them, Euler
    characteristic 0: a disk with one hole, the mouth). Its mouth being a hole is what makes it the right
    mesh here: no triangle joins the upper lip to the lower one.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL, FACEMESH_TESSELATION

    neighbours: dict[int, set[int]] = {}
    for a, b in FACEMESH_TESSELATION:
        neighbours.setdefault(a, set()).add(b)
        neighbours.setdefault(b, set()).add(a)
    triangles = [
        (a, b, c) for a in neighbours for b in neighbours[a] if b > a for c in neighbours[a] & neighbours[b] if c > b
    ]
    oval = tuple(sorted({i for edge in FACEMESH_FACE_OVAL for i in edge}))
    return np.array(triangles, np.int64), oval


def _ladder(a: list[int], b: list[int], closed: bool = False) -> list[tuple[int, int, int]]:
    """Triangles filling the strip between two vertex chains of equal length (index k faces index k)."""
    steps = len(a) if closed else len(a) - 1
    triangles = []
    for k in range(steps):
        k1 = (k + 1) % len(a)
        triangles += [(a[k], a[k1], b[k1]), (a[k], b[k1], b[k])]
    return [t for t in triangles if len(set(t)) == 3]


class MouthAnimator:
    """A face photo whose mouth can be set to any (opening, roundness) in [0, 1]; see the module docstring."""

    def __init__(self, photo: np.ndarray, name: str = "photo") -> None:
        with FaceLandmarker(max_faces=1, tracking=False) as landmarker:
            faces = landmarker.detect(photo)
        if not faces:
            raise NoFaceError(f"no face found in the synth photo {name}")
        face_height = faces[0].size[1]
        if face_height > MAX_FACE_HEIGHT:
            scale = MAX_FACE_HEIGHT / face_height
            photo = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            landmarks = faces[0].landmarks.astype(np.float64) * scale
        else:
            landmarks = faces[0].landmarks.astype(np.float64)
        self.photo = photo.astype(np.float32)
        self.rest = landmarks
        x0, y0 = landmarks.min(axis=0)
        x1, y1 = landmarks.max(axis=0)
        self.face_box = (float(x0), float(y0), float(x1), float(y1))
        self._frame_axes()
        self._points, self._triangles = self._mesh()  # vertices (unmoved) and [T, 3] triangles
        self._source = self._points.copy()  # where each vertex samples the photo
        # mediapipe's inner-lip contour tends to sit a pixel or two inside the mouth; sampling the lips from a
        # little further out keeps the photo's own teeth and dark gaps from showing on the lip edges.
        edge = LIP_EDGE * self._mouth_width * self._down
        self._source[list(UPPER_INNER[1:-1])] -= edge
        self._source[list(LOWER_INNER[1:-1])] += edge
        self._moving, self._roi = self._moving_region()
        x0, y0, x1, y1 = self._roi
        self._grid = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))

    # --- geometry ----------------------------------------------------------------------------------------------

    def _frame_axes(self) -> None:
        """The face's own axes: across (eye to eye), down (perpendicular), centred on the inner lips."""
        lm = self.rest
        across = lm[_EYE_CORNERS[1]] - lm[_EYE_CORNERS[0]]
        self._across = across / np.linalg.norm(across)
        self._down = np.array([-self._across[1], self._across[0]])
        self._centre = 0.5 * (lm[UPPER_INNER[0]] + lm[UPPER_INNER[-1]])
        self._mouth_width = float(np.linalg.norm(lm[UPPER_OUTER[-1]] - lm[UPPER_OUTER[0]]))
        self._half_face = 0.5 * float(np.linalg.norm(lm[_CHEEKS[1]] - lm[_CHEEKS[0]]))
        self._chin = max(float((lm[_CHIN] - self._centre) @ self._down), 1.0)

    def _mesh(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices and triangles covering the whole photo: the face mesh, its mouth hole, rings around it.

        The mouth hole is filled with a ladder between the inner lip contours (these triangles are flat when
        the lips meet and fill exactly the open mouth otherwise). Around the face two fixed rings, the face
        oval scaled by 1.6 and 3 about its centre, are joined to the oval by ladders, so the jaw's movement
        fades out across the neck and the background, and the outer ring lies well outside the moving area.
        """
        face, oval = _face_mesh()
        centre = self.rest[list(oval)].mean(axis=0)
        rel = self.rest[list(oval)] - centre
        order = [oval[i] for i in np.argsort(np.arctan2(rel[:, 1], rel[:, 0]))]  # the oval, going round
        n = len(self.rest)
        rings = [centre + scale * (self.rest[order] - centre) for scale in (1.6, 3.0)]
        inner_ring = list(range(n, n + len(order)))
        outer_ring = list(range(n + len(order), n + 2 * len(order)))
        triangles = [tuple(t) for t in face]
        triangles += _ladder(list(UPPER_INNER), list(LOWER_INNER))
        triangles += _ladder(order, inner_ring, closed=True) + _ladder(inner_ring, outer_ring, closed=True)
        return np.concatenate([self.rest, *rings]), np.array(triangles, np.int64)

    def _local(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points in the face's frame: (across, down) offsets from the mouth centre in pixels."""
        rel = points - self._centre
        return rel @ self._across, rel @ self._down

    def displacement(self, opening: float, roundness: float = 0.0) -> np.ndarray:
        """[468, 2] pixel moves of the landmarks for one mouth state (both values clipped to [0, 1])."""
        opening = float(np.clip(opening, 0.0, 1.0))
        roundness = float(np.clip(roundness, 0.0, 1.0))
        lm = self.rest
        gap = opening * MAX_GAP * self._mouth_width
        shrink = 1.0 - ROUNDING * roundness * opening
        up, low = lm[list(UPPER_INNER)], lm[list(LOWER_INNER)]
        seam_x, seam_y = self._local(0.5 * (up + low))
        half_width = max(np.abs(seam_x).max(), 1.0)
        arch = gap * np.sqrt(np.clip(1 - (seam_x / half_width) ** 2, 0.0, 1.0))
        corner = CORNER_DROP * (gap - arch)  # the corners sag a little as the jaw opens
        across = np.outer(seam_x * shrink, self._across)
        new_up = self._centre + across + np.outer(seam_y - UPPER_SHARE * arch + corner, self._down)
        new_low = self._centre + across + np.outer(seam_y + (1 - UPPER_SHARE) * arch + corner, self._down)
        moves = np.zeros_like(lm)
        moves[list(UPPER_INNER)] = new_up - up
        moves[list(LOWER_INNER)] = new_low - low
        moves[list(UPPER_OUTER)] = moves[list(UPPER_INNER)]
        moves[list(LOWER_OUTER)] = moves[list(LOWER_INNER)]
        mid = len(UPPER_INNER) // 2
        jaw = float(moves[LOWER_INNER[mid]] @ self._down)
        lip = float(moves[UPPER_INNER[mid]] @ self._down)
        others = np.setdiff1d(np.arange(len(lm)), _LIPS)
        u, v = self._local(lm[others])
        lateral = np.exp(-0.5 * (u / (0.7 * self._half_face)) ** 2)
        below = _smoothstep(-0.15, 0.25, v / self._chin)
        vertical = lateral * (below * jaw + (1 - below) * lip * np.exp(-((v / (0.45 * self._chin)) ** 2)))
        near = np.exp(-(u**2 + v**2) / (0.8 * self._mouth_width) ** 2)
        moves[others] = np.outer(vertical, self._down) + np.outer((shrink - 1) * u * near, self._across)
        moves[np.linalg.norm(moves, axis=1) < _MIN_MOVE] = 0.0
        return moves

    def _moving_region(self) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Triangles that some mouth state moves, and a photo box (x0, y0, x1, y1) holding them in every state.

        The extreme states bound all others: every move grows monotonically with opening and roundness.
        """
        states = [self._source - self._points]
        for opening in (0.0, 1.0):
            for roundness in (0.0, 1.0):
                moved = np.zeros_like(self._points)
                moved[: len(self.rest)] = self.displacement(opening, roundness)
                states.append(moved)
        moving = np.any([np.any(m != 0, axis=1) for m in states], axis=0)
        triangles = self._triangles[moving[self._triangles].any(axis=1)]
        corners = np.concatenate([(self._points + m)[triangles.ravel()] for m in states])
        h, w = self.photo.shape[:2]
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 3
        return triangles, (max(int(x0), 0), max(int(y0), 0), min(int(x1), w), min(int(y1), h))

    # --- rendering ---------------------------------------------------------------------------------------------

    def render(self, opening: float, roundness: float = 0.0) -> np.ndarray:
        """The photo (float32 RGB, 0..255) with the mouth in the given state."""
        moves = self.displacement(opening, roundness)
        dst = self._points.copy()
        dst[: len(moves)] += moves
        x0, y0, x1, y1 = self._roi
        map_x, map_y = self._backward_maps(dst)
        out = self.photo.copy()
        region = cv2.remap(self.photo, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        self._draw_mouth(region, dst[: len(moves)], opening)
        out[y0:y1, x0:x1] = region
        return out

    def _backward_maps(self, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each pixel of the region, where it comes from in the photo: its moved triangle's affine map."""
        x0, y0, x1, y1 = self._roi
        src_tri = self._source[self._moving]  # [K, 3, 2]
        dst_tri = dst[self._moving]
        # affine[k] (3x2) maps [x, y, 1] in the moved triangle to the rest one; the last entry is the identity.
        # It is inverse([[x, y, 1] per moved vertex]) @ rest vertices, with the 3x3 inverse written out.
        (ax, ay), (bx, by), (cx, cy) = dst_tri[:, 0].T, dst_tri[:, 1].T, dst_tri[:, 2].T
        det = ax * (by - cy) + bx * (cy - ay) + cx * (ay - by)
        usable = np.abs(det) > 1e-3  # a collapsed triangle covers no pixels
        inverse = np.stack([
            np.stack([by - cy, cy - ay, ay - by], 1),
            np.stack([cx - bx, ax - cx, bx - ax], 1),
            np.stack([bx * cy - cx * by, cx * ay - ax * cy, ax * by - bx * ay], 1),
        ], 1) / np.where(usable, det, 1.0)[:, None, None]  # fmt: skip
        affine = np.zeros((len(dst_tri) + 1, 3, 2))
        affine[:-1] = inverse @ src_tri
        affine[-1] = [[1, 0], [0, 1], [0, 0]]
        index = np.full((y1 - y0, x1 - x0), len(dst_tri), np.int32)
        fixed = np.rint((dst_tri - (x0, y0)) * (1 << _SUBPIXEL)).astype(np.int32)
        for k in np.flatnonzero(usable):
            cv2.fillConvexPoly(index, fixed[k], int(k), lineType=cv2.LINE_8, shift=_SUBPIXEL)
        a = affine[index].astype(np.float32)  # [h, w, 3, 2]
        gx, gy = self._grid
        map_x = gx * a[..., 0, 0] + gy * a[..., 1, 0] + a[..., 2, 0]
        map_y = gx * a[..., 0, 1] + gy * a[..., 1, 1] + a[..., 2, 1]
        return map_x, map_y

    def _draw_mouth(self, region: np.ndarray, lm: np.ndarray, opening: float) -> None:
        """Replace the inside of the inner lips with a cavity, tongue and teeth; mark the lip line (in place).

        `lm` are the moved landmarks in photo pixels. Shapes are laid out in the face's frame (across, down)
        from the moved lip centres and drawn anti-aliased; whatever falls outside the inner-lip polygon is cut
        away by that polygon's own mask.
        """
        offset = np.array(self._roi[:2], np.float64)
        upper, lower = lm[list(UPPER_INNER)], lm[list(LOWER_INNER)]
        size = region.shape[:2]
        gap = opening * MAX_GAP * self._mouth_width
        mid = len(UPPER_INNER) // 2
        x_lips, _ = self._local(upper)
        half = max(float(np.abs(x_lips).max()), 1.0)
        _, (top, bottom) = self._local(np.stack([upper[mid], lower[mid]]))
        interior = np.empty_like(region)
        interior[:] = _CAVITY
        xs = np.linspace(-1.0, 1.0, 17)
        arc = 1 - 0.6 * xs**2  # teeth edges curve up/down towards the sides
        # (half width, where the shape starts under a lip, how far it reaches into the mouth (signed), colour)
        shapes = [
            (0.6 * half, bottom + 2.0, -0.3 * gap * np.sqrt(1 - xs**2) - 1.0, _TONGUE),
            (0.8 * half, top - 2.0, 2.0 + min(0.3 * gap - 1.5, 0.12 * self._mouth_width) * arc, _TEETH),
            (0.6 * half, bottom + 2.0, -2.0 - min(0.15 * gap - 2.0, 0.08 * self._mouth_width) * arc, _TEETH),
        ]
        for width, cap, reach, colour in shapes:
            if np.abs(reach).max() <= 2.0:
                continue  # still hidden under the lip
            across = np.concatenate([xs, xs[::-1]]) * width
            down = np.concatenate([cap + reach, np.full_like(xs, cap)])
            outline = self._centre + np.outer(across, self._across) + np.outer(down, self._down)
            interior += self._coverage(size, outline - offset) * (colour - interior)
        interior = cv2.GaussianBlur(interior, (3, 3), 0)
        region += self._coverage(size, np.concatenate([upper, lower[-2:0:-1]]) - offset) * (interior - region)
        line = np.zeros(size, np.uint8)
        thickness = max(1, round(self._mouth_width / 45))  # also hides the photo's squeezed-shut teeth
        cv2.polylines(line, [self._fixed(upper - offset)], False, 255, thickness, cv2.LINE_AA, _SUBPIXEL)
        region += 0.45 * (line.astype(np.float32) / 255)[:, :, None] * (_LIP_LINE - region)

    def _coverage(self, shape: tuple[int, int], polygon: np.ndarray) -> np.ndarray:
        """float32 [h, w, 1] anti-aliased coverage of a polygon given in region pixels."""
        mask = np.zeros(shape, np.uint8)
        cv2.fillPoly(mask, [self._fixed(polygon)], 255, cv2.LINE_AA, _SUBPIXEL)
        return (mask.astype(np.float32) / 255)[:, :, None]

    @staticmethod
    def _fixed(points: np.ndarray) -> np.ndarray:
        return np.rint(points * (1 << _SUBPIXEL)).astype(np.int32)

    def head_alpha(self) -> np.ndarray:
        """float32 [H, W] cut-out of the head: a feathered ellipse around the face, with room for hair and jaw."""
        x0, y0, x1, y1 = self.face_box
        w, h = x1 - x0, y1 - y0
        alpha = np.zeros(self.photo.shape[:2], np.uint8)
        centre = (int(round((x0 + x1) / 2)), int(round((y0 + y1) / 2)))
        cv2.ellipse(alpha, centre, (int(0.9 * w), int(1.06 * h)), 0, 0, 360, 255, thickness=-1)
        k = 2 * int(0.12 * w) + 1
        return cv2.GaussianBlur(alpha, (k, k), 0).astype(np.float32) / 255.0
