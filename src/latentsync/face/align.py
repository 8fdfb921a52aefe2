"""Face alignment: fit upstream's three-point template, warp the face to a square crop, paste an edited crop back.

Everything here reproduces upstream's procedure as written down in `affine_template.json`, because the U-Net
was trained on crops made exactly this way (a face in another position or aspect is out of distribution):

- template = [[17, 20], [58, 20], [37.5, 40]] * ratio with ratio = resolution / 256 * 2.8; the face is warped to
  face_size = (int(75 * ratio), int(100 * ratio)) (210x280 at 256) and then stretched to resolution x resolution
  with Lanczos, so the crop is anisotropic (x 1.22, y 0.91 at 256).
- the fit is a similarity transform from the brow/brow/nose points to the template (Procrustes on points
  normalised by their mean and unbiased std), plus upstream's nose "bias": the nose residual in normalised
  coordinates, blended 0.2 previous + 0.8 current, added to the translation in pixels. The bias is a sub-pixel
  nudge (it is in normalised units); it is what upstream did, so it stays, but it does not smooth anything —
  the temporal smoothing that matters is the landmark smoothing in `track.py`.
- paste back: bicubic antialiased resize to face_size, inverse warp, blend with a mask that is the
  inverse-warped all-ones image eroded 2x2, eroded again by 2*w_edge (w_edge = int(sqrt(area)) // 20) and
  Gaussian-blurred with k = 2*w_edge + 1 and cv2's default sigma for k, 0.3*((k-1)*0.5-1)+0.8.

Upstream warps with kornia in float16 on the GPU; we use cv2 in uint8 (same bilinear sampling, pixel centres on
integer coordinates, fill 127), which differs by rounding only. The paste-back works on the bounding box of
the pasted face (plus a margin) instead of the whole frame: the mask is zero outside it, so erosion and blur
give the same values, and a 720p paste costs a few ms instead of tens.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

BASE_TEMPLATE = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]])
BASE_FACE_SIZE = (75, 100)  # (width, height) before scaling by ratio
FILL = (127, 127, 127)
NOSE_BIAS_PREVIOUS = 0.2  # upstream's blend of the previous frame's nose bias
_ROI_MARGIN = 2  # zero pixels kept around the pasted face so erosion/blur see the same zeros as on a full frame


def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Centre points on their mean and divide by the unbiased std of all centred coordinates (as upstream)."""
    centre = points.mean(axis=0)
    centred = points - centre
    spread = float(centred.std(ddof=1))
    if not spread > 0:
        raise ValueError("cannot fit a face transform to coincident points")
    return centred / spread, centre, spread


