"""How visible the paste is: gradient energy and colour step where the generated region meets the source.

A pasted region that does not match its surroundings draws a line along its edge: the image gradient there is
stronger than just inside and just outside the edge, and the colour changes from one side to the other. Both are
measured in the output frame, on bands that follow the edge of the region upstream regenerates (the mask's 0s,
warped into the frame):

- `ratio`: mean squared gradient on the edge band (both sides of the edge) over that on the bands just inside and
  just outside. The source frame's own ratio (`source_ratio`) is the baseline: a seamless paste comes close to it,
  and a straight-edged grey rectangle reads several times higher.
- `step`: the output-minus-source difference just inside the edge minus the one just outside, in levels (largest
  colour channel). 0 when the colours meet; the model's colour error when the region is pasted as is.

Band widths scale with the face: `width` frame pixels per crop pixel, so a 1080p face and a 128 px crop are
measured alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from latentsync.face.align import Aligner


@dataclass(frozen=True)
class Seam:
    ratio: float
    source_ratio: float
    step: float

    @property
    def excess(self) -> float:
        """`ratio` relative to the source's own: 1.0 = no seam."""
        return self.ratio / self.source_ratio


def seam_bands(region: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean [H, W] bands of a region's edge: (edge: within `width` px on either side; inside and outside:
    between 2 and 4 widths from the edge)."""
    region = np.asarray(region, dtype=bool)
    d_in = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5)
    d_out = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, 5)
    edge = (region & (d_in <= width)) | (~region & (d_out <= width))
    inside = region & (d_in > 2 * width) & (d_in <= 4 * width)
    outside = ~region & (d_out > 2 * width) & (d_out <= 4 * width)
    return edge, inside, outside


def measure_seam(output: np.ndarray, source: np.ndarray, region: np.ndarray, width: float) -> Seam:
    """The seam of `output` (uint8 [H, W, 3]) around `region` (bool [H, W]) against `source`, the frame before the
    paste. `width`: the edge band's half-width in pixels (about one crop pixel in the frame)."""
    if output.shape != source.shape or output.shape[:2] != region.shape:
        raise ValueError(f"shapes differ: output {output.shape}, source {source.shape}, region {region.shape}")
    edge, inside, outside = seam_bands(region, width)
    if not (edge.any() and inside.any() and outside.any()):
        raise ValueError("the region is too small or fills the frame: no band to measure a seam on")

    def ratio(image: np.ndarray) -> float:
        energy = _gradient_energy(image)
        around = 0.5 * (energy[inside].mean() + energy[outside].mean())
        return float(energy[edge].mean() / max(around, 1e-6))

    diff = output.astype(np.float32) - source.astype(np.float32)
    step = np.abs(diff[inside].mean(axis=0) - diff[outside].mean(axis=0)).max()
    return Seam(ratio=ratio(output), source_ratio=ratio(source), step=float(step))


def _gradient_energy(image: np.ndarray) -> np.ndarray:
    """Squared gradient magnitude summed over channels, float32 [H, W] (Sobel, in levels per pixel)."""
    pixels = image.astype(np.float32)
    gx = cv2.Sobel(pixels, cv2.CV_32F, 1, 0, ksize=3) / 8
    gy = cv2.Sobel(pixels, cv2.CV_32F, 0, 1, ksize=3) / 8
    energy = gx * gx + gy * gy
    return energy.sum(axis=2) if energy.ndim == 3 else energy


def paste_region(aligner: Aligner, frame_shape: tuple[int, ...], m: np.ndarray, mask: np.ndarray
                 ) -> tuple[np.ndarray, float]:
    """Where upstream's paste puts generated pixels in a frame (bool [H, W]: the mask's regenerated region warped
    back and cut by the crop's feathered border), and frame pixels per crop pixel (the band width to use)."""
    regen = (np.asarray(mask) < 0.5).astype(np.float32)
    region = aligner.soft_mask(frame_shape, m, regen) >= 0.5
    return region, max(1.0, float(np.sqrt(region.sum() / max(regen.sum(), 1.0))))
