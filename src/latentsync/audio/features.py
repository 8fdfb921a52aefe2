"""Whisper audio features for LatentSync: a [T, 5, 384] array at 50 Hz, then one [50, 384] window per video frame.

Up to 30 s this is exactly upstream's computation: log-mel of the whole clip, zero-padded to 3000 mel frames,
one encoder pass, the first int(n_mel / 2) steps kept.

Longer audio: upstream encodes independent 30 s segments and concatenates them. Each segment restarts the
encoder's positional embedding and attention context, so the features jump at every 30 s boundary (measured
on speech: the step-to-step change there is ~4.8x the typical one), which shows as a mouth glitch every 30 s.

Our default `"continuous"` mode encodes overlapping 30 s windows with a 20 s stride (10 s = 500-step overlaps)
and cross-fades linearly over the 100 steps (2 s) at the centre of each overlap. Why this shape:
- Whisper states depend strongly on the absolute position inside the window (the positional embedding is part of
  every layer): two windows disagree by ~60% of the feature norm at the same time step. A hard switch would
  therefore jump much like upstream; a fade spreads that difference over 100 steps, adding ~1/100 of it per
  step, well under the natural step-to-step change (~15 vs ~0.2 in norm), so the result has no visible seam.
- A blend of two windows is a mixture, not a state any single window produces, so the fade is kept short and
  the rest of the time each step comes from exactly one window.
- The fade sits in the centre of the overlap, so both windows are at least 4 s (200 steps) from their edges
  wherever they contribute; window edges lack context on one side and position 0 behaves specially.
The cost is 1.5x the encoder passes. `"upstream"` mode keeps the segment-by-segment behaviour for comparison.
Both modes give T = n_mel // 2 steps and are identical for audio up to 30 s (one window, weight exactly 1).
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
import torch

from latentsync.audio.load import load_audio
from latentsync.errors import AudioError
from latentsync.models.whisper import CHUNK_FRAMES, SAMPLE_RATE, AudioEncoder, log_mel_spectrogram

Mode = Literal["continuous", "upstream"]
CONTINUOUS_STRIDE_FRAMES = 2000  # mel frames between window starts in continuous mode (20 s; 500-step overlaps)
FADE_STEPS = 100  # continuous mode: cross-fade length in encoder steps (2 s), centred in each overlap
STEPS_PER_VIDEO_FRAME = 2  # 50 Hz encoder steps / 25 fps video
CONTEXT_STEPS = (4, 5)  # steps before / after 2i in a frame's window: t = 2i-4 .. 2i+5, ten steps


def _window_weights(ramp_in: bool, ramp_out: bool) -> torch.Tensor:
    """Blend weight over one full continuous-mode window (CHUNK_FRAMES // 2 steps).

    Where the window overlaps a neighbour, it is 0 up to the fade, a linear ramp across the FADE_STEPS at the
    centre of the overlap, then 1 (mirrored at the outgoing end). Ramps use (j + 0.5) / FADE_STEPS, so the
    outgoing ramp of a window and the incoming ramp of the next sum to 1.
    """
    n_steps = CHUNK_FRAMES // 2
    lead = (CHUNK_FRAMES - CONTINUOUS_STRIDE_FRAMES) // 2 // 2 - FADE_STEPS // 2  # overlap steps before the fade
    up = (torch.arange(FADE_STEPS) + 0.5) / FADE_STEPS
    w = torch.ones(n_steps)
    if ramp_in:
        w[:lead] = 0.0
        w[lead : lead + FADE_STEPS] = up
    if ramp_out:
        w[n_steps - lead - FADE_STEPS : n_steps - lead] = up.flip(0)
        w[n_steps - lead :] = 0.0
    return w


@torch.no_grad()
def audio_features(
    audio: np.ndarray | torch.Tensor,
    encoder: AudioEncoder,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    mode: Mode = "continuous",
    batch_size: int = 4,
) -> torch.Tensor:
    """16 kHz mono float audio -> per-layer Whisper states [T, n_layer + 1, n_state], T = n_samples // 320.

    The encoder runs on its own device and dtype; `device` (default: the encoder's) and `dtype` are those of
    the result. Windows are encoded `batch_size` at a time and accumulated, so memory does not grow with length.
    """
    if mode not in ("continuous", "upstream"):
        raise ValueError(f"mode must be 'continuous' or 'upstream', got {mode!r}")
    param = encoder.conv1.weight
    mel = log_mel_spectrogram(torch.as_tensor(audio, dtype=torch.float32).to(param.device))
    n_mel = mel.shape[1]
    total = n_mel // 2
    if total == 0:
        raise AudioError(f"audio too short for Whisper features: {n_mel} mel frames (need >= 2, i.e. 20 ms)")
    stride = CONTINUOUS_STRIDE_FRAMES if mode == "continuous" else CHUNK_FRAMES
    starts = [0]
    while starts[-1] + CHUNK_FRAMES < n_mel:  # a further window only while the last one misses the end
        starts.append(starts[-1] + stride)
    out = torch.zeros(total, encoder.dims.n_audio_layer + 1, encoder.dims.n_audio_state, device=param.device)
    weight_sum = torch.zeros(total, device=param.device)
    for b in range(0, len(starts), batch_size):
        batch = starts[b : b + batch_size]
        segs = torch.zeros(len(batch), mel.shape[0], CHUNK_FRAMES, device=param.device)
        for j, s in enumerate(batch):
            seg = mel[:, s : s + CHUNK_FRAMES]
            segs[j, :, : seg.shape[1]] = seg
        states = encoder(segs.to(param.dtype)).float()
        for j, s in enumerate(batch):
            k = b + j
            n_valid = min(CHUNK_FRAMES, n_mel - s) // 2  # upstream keeps int(n / 2) steps of an n-frame segment
            if mode == "continuous":
                w = _window_weights(k > 0, k + 1 < len(starts))[:n_valid].to(param.device)
            else:
                w = torch.ones(n_valid, device=param.device)
            t0 = s // 2
            out[t0 : t0 + n_valid] += states[j, :n_valid] * w[:, None, None]
            weight_sum[t0 : t0 + n_valid] += w
    out /= weight_sum[:, None, None]
    return out.to(device=device if device is not None else param.device, dtype=dtype)


def frame_windows(
    features: torch.Tensor, num_frames: int | None = None, frames: torch.Tensor | None = None,
    first_step: int = 0, total_steps: int | None = None,
) -> torch.Tensor:
    """[T, L, D] features -> [N, 10 * L, D] audio tokens per 25 fps video frame (N = T // 2 + 2 by default).

    Frame i takes steps t = 2i-4 .. 2i+5 clamped to [0, T-1]; row r = L * (t - (2i-4)) + layer (time-major),
    as upstream's feature2chunks. The default N reproduces upstream's off-by-two count (its loop runs until
    2i exceeds T), which also decides how many video frames upstream generates. `frames` (an index tensor)
    gathers only those frames' windows, so a streaming caller never holds every window of a long clip; such a
    caller may also pass only a stretch of the clip's features, steps `first_step` onwards of `total_steps`.
    Pure index gathering.
    """
    if features.dim() != 3 or features.shape[0] == 0:
        raise ValueError(f"features must be a non-empty [T, L, D] tensor, got {list(features.shape)}")
    n_steps, n_layers, dim = features.shape
    total = first_step + n_steps if total_steps is None else total_steps
    if frames is None:
        n = total // STEPS_PER_VIDEO_FRAME + 2 if num_frames is None else int(num_frames)
        frames = torch.arange(n, device=features.device)
    before, after = CONTEXT_STEPS
    offset = torch.arange(-before, after + 1, device=features.device)[None, :]
    steps = (STEPS_PER_VIDEO_FRAME * frames.to(features.device)[:, None] + offset).clamp_(0, total - 1)  # [N, 10]
    steps -= first_step
    if steps.numel() and (steps.min() < 0 or steps.max() >= n_steps):
        raise ValueError(f"frames need steps {int(steps.min()) + first_step}..{int(steps.max()) + first_step}, "
                         f"features hold {first_step}..{first_step + n_steps - 1}")
    return features[steps].reshape(len(frames), offset.shape[1] * n_layers, dim)


class AudioEncoderPipeline:
    """File path or 16 kHz waveform -> per-frame audio tokens, with the encoder and the mode fixed once.

    Pass the encoder of the Whisper model the U-Net was trained with (upstream: multilingual tiny.pt); the
    tiny.en conversion in `whisper_ct2` is for tests and development.
    """

    def __init__(
        self,
        encoder: AudioEncoder,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
        mode: Mode = "continuous",
    ) -> None:
        self.encoder = encoder
        self.device = device
        self.dtype = dtype
        self.mode: Mode = mode

    def features(self, source: str | os.PathLike | np.ndarray | torch.Tensor) -> torch.Tensor:
        """[T, L, D] features of a media file (any format, decoded to 16 kHz mono) or a 16 kHz mono waveform."""
        audio = load_audio(source, SAMPLE_RATE) if isinstance(source, (str, os.PathLike)) else source
        return audio_features(audio, self.encoder, self.device, self.dtype, self.mode)

    def __call__(
        self, source: str | os.PathLike | np.ndarray | torch.Tensor, num_frames: int | None = None
    ) -> torch.Tensor:
        """[N, 50, D] audio tokens per video frame; see `frame_windows` for N."""
        return frame_windows(self.features(source), num_frames)
