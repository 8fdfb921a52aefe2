"""Speech for tests: hibari-tts (its voice ships in the wheel), resampled and written as the tests need."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import av
import numpy as np

TTS_RATE = 24000


@lru_cache(maxsize=1)
def _tts():
    from hibari import Hibari

    return Hibari()


def speech(text: str, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Mono float32 speech at `rate` (hibari renders 24 kHz)."""
    from scipy.signal import resample_poly

    wav = np.asarray(_tts()(text, seed=seed), dtype=np.float32)
    if rate == TTS_RATE:
        return wav
    g = np.gcd(rate, TTS_RATE)
    return resample_poly(wav, rate // g, TTS_RATE // g).astype(np.float32)


def write_audio(path: str | Path, wav: np.ndarray, rate: int, channels: int = 1, codec: str | None = None) -> Path:
    """Write mono float audio with PyAV, duplicated to `channels`; codec from the suffix by default."""
    path = Path(path)
    codec = codec or {".wav": "pcm_s16le", ".m4a": "aac", ".mp3": "libmp3lame", ".flac": "flac"}[path.suffix]
    layout = "mono" if channels == 1 else "stereo"
    pcm = (np.clip(wav, -1, 1) * 32767).astype(np.int16)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, layout=layout)
        frame = av.AudioFrame.from_ndarray(np.repeat(pcm[None, :], channels, 0).T.reshape(1, -1).copy(), format="s16", layout=layout)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path
