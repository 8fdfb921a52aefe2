"""Features for FID and FVD from user-supplied TorchScript networks (their weights cannot be shipped or fetched).

- FID: the TorchScript Inception-v3 of StyleGAN3 / clean-fid (`inception-2015-12-05.pt`). It takes uint8
  [N, 3, H, W] images of any size (it resizes to 299 itself) and, called with `return_features=True`, returns the
  2048-d pool features.
- FVD: the TorchScript I3D of StyleGAN-V / fvd-comparison (`i3d_torchscript.pt`). It takes float [N, 3, T, 224,
  224] clips in [-1, 1] and, called with `rescale=False, resize=False, return_features=True`, returns the 400-d
  logits before the softmax, as the reference FVD code uses.
Both run here on the speaker's aligned face crops, which is how lip-sync papers report them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from latentsync.errors import CheckpointError

I3D_FRAMES = 16  # frames per FVD clip, as the reference code
I3D_SIZE = 224


def load_feature_net(path: str | os.PathLike, what: str, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """A TorchScript file, loaded for inference; a one-line CheckpointError when it is missing or not TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path} is not a TorchScript {what} ({reason})") from None


def resize(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, size, size] in 0..255, bicubic with antialiasing (as the sync filter)."""
    pixels = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    if pixels.shape[-1] != size or pixels.shape[-2] != size:
        pixels = F.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True)
    return pixels.clamp(0, 255)


@torch.no_grad()
def inception_features(net: torch.jit.ScriptModule, crops: np.ndarray, batch: int = 32) -> np.ndarray:
    """[N, D] Inception features of uint8 [N, H, W, 3] face crops."""
    device = _device(net)
    out = []
    for i in range(0, len(crops), batch):
        images = torch.from_numpy(np.ascontiguousarray(crops[i : i + batch])).permute(0, 3, 1, 2).to(device)
        out.append(net(images, return_features=True).float().cpu())
    return torch.cat(out).numpy()


def i3d_clips(crops: np.ndarray, stride: int = I3D_FRAMES) -> list[np.ndarray]:
    """Consecutive `I3D_FRAMES`-frame clips of uint8 [N, H, W, 3] face crops, one every `stride` frames."""
    return [crops[s : s + I3D_FRAMES] for s in range(0, len(crops) - I3D_FRAMES + 1, stride)]


@torch.no_grad()
def i3d_features(net: torch.jit.ScriptModule, clips: list[np.ndarray], batch: int = 4) -> np.ndarray:
    """[N, D] I3D features of uint8 [T, H, W, 3] clips (module docstring for the input convention)."""
    device = _device(net)
    out = []
    for i in range(0, len(clips), batch):
        videos = torch.stack([resize(c, I3D_SIZE) / 127.5 - 1.0 for c in clips[i : i + batch]])  # [B, T, 3, S, S]
        videos = videos.permute(0, 2, 1, 3, 4).to(device)
        out.append(net(videos, rescale=False, resize=False, return_features=True).float().cpu())
    return torch.cat(out).numpy()


def _device(net: torch.jit.ScriptModule) -> torch.device:
    return next(iter(net.parameters()), torch.empty(0)).device
