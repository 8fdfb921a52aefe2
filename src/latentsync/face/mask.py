"""Upstream's fixed lower-face mask (1 = keep, 0 = regenerate), at any crop resolution.

The mask is a 256x256 {0, 255} image; other resolutions are made the way upstream makes them, a cv2 Lanczos
resize of the uint8 image, so at 512 its edge is not strictly binary (and is what the 512 model was trained on).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from latentsync.errors import LatentSyncError
from latentsync.paths import MASK_PATH

NATIVE_RESOLUTION = 256


def load_mask(resolution: int, path: str | os.PathLike = MASK_PATH) -> np.ndarray:
    """float32 [resolution, resolution] in [0, 1]; cached and read-only, so copy it before editing."""
    return _load(int(resolution), str(Path(path).resolve()))


@lru_cache(maxsize=8)
def _load(resolution: int, path: str) -> np.ndarray:
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise LatentSyncError(f"cannot read the face mask image {path}")
    if image.shape[:2] != (resolution, resolution):
        image = cv2.resize(image, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    mask = image[:, :, 0].astype(np.float32) / 255.0
    mask.setflags(write=False)
    return mask