class Aligner:
    """Upstream's face alignment at one crop resolution (256 and 512 are upstream's; 128 is our small model)."""

    def __init__(self, resolution: int) -> None:
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, got {resolution}")
        self.resolution = resolution
        ratio = resolution / 256 * 2.8
        self.template = BASE_TEMPLATE * ratio
        self.face_size = (int(BASE_FACE_SIZE[0] * ratio), int(BASE_FACE_SIZE[1] * ratio))
        self._bias: np.ndarray | None = None

    @property
    def crop_template(self) -> np.ndarray:
        """The template points in the final res x res crop: the face_size warp then cv2's resize (centre-aligned)."""
        scale = np.array([self.resolution / self.face_size[0], self.resolution / self.face_size[1]])
        return (self.template + 0.5) * scale - 0.5

    def reset(self) -> None:
        """Forget the previous frame's nose bias: call when the face track breaks (a new face or a gap)."""
        self._bias = None

    def fit(self, points3: np.ndarray, smooth: bool = True) -> np.ndarray:
        """2x3 float64 matrix mapping image pixels to face_size pixels, from (left brow, right brow, nose) points.

        With `smooth` the nose bias is blended with the previous call's and added to the translation (upstream's
        behaviour for video); without it the fit is the plain similarity transform and no state changes.
        """
        src = np.asarray(points3, dtype=np.float64)
        if src.shape != (3, 2) or not np.isfinite(src).all():
            raise ValueError(f"expected finite [3, 2] points, got {src.shape}")
        src_n, src_c, src_s = _normalise(src)
        dst_n, dst_c, dst_s = _normalise(self.template)
        u, _, vt = np.linalg.svd(src_n.T @ dst_n)
        v = vt.T
        if np.linalg.det(v @ u.T) < 0:  # a reflection fits better; keep a proper rotation
            v[:, -1] *= -1
        linear = (dst_s / src_s) * (v @ u.T)
        m = np.empty((2, 3))
        m[:, :2] = linear
        m[:, 2] = dst_c - linear @ src_c
        if smooth:
            bias = dst_n[2] - src_n[2]
            if self._bias is not None:
                bias = NOSE_BIAS_PREVIOUS * self._bias + (1 - NOSE_BIAS_PREVIOUS) * bias
            self._bias = bias
            m[:, 2] += bias
        return m

    def warp(self, frame: np.ndarray, m: np.ndarray) -> np.ndarray:
        """The aligned uint8 [res, res, 3] crop: bilinear warp to face_size (fill 127), then Lanczos to res x res."""
        face = cv2.warpAffine(
            frame, m, self.face_size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=FILL
        )
        return cv2.resize(face, (self.resolution, self.resolution), interpolation=cv2.INTER_LANCZOS4)

    def restore(
        self, frame: np.ndarray, crop: np.ndarray, m: np.ndarray, weight: np.ndarray | None = None
    ) -> np.ndarray:
        """A copy of `frame` with the (edited) res x res `crop` pasted back where `warp(frame, m)` took it from.

        Pixels where the blend weight is 0 are exactly the input's, so a frame is only touched inside the face.
        The weight is upstream's soft mask of the whole crop; a crop-space `weight` (float [res, res] in [0, 1],
        e.g. `blend.paste_weight`) multiplies it, so that only the part of the crop it covers is pasted.
        """
        out = frame.copy()
        roi = self._roi(frame.shape, m)
        if roi is None:
            return out
        x0, y0, x1, y1 = roi
        m_roi = _shift(m, x0, y0)
        size = (x1 - x0, y1 - y0)
        face = self._resize_back(crop)
        pasted = cv2.warpAffine(face, m_roi, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
        alpha = self._soft_mask(m_roi, size)
        if weight is not None:
            alpha = alpha * self._warp_back(weight, m_roi, size)
        alpha = alpha[:, :, None]
        region = out[y0:y1, x0:x1]
        # Where alpha is 0 this is 1.0 * (an integer) + 0.0 * (a finite value): the input pixel, exactly.
        blended = alpha * pasted + (1 - alpha) * region
        region[:] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
        return out

    def soft_mask(self, frame_shape: tuple[int, ...], m: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
        """float32 [H, W] blend weight `restore` uses (with the same `weight`): 0 outside the pasted face, 1 well
        inside, feathered between."""
        full = np.zeros(frame_shape[:2], dtype=np.float32)
        roi = self._roi(frame_shape, m)
        if roi is not None:
            x0, y0, x1, y1 = roi
            m_roi, size = _shift(m, x0, y0), (x1 - x0, y1 - y0)
            full[y0:y1, x0:x1] = self._soft_mask(m_roi, size)
            if weight is not None:
                full[y0:y1, x0:x1] *= self._warp_back(weight, m_roi, size)
        return full

    def _warp_back(self, weight: np.ndarray, m_roi: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """A crop-space weight in frame (ROI) coordinates: resized to face_size, inverse-warped, 0 outside."""
        if weight.shape != (self.resolution, self.resolution):
            raise ValueError(f"expected a [{self.resolution}, {self.resolution}] weight, got {weight.shape}")
        face = cv2.resize(np.asarray(weight, dtype=np.float32), self.face_size, interpolation=cv2.INTER_LINEAR)
        return cv2.warpAffine(face, m_roi, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)

    def _resize_back(self, crop: np.ndarray) -> np.ndarray:
        """Crop -> float32 face_size image, bicubic with antialiasing (torch's, as upstream; it shrinks x at 256)."""
        if crop.shape[:2] != (self.resolution, self.resolution) or crop.ndim != 3:
            raise ValueError(f"expected a [{self.resolution}, {self.resolution}, 3] crop, got {crop.shape}")
        t = torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).permute(2, 0, 1)[None]
        w, h = self.face_size
        t = F.interpolate(t, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        return t[0].permute(1, 2, 0).clamp_(0, 255).contiguous().numpy()

    def _roi(self, frame_shape: tuple[int, ...], m: np.ndarray) -> tuple[int, int, int, int] | None:
        """Frame box (x0, y0, x1, y1) holding every pixel the pasted face can touch, clipped to the frame."""
        w, h = self.face_size
        # Bilinear sampling reaches one pixel beyond the face rectangle's pixel centres.
        corners = np.array([[-1, -1], [w, -1], [-1, h], [w, h]], dtype=np.float64)
        inverse = cv2.invertAffineTransform(m)
        pts = corners @ inverse[:, :2].T + inverse[:, 2]
        x0 = max(math.floor(pts[:, 0].min()) - _ROI_MARGIN, 0)
        y0 = max(math.floor(pts[:, 1].min()) - _ROI_MARGIN, 0)
        x1 = min(math.ceil(pts[:, 0].max()) + _ROI_MARGIN + 1, frame_shape[1])
        y1 = min(math.ceil(pts[:, 1].max()) + _ROI_MARGIN + 1, frame_shape[0])
        if x1 <= x0 or y1 <= y0:
            return None
        return x0, y0, x1, y1

    def _soft_mask(self, m_roi: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        ones = np.ones((self.face_size[1], self.face_size[0]), dtype=np.float32)
        mask = cv2.warpAffine(ones, m_roi, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=0)
        mask = cv2.erode(mask, np.ones((2, 2), np.uint8))
        # Upstream's formula; at least 1 so that a tiny face still gets a (thin) feather instead of a crash.
        w_edge = max(int(math.sqrt(float(mask.sum()))) // 20, 1)
        mask = cv2.erode(mask, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
        k = 2 * w_edge + 1
        sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8
        return cv2.GaussianBlur(mask, (k, k), sigma)


def _shift(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The same image -> face map for a sub-image whose top-left corner is frame pixel (x0, y0)."""
    shifted = np.array(m, dtype=np.float64)
    shifted[:, 2] += shifted[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted
