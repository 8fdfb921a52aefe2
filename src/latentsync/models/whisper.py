"""A compact Whisper audio encoder that reads OpenAI's checkpoint format.

LatentSync conditions its U-Net on the per-layer activations of the Whisper *encoder* only, so we implement just
that part (the `openai-whisper` package would pull in triton, about 1 GB, for a 4-block transformer). Parameter
names are OpenAI's, under `encoder.`, so an official `{"dims", "model_state_dict"}` file loads strictly.

Numerics follow OpenAI's: GELU after each conv, positional embedding added after the stem, pre-norm residual
blocks with LayerNorms evaluated in float32 (important in fp16), scaled-dot-product attention with a bias-free key.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from latentsync.errors import CheckpointError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
CHUNK_FRAMES = 3000  # mel frames in one 30 s encoder window (100 frames/s)


@dataclass(frozen=True)
class WhisperDims:
    """Model sizes as stored under `"dims"` in an OpenAI Whisper checkpoint."""

    n_mels: int
    n_audio_ctx: int
    n_audio_state: int
    n_audio_head: int
    n_audio_layer: int
    n_vocab: int
    n_text_ctx: int
    n_text_state: int
    n_text_head: int
    n_text_layer: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "WhisperDims":
        """Build from a checkpoint's dims dict; raises KeyError/ValueError on missing or non-integer fields."""
        return cls(**{f.name: int(d[f.name]) for f in fields(cls)})


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """OpenAI's encoder position table: [sin | cos] halves, geometric timescales from 1 to `max_timescale`.

    Channel j < C/2 is sin(p * exp(-j * ln(max_timescale) / (C/2 - 1))); channel C/2 + j the matching cos.
    """
    if channels % 2:
        raise ValueError(f"sinusoids need an even channel count, got {channels}")
    half = channels // 2
    inv_timescales = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half, dtype=torch.float64))
    scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1).float()


class _LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back, as OpenAI does, so fp16 runs keep their statistics exact."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.float() if self.weight is not None else None
        b = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).type(x.dtype)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with OpenAI's names (query/key/value/out; key has no bias)."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # OpenAI scales q and k by d^-1/4 each; SDPA's default d^-1/2 on q.k is the same product.
        q, k, v = (proj(x).view(b, t, self.n_head, -1).transpose(1, 2) for proj in (self.query, self.key, self.value))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, c))


class _ResidualBlock(nn.Module):
    """Pre-norm encoder block: x + attn(attn_ln(x)), then x + mlp(mlp_ln(x)) with a 4x GELU MLP."""

    def __init__(self, n_state: int, n_head: int) -> None:
        super().__init__()
        self.attn = _SelfAttention(n_state, n_head)
        self.attn_ln = _LayerNorm(n_state)
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = _LayerNorm(n_state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x))
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Whisper's audio encoder; `forward` returns every layer's activations, which is what LatentSync consumes.

    `ln_post` is kept (so official files load strictly, and for `final`) but is not applied in `forward`:
    LatentSync's audio tokens are the raw residual stream.
    """

    def __init__(self, dims: WhisperDims) -> None:
        super().__init__()
        self.dims = dims
        n_state = dims.n_audio_state
        self.conv1 = nn.Conv1d(dims.n_mels, n_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(n_state, n_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, n_state))
        self.blocks = nn.ModuleList(_ResidualBlock(n_state, dims.n_audio_head) for _ in range(dims.n_audio_layer))
        self.ln_post = _LayerNorm(n_state)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel [B, n_mels, 2*n_audio_ctx] -> states [B, n_audio_ctx, n_audio_layer + 1, n_audio_state].

        Index 0 is the conv stem + positional embedding, index i the output of residual block i.
        """
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.dim() != 3 or tuple(mel.shape[1:]) != expected:
            raise ValueError(f"mel must be [B, {expected[0]}, {expected[1]}], got {list(mel.shape)}")
        x = mel.to(self.conv1.weight.dtype)
        x = F.gelu(self.conv1(x))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding.to(x.dtype)
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return torch.stack(states, dim=2)

    def final(self, states: torch.Tensor) -> torch.Tensor:
        """The encoder output a Whisper decoder would see: ln_post applied to the last layer of `forward`."""
        return self.ln_post(states[:, :, -1])


def load_whisper_encoder(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> AudioEncoder:
    """Load the `encoder.*` tensors of an OpenAI Whisper checkpoint strictly; decoder tensors are ignored.

    Every failure is a one-line `CheckpointError` naming the file, because this file is user-supplied.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Whisper checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle of foreign objects, random bytes: torch raises many types
        raise CheckpointError(
            f"cannot read Whisper checkpoint {path}: truncated or not a torch file ({type(exc).__name__})"
        ) from None
    if not (isinstance(ckpt, Mapping) and isinstance(ckpt.get("dims"), Mapping)
            and isinstance(ckpt.get("model_state_dict"), Mapping)):
        raise CheckpointError(
            f"{path} is not an OpenAI Whisper checkpoint (expected a dict with 'dims' and 'model_state_dict')"
        )
    try:
        dims = WhisperDims.from_dict(ckpt["dims"])
    except (KeyError, TypeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise CheckpointError(f"{path}: Whisper 'dims' is incomplete or invalid ({reason})") from None
    state = {k[len("encoder.") :]: v for k, v in ckpt["model_state_dict"].items() if k.startswith("encoder.")}
    model = AudioEncoder(dims)
    wanted = model.state_dict()
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    if missing or unexpected:
        parts = [f"missing {len(missing)} encoder keys (e.g. encoder.{missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected (e.g. encoder.{unexpected[0]})"] if unexpected else []
        raise CheckpointError(f"{path}: {', '.join(parts)}")
    for key, ref in wanted.items():
        got = state[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(ref.shape):
            shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise CheckpointError(f"{path}: encoder.{key} has shape {shape}, dims say {list(ref.shape)}")
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _mel_filters(n_mels: int) -> torch.Tensor:
    """Slaney-normalised mel filter bank from librosa, the same bank OpenAI ships precomputed."""
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)).float()


def log_mel_spectrogram(audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """Whisper's log-mel: 16 kHz mono float audio of n samples -> [n_mels, n // 160] float32.

    Centered reflect-padded STFT (n_fft 400, hop 160, periodic Hann), power spectrum without the last frame,
    mel bank, log10 clamped at 1e-10, floored at (global max - 8), then (x + 4) / 4. The floor uses the max
    over the whole input, so compute this once for a whole clip before cutting it into windows.
    """
    log_spec = log_mel_power(audio, n_mels)
    return normalise_log_mel(log_spec, float(log_spec.max()) if log_spec.numel() else 0.0)


def log_mel_power(audio: np.ndarray | torch.Tensor, n_mels: int = N_MELS) -> torch.Tensor:
    """The first half of `log_mel_spectrogram`: log10 mel power [n_mels, n // 160], before the floor and scaling.

    Frame j is centred on sample 160 j and sees samples 160 j - 200 .. 160 j + 200 (reflected at the ends), so a
    streaming caller can compute it on a stretch of audio and get the whole clip's frames wherever both lie
    inside that stretch.
    """
    x = torch.as_tensor(audio, dtype=torch.float32)
    if x.dim() != 1:
        raise ValueError(f"audio must be 1-D mono samples, got shape {list(x.shape)}")
    n_frames = int(x.shape[-1]) // HOP_LENGTH
    if x.numel() < N_FFT // 2 + 1:
        x = F.pad(x, (0, N_FFT // 2 + 1 - x.numel()))  # reflect padding needs more than n_fft/2 samples
    window = torch.hann_window(N_FFT, device=x.device)
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = _mel_filters(n_mels).to(x.device) @ power
    return mel.clamp(min=1e-10).log10()[:, :n_frames]


def normalise_log_mel(log_spec: torch.Tensor, log_max: float) -> torch.Tensor:
    """The second half: floor at `log_max` - 8 (the max over the whole clip), then (x + 4) / 4."""
    return (torch.clamp(log_spec, min=log_max - 8.0) + 4.0) / 4.0
