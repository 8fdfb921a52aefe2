"""The Wav2Lip-style mel spectrogram that StableSyncNet was trained on, and its per-clip windows.

SyncNet weights only make sense on exactly this feature: preemphasis, an 800-point STFT at 80 frames/s,
a Slaney mel basis over 55-7600 Hz, dB relative to 20 dB and a symmetric clip to [-4, 4]. The numbers are
upstream's (`pipeline_constants.json` -> `syncnet_inputs.mel_params`).
"""

from __future__ import annotations

import functools

import librosa
import numpy as np
from scipy.signal import lfilter

from latentsync.errors import AudioError

SAMPLE_RATE = 16000
N_FFT = 800
HOP_SIZE = 200
WIN_SIZE = 800
NUM_MELS = 80
FMIN = 55
FMAX = 7600
PREEMPHASIS = 0.97
MIN_LEVEL_DB = -100.0
REF_LEVEL_DB = 20.0
MAX_ABS_VALUE = 4.0
MEL_FPS = SAMPLE_RATE // HOP_SIZE  # 80 mel frames per second


@functools.lru_cache(maxsize=1)
def mel_basis() -> np.ndarray:
    """[80, 401] Slaney-normalised mel filter bank (librosa defaults apart from the listed values), built once."""
    basis = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=NUM_MELS, fmin=FMIN, fmax=FMAX)
    basis.setflags(write=False)  # shared by every caller through the cache
    return basis


def melspectrogram(wav: np.ndarray) -> np.ndarray:
    """16 kHz mono waveform [N] -> normalised log-mel [80, 1 + N // 200] in [-4, 4], float32.

    Computed in float64 like upstream (the preemphasis filter promotes) and returned as float32, the
    dtype the network consumes. Silence maps to -4 everywhere (the -100 dB floor).
    """
    wav = np.asarray(wav)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform [N], got shape {list(wav.shape)}")
    if wav.size == 0:
        raise AudioError("cannot compute a mel spectrogram of empty audio")
    if not np.all(np.isfinite(wav)):
        raise AudioError("audio contains NaN or infinite samples")
    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], wav)
    # center=True with zero padding is the librosa >= 0.10 default, the version upstream pins.
    stft = librosa.stft(
        y=emphasised, n_fft=N_FFT, hop_length=HOP_SIZE, win_length=WIN_SIZE, center=True, pad_mode="constant"
    )
    spec = np.abs(stft)
    min_level = 10.0 ** (MIN_LEVEL_DB / 20.0)
    db = 20.0 * np.log10(np.maximum(min_level, mel_basis() @ spec)) - REF_LEVEL_DB
    normalised = 2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE
    return np.clip(normalised, -MAX_ABS_VALUE, MAX_ABS_VALUE).astype(np.float32)


def mel_window_start(start_frame: int, fps: int = 25) -> int:
    """First mel frame of the window for video frame `start_frame`: int(80 * start_frame / fps).

    Integer arithmetic; equal to upstream's float expression int(80.0 * (start_frame / fps)) at 25 fps
    (checked for every frame below 2,000,000) but free of rounding surprises.
    """
    return (MEL_FPS * start_frame) // fps


def mel_window_length(num_frames: int = 16, fps: int = 25) -> int:
    """Window length in mel frames: ceil(num_frames / 5 * 16) at 25 fps (52 for 16 frames, 80 for 25)."""
    return -(-MEL_FPS * num_frames // fps)


def mel_window(mel: np.ndarray, start_frame: int, num_frames: int = 16, fps: int = 25) -> np.ndarray:
    """The [80, mel_window_length(num_frames)] slice of `mel` aligned with video frames start_frame onwards.

    A window that runs past the end of the mel is completed by repeating the last mel frame: audio and video
    lengths commonly differ by a frame or two at the tail, and the last clip of a video should still be
    scoreable. (Upstream's dataset skips such windows instead.) A window that starts at or beyond the end,
    or a negative start, has no audio at all and raises ValueError.
    """
    if mel.ndim != 2:
        raise ValueError(f"expected mel [80, T], got shape {list(mel.shape)}")
    if start_frame < 0 or num_frames <= 0:
        raise ValueError(f"need start_frame >= 0 and num_frames > 0, got {start_frame}, {num_frames}")
    start = mel_window_start(start_frame, fps)
    length = mel_window_length(num_frames, fps)
    total = mel.shape[1]
    if start >= total:
        raise ValueError(
            f"video frame {start_frame} starts at mel frame {start}, past the end of the audio ({total} frames)"
        )
    window = mel[:, start : start + length]
    if window.shape[1] < length:
        window = np.pad(window, ((0, 0), (0, length - window.shape[1])), mode="edge")
    return window
