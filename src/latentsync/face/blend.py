"""Seamless paste: put a generated lower face into the frame with no edge and no colour step.

Upstream pastes the whole aligned crop back, and inside it the regenerated region (the mask's 0s) meets the source
pixels on a hard edge: a straight line at the nose, the sides of the crop, the curve under the chin. Any colour
error of the model (a small VAE's grey cast, a new face's skin tone) then shows as a rectangle. Two changes fix it:

- the colour: the generated pixels get a smooth correction, the source-minus-generated difference measured on a
  ring just inside the region's edge (where the generated face should equal the source: cheeks, nose, jaw) and
  spread over the region by normalised Gaussian filtering. A model that reproduces the source colours gets a
  correction of about 0; the mouth's own shapes and texture are left alone (the correction is low-frequency).
- the edge: the frame-level blend weight is the regenerated region eroded and blurred (`paste_weight`), so the
  generated pixels fade in over a few pixels inside the region and the frame keeps its own pixels everywhere else,
  the upper face included (upstream re-samples it through the crop, which softens it).

`upstream` paste stays the default for the official checkpoints (their output is unchanged); a model opts in with
`inference: {paste: seamless}` in its `model.yaml`, and `--paste` overrides either way.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

PASTE_MODES = ("upstream", "seamless")
FEATHER_FRACTION = 1 / 16  # half the fade-in width, as a fraction of the crop side: it fades in over 16 px at 128
CORRECTION_GRID = 64  # the colour correction is smooth: computed on a 64 x 64 grid, then resized to the crop
CORRECTION_SIGMA = 1 / 8  # its Gaussian's sigma as a fraction of the crop side
ROBUST_MADS = 3.0  # ring differences beyond median +- 3 MAD (a jaw that moved, teeth) do not steer the correction


def paste_weight(mask: np.ndarray) -> np.ndarray:
    """float32 [res, res] weight of the generated pixels: 0 on and outside the regenerated region's edge, rising
    to 1 over the feather width inside it. `mask` is upstream's (1 = keep, 0 = regenerate)."""
    return _paste_weight(np.ascontiguousarray(mask, dtype=np.float32).tobytes(), mask.shape[0])


@lru_cache(maxsize=8)
def _paste_weight(mask_bytes: bytes, res: int) -> np.ndarray:
    regen = (np.frombuffer(mask_bytes, dtype=np.float32).reshape(res, res) < 0.5).astype(np.uint8)
    ramp = 2 * max(round(res * FEATHER_FRACTION), 1)
    # A smoothstep of the distance to the region's edge: 0 on it, 1 from `ramp` pixels in, no kink at either end.
    t = np.clip(cv2.distanceTransform(regen, cv2.DIST_L2, 5) / ramp, 0.0, 1.0)
    weight = (t * t * (3 - 2 * t)).astype(np.float32)
    weight.setflags(write=False)
    return weight


def colour_match(source: np.ndarray, generated: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`generated` (uint8 [res, res, 3]) with a smooth colour correction that makes it meet `source` on the ring
    where 0 < weight < 0.5 (the outer half of the fade-in), as uint8. Where the ring is empty (a mask with no region) it is unchanged."""
    ring = ((weight > 0) & (weight < 0.5)).astype(np.float32)  # the outer half of the fade-in
    if not ring.any():
        return generated
    diff = source.astype(np.float32) - generated.astype(np.float32)
    picked = diff[ring > 0]
    median = np.median(picked, axis=0)
    spread = np.median(np.abs(picked - median), axis=0) * 1.4826 + 1.0  # MAD as a std; 1 level floor
    diff = np.clip(diff, median - ROBUST_MADS * spread, median + ROBUST_MADS * spread)
    res = weight.shape[0]
    grid = (CORRECTION_GRID, CORRECTION_GRID) if res > CORRECTION_GRID else (res, res)
    small_ring = cv2.resize(ring, grid, interpolation=cv2.INTER_AREA)
    small_diff = cv2.resize(diff * ring[:, :, None], grid, interpolation=cv2.INTER_AREA)
    sigma = grid[0] * CORRECTION_SIGMA
    num = cv2.GaussianBlur(small_diff, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    den = cv2.GaussianBlur(small_ring, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT)
    # Far from any ring pixel the quotient falls back to the ring's median difference rather than noise.
    floor = 1e-3
    correction = (num + median * floor) / (den[:, :, None] + floor)
    correction = cv2.resize(correction, (res, res), interpolation=cv2.INTER_LINEAR)
    out = generated.astype(np.float32) + correction
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
