"""Image and distribution metrics of `latentsync eval`: PSNR / SSIM against a reference, Fréchet distances.

PSNR and SSIM are scikit-image's (SSIM as Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03, on
each RGB channel and averaged), so figures compare with published ones. FID and FVD are the Fréchet distance
between Gaussians fitted to network features of two sets (Heusel et al. 2017):
    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of one shape (inf when identical)."""
    _same_shape(a, b)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two uint8 RGB (or grey) images of one shape, in [-1, 1], 1 when identical."""
    _same_shape(a, b)
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=255, channel_axis=channel_axis, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")


@dataclass(frozen=True)
class FeatureStats:
    """Mean and covariance of a set of feature vectors, what a Fréchet distance compares."""

    mean: np.ndarray  # [D]
    cov: np.ndarray  # [D, D]
    count: int

    @classmethod
    def of(cls, features: np.ndarray) -> FeatureStats:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2 or features.shape[0] < 2:
            raise ValueError(f"need at least 2 feature vectors [N, D], got shape {features.shape}")
        return cls(features.mean(0), np.cov(features, rowvar=False), features.shape[0])


def frechet_distance(a: FeatureStats, b: FeatureStats, eps: float = 1e-6) -> float:
    """Fréchet distance between the Gaussians of `a` and `b` (module docstring).

    When S1 S2 is near-singular (fewer samples than dimensions), `eps` is added to both diagonals before the
    square root, as the reference FID code does; a tiny imaginary part from round-off is dropped.
    """
    diff = a.mean - b.mean
    covmean = linalg.sqrtm(a.cov @ b.cov)
    if not np.isfinite(covmean).all():
        offset = np.eye(a.cov.shape[0]) * eps
        covmean = linalg.sqrtm((a.cov + offset) @ (b.cov + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(covmean))
