"""The original SyncNet v2 (Chung & Zisserman, "Out of time", 2016): the network behind LSE-C / LSE-D and the data
pipeline's sync filter.

Two branches map 0.2 s of speech and 0.2 s of face to 1024-d embeddings that lie close together when the two are
in sync. The audio branch (2-D convs) sees 13 MFCCs x 20 steps at 100 Hz; the lip branch (3-D convs) sees 5 stacked
224x224 frames. Module names, layer indices and shapes are those of joonson/syncnet_python's `SyncNetModel.S`, so
the published `syncnet_v2.model` (a bare state dict, keys like `netcnnaud.0.weight`) loads strictly.

Input formats are the original's, because the weights only make sense on them:
- frames: BGR (syncnet_python reads JPEGs with OpenCV), float 0..255, no normalisation, [B, 3, 5, 224, 224];
- audio: `python_speech_features.mfcc` defaults (25 ms window, 10 ms step, 13 coefficients, log energy as c0) on
  16 kHz samples at int16 scale (it reads the wav with scipy), [B, 1, 13, 20].
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import python_speech_features
import torch
from torch import nn

from latentsync.models.checkpoint import load_legacy_strict, read_checkpoint

SAMPLE_RATE = 16000
FPS = 25
CROP_SIZE = 224
EMBED_DIM = 1024
VIDEO_WINDOW = 5  # frames per lip window (0.2 s)
AUDIO_WINDOW = 20  # MFCC steps per audio window (0.2 s at 100 Hz)
MFCC_PER_FRAME = 4  # 100 Hz MFCC / 25 fps: the audio window moves 4 steps per video frame
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
WRAPPER_PREFIX = "__S__."  # what a state dict of syncnet_python's SyncNetInstance (net held as `__S__`) carries

# (out_channels, kernel, stride, padding) of a conv + BatchNorm + ReLU, or ("pool", kernel, stride, padding).
_AUDIO_LAYERS: Sequence[tuple] = (
    (64, (3, 3), (1, 1), (1, 1)), ("pool", (1, 1), (1, 1), 0),
    (192, (3, 3), (1, 1), (1, 1)), ("pool", (3, 3), (1, 2), 0),
    (384, (3, 3), 1, (1, 1)),
    (256, (3, 3), 1, (1, 1)),
    (256, (3, 3), 1, (1, 1)), ("pool", (3, 3), (2, 2), 0),
    (512, (5, 4), 1, 0),
)
_LIP_LAYERS: Sequence[tuple] = (
    (96, (5, 7, 7), (1, 2, 2), 0), ("pool", (1, 3, 3), (1, 2, 2), 0),
    (256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), (0, 1, 1)),
    (256, (1, 3, 3), 1, (0, 1, 1)),
    (256, (1, 3, 3), 1, (0, 1, 1)),
    (256, (1, 3, 3), 1, (0, 1, 1)), ("pool", (1, 3, 3), (1, 2, 2), 0),
    (512, (1, 6, 6), 1, 0),
)


def _conv_stack(in_channels: int, layers: Sequence[tuple], three_d: bool) -> nn.Sequential:
    """Conv/BN/ReLU triples and max-pools in one flat Sequential: the flat indices are the checkpoint's key names."""
    conv, norm, pool = (
        (nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d) if three_d else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d)
    )
    modules: list[nn.Module] = []
    channels = in_channels
    for out, kernel, stride, padding in layers:
        if out == "pool":
            modules.append(pool(kernel, stride, padding))
            continue
        modules += [conv(channels, out, kernel, stride, padding), norm(out), nn.ReLU(inplace=True)]
        channels = out
    return nn.Sequential(*modules)


def _head(embed_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))


