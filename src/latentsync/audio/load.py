"""Decode any audio (or the audio track of a video) to float32 mono at a fixed rate, with PyAV.

Upstream reads audio through the ffmpeg CLI as 16-bit mono (`-f s16le -ac 1 -ar 16000`, then / 32768).
PyAV's AudioResampler is the same libswresample, and we also ask it for s16: libswresample normalises its
down-mix matrix only for integer output (stereo -> mono is (L + R) / 2 for s16 but (L + R) / sqrt(2) for float),
so s16 reproduces upstream's levels, which matter because Whisper's log-mel is not scale-invariant.
"""

from __future__ import annotations

import os
from pathlib import Path

import av
import numpy as np

from latentsync.errors import AudioError


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """Return the first audio stream of `path` as float32 mono samples at `sample_rate`.

    Raises a one-line AudioError for a missing or unreadable file, a file without an audio stream, a decode
    failure, or audio with no samples: these are user-input problems, not bugs.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        container = av.open(str(path), mode="r")
    except (av.error.FFmpegError, OSError, ValueError) as exc:
        raise AudioError(f"cannot open {path} as a media file ({_reason(exc)})") from None
    with container:
        if not container.streams.audio:
            raise AudioError(f"{path} has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler run on sample counts, not on possibly gappy timestamps
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioError(f"cannot decode the audio of {path} ({_reason(exc)})") from None
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioError(f"{path} contains no audio samples")
    return audio


def _reason(exc: Exception) -> str:
    """First line of an FFmpeg error, so the AudioError message stays on one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
