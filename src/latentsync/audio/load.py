"""Decode any audio (or the audio track of a video) to float32 mono at a fixed rate, with PyAV.

Upstream reads audio through the ffmpeg CLI as 16-bit mono (`-f s16le -ac 1 -ar 16000`, then / 32768).
PyAV's AudioResampler is the same libswresample, and we also ask it for s16: libswresample normalises its
down-mix matrix only for integer output (stereo -> mono is (L + R) / 2 for s16 but (L + R) / sqrt(2) for float),
so s16 reproduces upstream's levels, which matter because Whisper's log-mel is not scale-invariant.

Real files have damaged packets (a broken AC-3 frame in an old recording, a bad sector). One of them must not cost
the whole soundtrack: `AudioPackets` decodes packet by packet and turns a packet that fails to decode into silence
of that packet's duration, so everything after it stays in sync with the video, and counts them for the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from latentsync.errors import AudioError

log = logging.getLogger(__name__)
_DECODE_ERRORS = (av.error.FFmpegError, ValueError)


class AudioPackets:
    """The frames of one audio stream, decoded packet by packet; a damaged packet yields the seconds of silence
    that stand in for it (a float) instead of frames. `damaged` counts those, `packets` all that were read."""

    def __init__(self, container: av.container.InputContainer, stream: av.audio.stream.AudioStream,
                 path: Path) -> None:
        self.container, self.stream, self.path = container, stream, path
        self.damaged = self.packets = 0
        self.seconds_lost = 0.0

    def __iter__(self) -> Iterator[av.AudioFrame | float]:
        frame_seconds = Fraction(self.stream.frame_size or 1024, self.stream.sample_rate or 16000)
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:  # the demuxer's end-of-stream marker: flush the decoder
                    yield from self._decode(packet, frame_seconds)
                    continue
                self.packets += 1
                if packet.duration and packet.time_base:
                    frame_seconds = packet.duration * packet.time_base
                yield from self._decode(packet, frame_seconds)
        except _DECODE_ERRORS as exc:  # the container itself is unreadable from here on (a truncated file)
            raise AudioError(f"cannot decode the audio of {self.path} ({_reason(exc)})") from None
        if self.packets and self.damaged == self.packets:
            raise AudioError(f"cannot decode the audio of {self.path} (all {self.packets} packets are damaged)")

    def _decode(self, packet: av.Packet, seconds: Fraction) -> Iterator[av.AudioFrame | float]:
        try:
            frames = packet.decode()
        except _DECODE_ERRORS:
            self.damaged += 1
            self.seconds_lost += float(seconds)
            yield float(seconds)
            return
        yield from frames


@dataclass(frozen=True)
class Audio:
    """Decoded samples and what was lost on the way (damaged packets replaced by silence)."""

    samples: np.ndarray  # float32 mono
    damaged_packets: int = 0
    seconds_lost: float = 0.0

    def describe_damage(self) -> str:
        """"" or e.g. "1 damaged audio packet(s) skipped (0.03 s replaced by silence)"."""
        if not self.damaged_packets:
            return ""
        return f"{self.damaged_packets} damaged audio packet(s) skipped ({self.seconds_lost:.2f} s replaced by silence)"


def read_audio(path: str | os.PathLike, sample_rate: int = 16000) -> Audio:
    """The first audio stream of `path` as float32 mono samples at `sample_rate`, plus what was damaged.

    Raises a one-line AudioError for a missing or unreadable file, a file without an audio stream, a file whose
    every packet is damaged, or audio with no samples: these are user-input problems, not bugs.
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
        packets = AudioPackets(container, container.streams.audio[0], path)
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in packets:
                if isinstance(frame, float):
                    chunks.append(np.zeros(round(frame * sample_rate), np.int16))
                    continue
                frame.pts = None  # let the resampler run on sample counts, not on possibly gappy timestamps
                chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(frame))
            chunks.extend(out.to_ndarray().reshape(-1) for out in resampler.resample(None))
        except _DECODE_ERRORS as exc:
            raise AudioError(f"cannot decode the audio of {path} ({_reason(exc)})") from None
    audio = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
    if audio.size == 0:
        raise AudioError(f"{path} contains no audio samples")
    return Audio(audio, packets.damaged, packets.seconds_lost)


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> np.ndarray:
    """`read_audio`'s samples; damaged packets (replaced by silence) are logged as a warning."""
    audio = read_audio(path, sample_rate)
    if audio.damaged_packets:
        log.warning("%s: %s", path, audio.describe_damage())
    return audio.samples


def _reason(exc: Exception) -> str:
    """First line of an FFmpeg error, so the AudioError message stays on one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