class SyncNetV2(nn.Module):
    """SyncNet v2; attribute order is the original's, so `state_dict()` lists keys in the published file's order."""

    def __init__(self, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        self.netcnnaud = _conv_stack(1, _AUDIO_LAYERS, three_d=False)
        self.netfcaud = _head(embed_dim)
        self.netfclip = _head(embed_dim)
        self.netcnnlip = _conv_stack(3, _LIP_LAYERS, three_d=True)

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """MFCC windows [B, 1, 13, 20] -> audio embeddings [B, 1024] (not normalised: LSE uses raw distances)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """BGR 0..255 frame windows [B, 3, 5, 224, 224] -> lip embeddings [B, 1024]."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def load_syncnet_v2(path: str | os.PathLike, device: str | torch.device = "cpu") -> SyncNetV2:
    """Load `syncnet_v2.model` strictly and return the net in eval mode (BatchNorm running statistics).

    Accepted beyond the published layout: keys under `__S__.` (a saved SyncNetInstance) and files without
    BatchNorm `num_batches_tracked` counters (PyTorch < 0.4.1 did not write them; torch's own loader fills them
    in for such files, and they play no part in eval mode). Anything else that differs is a one-line
    `CheckpointError`: a partly loaded sync expert would give plausible-looking but meaningless scores.
    """
    state = read_checkpoint(path).state_dict
    if state and all(k.startswith(WRAPPER_PREFIX) for k in state):
        state = {k[len(WRAPPER_PREFIX) :]: v for k, v in state.items()}
    with torch.device("meta"):
        model = SyncNetV2()
    what = f"SyncNet v2 weights {path} do not fit the SyncNet v2 layout"
    return load_legacy_strict(model, state, what, device)  # type: ignore[return-value]


def mfcc(wav16k: np.ndarray) -> np.ndarray:
    """16 kHz mono speech [N] -> MFCCs [13, T] at 100 Hz, T = 1 + ceil((N - 400) / 160), as syncnet_python computes
    them. Float input in [-1, 1] (e.g. from `latentsync.audio.load`) is brought back to the int16 scale the
    original reads from its wav file (x 32768, rounded, clipped): the log energy in c0 depends on the scale."""
    wav = np.asarray(wav16k)
    if wav.ndim != 1 or wav.size == 0:
        raise ValueError(f"expected a non-empty mono waveform [N], got shape {list(wav.shape)}")
    if np.issubdtype(wav.dtype, np.floating):
        wav = np.clip(np.rint(wav.astype(np.float64) * 32768.0), -32768, 32767)
    return python_speech_features.mfcc(wav.astype(np.float64), SAMPLE_RATE).T.astype(np.float32)


def _device_dtype(net: nn.Module) -> tuple[torch.device, torch.dtype]:
    param = next(net.parameters())
    return param.device, param.dtype


@torch.no_grad()
def embed_video(net: SyncNetV2, crops_rgb: np.ndarray, count: int, batch: int = 20) -> torch.Tensor:
    """Lip embeddings [count, 1024] (float32, CPU) of the windows of frames i..i+4, i = 0..count-1.

    `crops_rgb` is [N, 224, 224, 3] uint8 RGB; it is flipped to the BGR the weights were trained on.
    """
    if crops_rgb.ndim != 4 or crops_rgb.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"expected RGB crops [N, {CROP_SIZE}, {CROP_SIZE}, 3], got shape {list(crops_rgb.shape)}")
    if count + VIDEO_WINDOW - 1 > len(crops_rgb):
        raise ValueError(f"{count} windows need {count + VIDEO_WINDOW - 1} frames, got {len(crops_rgb)}")
    device, dtype = _device_dtype(net)
    out = []
    for start in range(0, count, batch):
        idx = np.arange(start, min(count, start + batch))[:, None] + np.arange(VIDEO_WINDOW)  # [b, 5]
        frames = torch.from_numpy(np.ascontiguousarray(crops_rgb[idx][..., ::-1]))  # [b, 5, H, W, 3] BGR
        frames = frames.permute(0, 4, 1, 2, 3).to(device, dtype)
        out.append(net.forward_lip(frames).float().cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_audio(net: SyncNetV2, mfccs: np.ndarray, count: int, batch: int = 20) -> torch.Tensor:
    """Audio embeddings [count, 1024] (float32, CPU) of MFCC steps 4i..4i+19, i = 0..count-1 (`mfccs` is [13, T])."""
    needed = MFCC_PER_FRAME * (count - 1) + AUDIO_WINDOW
    if mfccs.ndim != 2 or mfccs.shape[1] < needed:
        raise ValueError(f"{count} audio windows need MFCCs [13, >= {needed}], got shape {list(mfccs.shape)}")
    device, dtype = _device_dtype(net)
    feats = torch.from_numpy(np.ascontiguousarray(mfccs, dtype=np.float32))
    out = []
    for start in range(0, count, batch):
        steps = [MFCC_PER_FRAME * i for i in range(start, min(count, start + batch))]
        windows = torch.stack([feats[:, s : s + AUDIO_WINDOW] for s in steps]).unsqueeze(1)
        out.append(net.forward_aud(windows.to(device, dtype)).float().cpu())
    return torch.cat(out)


__all__: Sequence[str] = ("SyncNetV2", "load_syncnet_v2", "mfcc", "embed_video", "embed_audio")
