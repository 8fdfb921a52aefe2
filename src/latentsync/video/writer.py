"""Write the result once: H.264 (libx264, 4:2:0, constant fps) plus the speech as AAC, in one MP4.

Upstream writes frames with imageio, then runs ffmpeg a second time to mux the audio. Here frames and audio are
encoded in a single pass, interleaved as they go, so memory does not grow with the video's length and there is
no lossy re-encode. Pixels are coded as the source's were (matrix, range, tags; 10-bit for deeper sources, see
`colour.py`), so what the model did not touch comes back unchanged. The file is built under a hidden temporary
name next to OUT and renamed into place only when complete: an interrupted, failed or aborted run never leaves a
half-written OUT behind (`output.py`: the checks on OUT, the locked temporary file, the cleanup of those a killed
run left).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from latentsync.audio.load import AudioPackets
from latentsync.errors import AudioError, VideoError
from latentsync.video.colour import Colour, rgb_to_frame
from latentsync.video.output import PartFile, check_writable

# CRF 18 is x264's conventional "visually lossless" point (also upstream's final encode). "veryfast" keeps CPU
# encoding negligible next to inference: measured at 1280x720 on 2 cores, 10-23 ms/frame (content-dependent,
# RGB -> YUV conversion included) against 15-81 ms for x264's default "medium", with similar file sizes at CRF 18.
DEFAULT_CRF = 18
DEFAULT_PRESET = "veryfast"
# Sample rates the AAC bitstream can signal (ISO/IEC 14496-3 sampling_frequency_index).
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
AAC_FRAME = 1024
_MUXERS = {".mov": "mov", ".mkv": "matroska"}
_WRITE_ERRORS = (av.error.FFmpegError, OSError)


class VideoWriter:
    """Context manager that encodes RGB frames (and optionally audio) into `out_path`, atomically.

    Odd widths/heights cannot be stored in 4:2:0 H.264 (chroma is subsampled 2x2 and the bitstream can only
    crop in 2-pixel units), so an odd frame gets its last column/row duplicated: the file is
    `encoded_width` x `encoded_height` (rounded up to even) and its top-left `width` x `height` is the input.
    """

    def __init__(
        self,
        out_path: str | os.PathLike,
        width: int,
        height: int,
        fps: int | Fraction = 25,
        crf: int = DEFAULT_CRF,
        preset: str = DEFAULT_PRESET,
        audio_path: str | os.PathLike | None = None,
        colour: Colour = Colour(),
    ) -> None:
        self.out_path = check_writable(out_path, sources=(audio_path,))
        self.colour = colour
        self.width, self.height = width, height
        self.encoded_width, self.encoded_height = width + width % 2, height + height % 2
        self.fps = Fraction(fps)
        self.frames_written = 0
        self._open = True
        self._audio: _AudioTrack | None = None
        try:
            self._part = PartFile(self.out_path)
        except OSError as exc:
            raise VideoError(f"cannot create {self.out_path} ({_reason(exc)})") from None
        try:
            muxer = _MUXERS.get(self.out_path.suffix.lower(), "mp4")
            self._container = av.open(str(self._part.path), "w", format=muxer)
        except BaseException as exc:  # Ctrl-C or SIGTERM included: no temporary file is left behind
            self._part.discard()
            if isinstance(exc, _WRITE_ERRORS):
                raise VideoError(f"cannot create {self.out_path} ({_reason(exc)})") from None
            raise
        try:
            self._video = self._add_video_stream(crf, preset)
            if audio_path is not None:
                self._audio = _AudioTrack(Path(audio_path), self._container, self.fps)
        except BaseException:
            self.abort()
            raise

    def _add_video_stream(self, crf: int, preset: str) -> av.video.stream.VideoStream:
        stream = self._container.add_stream("libx264", rate=self.fps, options={"crf": str(crf), "preset": preset})
        stream.width, stream.height, stream.pix_fmt = self.encoded_width, self.encoded_height, self.colour.pix_fmt
        self.colour.tag(stream.codec_context)
        return stream

    def write(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 HxWx3 frame; the audio is advanced to the same time so the two interleave."""
        if not self._open:
            raise RuntimeError("write() on a closed VideoWriter")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            expected = (self.height, self.width, 3)
            raise ValueError(f"expected a uint8 frame of shape {expected}, got {frame.dtype} {frame.shape}")
        if self.encoded_width != self.width or self.encoded_height != self.height:
            pad = ((0, self.encoded_height - self.height), (0, self.encoded_width - self.width), (0, 0))
            frame = np.pad(frame, pad, mode="edge")
        video_frame = rgb_to_frame(frame, self.colour)
        video_frame.pts = self.frames_written
        try:
            self._container.mux(self._video.encode(video_frame))
            self.frames_written += 1
            if self._audio is not None:
                self._audio.advance(self.frames_written, final=False)
        except _WRITE_ERRORS as exc:
            self.abort()
            raise VideoError(f"cannot write {self.out_path} ({_reason(exc)})") from None
        except BaseException:  # an AudioError mid-way, Ctrl-C: no half file, even outside a `with`
            self.abort()
            raise

    def close(self) -> None:
        """Flush the encoders, finish the audio at exactly frames/fps seconds and move the file into place."""
        if not self._open:
            return
        if self.frames_written == 0:
            self.abort()
            raise VideoError(f"no frames to write to {self.out_path}")
        try:
            self._container.mux(self._video.encode(None))
            if self._audio is not None:
                self._audio.advance(self.frames_written, final=True)
                self._audio.close()
            self._container.close()
            self._part.commit()
        except _WRITE_ERRORS as exc:
            self.abort()
            raise VideoError(f"cannot write {self.out_path} ({_reason(exc)})") from None
        except BaseException:
            self.abort()
            raise
        self._open = False

    def abort(self) -> None:
        """Discard everything: close quietly and delete the temporary file (OUT is never touched)."""
        if not self._open:
            return
        self._open = False
        for closable in (self._audio, self._container):
            if closable is not None:
                try:
                    closable.close()
                except _WRITE_ERRORS:
                    pass  # already failing: the temp file is removed below either way
        self._part.discard()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class _AudioTrack:
    """The first audio stream of any file, re-encoded to AAC and cut or silence-padded to the video's length.

    The source is decoded lazily as the video advances, so only about one AAC frame of audio is held. AAC keeps
    the source rate when the format can signal it (otherwise the next rate up, capped at 96 kHz) and at most two
    channels (more are down-mixed to stereo by libswresample).
    """

    def __init__(self, path: Path, container: av.container.OutputContainer, fps: Fraction) -> None:
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        try:
            self._source = av.open(str(path))
        except _WRITE_ERRORS as exc:
            raise AudioError(f"cannot open {path} as a media file ({_reason(exc)})") from None
        if not self._source.streams.audio:
            self._source.close()
            raise AudioError(f"{path} has no audio stream")
        source = self._source.streams.audio[0]
        self.path, self.fps = path, fps
        self.rate = _aac_rate(source.sample_rate)
        self.layout = "mono" if source.channels == 1 else "stereo"
        self._container = container
        self._stream = container.add_stream("aac", rate=self.rate, layout=self.layout)
        self._resampler = av.AudioResampler(format="fltp", layout=self.layout, rate=self.rate)
        self._chunks = self._decode(source)
        self._buffer = np.zeros((1 if self.layout == "mono" else 2, 0), np.float32)
        self._written = 0

    def _decode(self, source: av.audio.stream.AudioStream) -> Iterator[np.ndarray]:
        """Planar float32 chunks at the output rate/layout; timestamps dropped so gaps cannot insert silence, and a
        damaged packet becomes silence of its length (as in `load_audio`, so the muxed speech and the speech the
        mouth was made from stay aligned)."""
        channels = 1 if self.layout == "mono" else 2
        try:
            for frame in AudioPackets(self._source, source, self.path):
                if isinstance(frame, float):
                    yield np.zeros((channels, round(frame * self.rate)), np.float32)
                    continue
                frame.pts = None
                yield from (out.to_ndarray() for out in self._resampler.resample(frame))
            yield from (out.to_ndarray() for out in self._resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as exc:
            raise AudioError(f"cannot decode the audio of {self.path} ({_reason(exc)})") from None

    def advance(self, video_frames: int, final: bool) -> None:
        """Encode audio up to the end of `video_frames` frames: whole AAC frames only, unless `final`."""
        target = int(video_frames * self.rate / self.fps)
        if not final:
            target -= (target - self._written) % AAC_FRAME
        while self._buffer.shape[1] < target - self._written:
            chunk = next(self._chunks, None)
            if chunk is None:  # source shorter than the video: pad with silence
                chunk = np.zeros((self._buffer.shape[0], target - self._written - self._buffer.shape[1]), np.float32)
            self._buffer = np.concatenate([self._buffer, chunk], axis=1)
        while self._written < target:
            size = min(AAC_FRAME, target - self._written)
            samples = np.ascontiguousarray(self._buffer[:, :size])
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=self.layout)
            frame.sample_rate, frame.pts, frame.time_base = self.rate, self._written, Fraction(1, self.rate)
            self._container.mux(self._stream.encode(frame))
            self._buffer = self._buffer[:, size:]
            self._written += size
        if final:
            self._container.mux(self._stream.encode(None))

    def close(self) -> None:
        self._source.close()


def _aac_rate(rate: int) -> int:
    """The source rate if AAC can carry it, else the next supported rate up (96 kHz at most)."""
    return next((r for r in AAC_RATES if r >= rate), AAC_RATES[-1])


def _reason(exc: BaseException) -> str:
    """First line of an FFmpeg/OS error, so the message stays on one line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
