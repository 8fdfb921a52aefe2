"""Whisper features for audio that is still arriving: each video frame's window as soon as its audio is in.

The offline pipeline encodes whole 30 s Whisper windows (`audio/features.py`, continuous mode: windows every
20 s, cross-faded in their overlaps). Here the same windows are encoded over the audio received so far, padded
with the same zeros as a clip that ends there; a frame's features are taken once its own audio, the 6 steps of
context after it and `lookahead_frames` more frames of audio have arrived. So:
- once the stream has ended (or all of it was pushed before the frames were asked for), every frame's features
  are exactly the offline ones;
- while it is arriving, a frame's features lack the influence of audio further ahead (Whisper attends both ways
  over its window). `lookahead_frames` trades latency (40 ms a frame) for closeness to the offline features;
  bench/live.py measures the effect on the frames.

Why not a shorter window, which would be much cheaper than a 30 s one: the U-Net was trained on features of
30 s windows whose unused end is zero padding, and the padding shapes every step's features (Whisper attention
spreads over it). Measured on real speech, an 8 s window without the padding is 0.31 relative error from the
offline features, against 0.14 for the 30 s window with 4 frames of lookahead.

The mel floor (`max - 8` over the whole clip) uses the running max of the frames received so far; memory is
bounded: audio older than the oldest window still needed is dropped.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from latentsync.audio.features import CONTINUOUS_STRIDE_FRAMES, _window_weights, frame_windows
from latentsync.errors import AudioError
from latentsync.models.whisper import CHUNK_FRAMES, HOP_LENGTH, N_FFT, AudioEncoder, log_mel_power, normalise_log_mel

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
REACH = N_FFT // 2  # samples a mel frame sees on each side of its centre
WINDOW_STEPS = CHUNK_FRAMES // 2  # encoder steps in one 30 s window
STRIDE_STEPS = CONTINUOUS_STRIDE_FRAMES // 2
CONTEXT_AFTER = 3  # frame i's window ends at step 2i + 5, which needs mel frames up to 4i + 11: 3 frames on


def pcm_samples(data: bytes | np.ndarray) -> np.ndarray:
    """16 kHz mono audio as float32 in [-1, 1]: from little-endian 16-bit PCM bytes, an int16 array, or a float
    array. Raises AudioError (one line) on anything else."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        if len(raw) % 2:
            raise AudioError(f"audio must be 16-bit PCM: got {len(raw)} bytes, an odd count")
        return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    array = np.asarray(data)
    if array.ndim != 1:
        raise AudioError(f"audio must be mono samples (a 1-D array), got shape {list(array.shape)}")
    if array.dtype == np.int16:
        return array.astype(np.float32) / 32768.0
    if not np.issubdtype(array.dtype, np.floating):
        raise AudioError(f"audio must be int16 or float samples, got {array.dtype}")
    samples = array.astype(np.float32)
    if not np.isfinite(samples).all():
        raise AudioError("audio has NaN or infinite samples")
    return samples


class StreamingFeatures:
    """Push 16 kHz mono samples as they arrive; ask for frames' audio tokens once `ready()` says they exist.

    Thread-safe: one thread may push while another asks for windows.
    """

    def __init__(self, encoder: AudioEncoder, dtype: torch.dtype = torch.float32, lookahead_frames: int = 4) -> None:
        if lookahead_frames < 0:
            raise ValueError(f"lookahead_frames must be >= 0, got {lookahead_frames}")
        self.encoder = encoder
        self.dtype = dtype
        self.lookahead_frames = lookahead_frames
        self.received = 0  # samples pushed in all
        self.ended = False
        self._audio = np.zeros(0, dtype=np.float32)  # samples origin .. received, but for the pieces below
        self._pieces: list[np.ndarray] = []  # pushed since `_audio` was last joined: a push only appends
        self._origin = 0
        self._log_max = -math.inf  # over the mel frames counted so far
        self._counted = 0  # mel frames whose power is in _log_max
        self._lock = threading.Lock()

    def push(self, samples: np.ndarray, final: bool = False) -> None:
        """Append float32 samples (see `pcm_samples`); `final` ends the stream with them."""
        with self._lock:
            if self.ended:
                raise AudioError("audio pushed after the end of the stream")
            self._pieces.append(samples)
            self.received += len(samples)
            self.ended = final

    def end(self) -> None:
        """No more audio: the last frames get their features from what is there, as offline."""
        with self._lock:
            self.ended = True
            self._count_max()

    def ready(self) -> int:
        """Frames (from 0) whose features can be taken now."""
        with self._lock:
            if self.ended:
                return math.ceil(self.received / SAMPLES_PER_FRAME)
            needed = CONTEXT_AFTER + self.lookahead_frames
            return max(0, (self.received - REACH) // SAMPLES_PER_FRAME - needed + 1)

    def arrived(self, frame: int) -> int:
        """Samples that must have arrived before `frame` is ready (for latency accounting)."""
        return SAMPLES_PER_FRAME * (frame + CONTEXT_AFTER + self.lookahead_frames) + REACH

    @torch.no_grad()
    def windows(self, first: int, stop: int) -> torch.Tensor:
        """Audio tokens [stop - first, 50, D] of frames first .. stop - 1 (all must be `ready`), as the offline
        pipeline's `frame_windows` over the whole clip's features; then forgets audio no longer needed.

        The encoder runs outside the lock, on a snapshot, so pushes are never held up by it."""
        if stop > self.ready():
            raise ValueError(f"frames up to {stop - 1} are not ready")
        with self._lock:
            self._count_max()
            snap = _Snapshot(self._joined(), self._origin, self.received, self.ended, self._log_max)
        total = snap.received // HOP_LENGTH // 2  # encoder steps of the audio so far
        if total == 0:
            raise AudioError("audio too short for Whisper features: need at least 20 ms")
        lo = max(0, min(2 * first - 4, total - 1))
        hi = min(total, 2 * (stop - 1) + 6)
        tokens = frame_windows(self._steps(snap, lo, hi), frames=torch.arange(first, stop), first_step=lo,
                               total_steps=total)
        with self._lock:
            self._forget(2 * first - 4)
        return tokens.to(self.dtype)

    def _count_max(self) -> None:
        """Fold the mel frames that are now final into the running max (all of them once the stream ended). Run
        when features are taken, so it covers everything received by then."""
        n_frames = self.received // HOP_LENGTH
        final = n_frames if self.ended else min(n_frames, max(0, (self.received - REACH) // HOP_LENGTH + 1))
        if final <= self._counted:
            return
        start = max(0, self._counted - 2) * HOP_LENGTH  # 2 frames back: their reach covers frame `_counted`
        end = self.received if self.ended else min(self.received, final * HOP_LENGTH + REACH)
        power = log_mel_power(_Snapshot(self._joined(), self._origin).slice(start, end))
        first = self._counted - start // HOP_LENGTH
        part = power[:, first : first + final - self._counted]
        if part.numel():
            self._log_max = max(self._log_max, float(part.max()))
        self._counted = final

    def _steps(self, snap: "_Snapshot", lo: int, hi: int) -> torch.Tensor:
        """Encoder states [hi - lo, L, D] of steps lo .. hi - 1, blended over windows as continuous mode does."""
        param = self.encoder.conv1.weight
        dims = self.encoder.dims
        out = torch.zeros(hi - lo, dims.n_audio_layer + 1, dims.n_audio_state, device=param.device)
        weight_sum = torch.zeros(hi - lo, device=param.device)
        n_mel = snap.received // HOP_LENGTH
        for k in range(max(0, (lo - WINDOW_STEPS) // STRIDE_STEPS), hi // STRIDE_STEPS + 1):
            w_start = k * STRIDE_STEPS
            if k > 0 and snap.ended and n_mel <= 2 * (w_start - STRIDE_STEPS) + CHUNK_FRAMES:
                break  # offline, the window before reaches the end of the clip: there is no window k
            n_valid = min(CHUNK_FRAMES, n_mel - 2 * w_start) // 2
            a, b = max(lo, w_start), min(hi, w_start + n_valid)
            if b <= a:
                continue
            # A next window exists offline iff the clip runs past this one; a stream that has not ended may.
            has_next = not snap.ended or n_mel > 2 * w_start + CHUNK_FRAMES
            w = _window_weights(k > 0, has_next)[a - w_start : b - w_start].to(param.device)
            if not w.any():
                continue
            states = self._encode(snap, 2 * w_start, n_mel)
            out[a - lo : b - lo] += states[a - w_start : b - w_start] * w[:, None, None]
            weight_sum[a - lo : b - lo] += w
        return out / weight_sum[:, None, None]

    def _encode(self, snap: "_Snapshot", mel_start: int, n_mel: int) -> torch.Tensor:
        """One 30 s window from mel frame `mel_start`, over the audio so far, zero-padded as offline."""
        param = self.encoder.conv1.weight
        start = max(0, mel_start - 2) * HOP_LENGTH
        power = log_mel_power(snap.slice(start, snap.received))
        first = mel_start - start // HOP_LENGTH
        count = min(CHUNK_FRAMES, n_mel - mel_start)
        part = power[:, first : first + count]
        log_max = max(snap.log_max, float(part.max()))
        mel = torch.zeros(1, part.shape[0], CHUNK_FRAMES, device=param.device)
        mel[0, :, :count] = normalise_log_mel(part, log_max)
        return self.encoder(mel.to(param.dtype))[0].float()

    def _forget(self, step: int) -> None:
        """Drop audio no window of steps >= `step` (or the running max) will read again."""
        k = max(0, (step - WINDOW_STEPS) // STRIDE_STEPS + 1)  # the first window that covers `step`
        keep = min(max(0, 2 * k * STRIDE_STEPS - 2) * HOP_LENGTH, max(0, self._counted - 2) * HOP_LENGTH)
        if keep > self._origin:
            self._audio = self._joined()[keep - self._origin :]
            self._origin = keep

    def _joined(self) -> np.ndarray:
        """The audio kept, pieces included: joined once per chunk, not copied on every push."""
        if self._pieces:
            self._audio = np.concatenate([self._audio, *self._pieces])
            self._pieces = []
        return self._audio


@dataclass(frozen=True)
class _Snapshot:
    """The stream's state at one moment. Joining and trimming replace the audio array rather than change it in
    place, so a snapshot's array stays valid while the encoder reads it."""

    audio: np.ndarray
    origin: int  # sample index of audio[0]
    received: int = 0
    ended: bool = False
    log_max: float = -math.inf

    def slice(self, start: int, end: int) -> np.ndarray:
        if start < self.origin:
            raise RuntimeError(f"audio from sample {start} was already dropped (kept from {self.origin})")
        return self.audio[start - self.origin : end - self.origin]
