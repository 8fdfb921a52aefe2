"""Read any video (or still image) as a constant-25-fps stream of RGB frames, in bounded memory.

The model is trained on 25 fps video (upstream re-encodes every input with `ffmpeg -r 25` first). Instead of a
second encode we resample on the fly by presentation timestamps: output frame k shows the source frame on screen
at time k/25 after the stream's first timestamp, i.e. the last source frame whose pts <= first_pts + k/25. This
handles any source rate, including variable frame rate, and keeps the pixels of the user's file untouched.

Nothing here holds more than a bounded number of frames: forward reads stream, and reversed playback (for the
ping-pong loop used when the audio outlasts the video) decodes `block` frames forward and yields them reversed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from latentsync.errors import VideoError
from latentsync.video.colour import Colour, frame_to_rgb

FPS = 25
# FFmpeg's ANSI-art demuxer claims any .txt/.nfo file as "video"; a text file is never what the user meant.
_NOT_VIDEO_FORMATS = {"tty"}
_DECODE_ERRORS = (av.error.FFmpegError, ValueError)


@dataclass(frozen=True)
class VideoInfo:
    """What the pipeline needs to know about an input before decoding it (sizes are after rotation)."""

    path: Path
    width: int
    height: int
    source_fps: float
    duration: float
    num_frames: int
    is_image: bool
    has_audio: bool
    colour: Colour = Colour()  # how the pixels are coded; the output is written the same way


@dataclass(frozen=True)
class _Timeline:
    """Maps source timestamps to output slots, exactly (rational arithmetic: no drift over long videos)."""

    time_base: Fraction
    first_pts: int
    last_pts: int  # largest packet pts: decoding must reach it, or data was lost
    frame_pts: int  # nominal source frame duration, for frames without a timestamp
    fps: Fraction
    quarter_turns: int  # counter-clockwise rotation to apply for display
    width: int  # decoded (pre-rotation) size, so a mid-stream size change still yields uniform frames
    height: int
    colour: Colour | None  # None: not planar Y'CbCr (RGB, grey, ...), converted by swscale

    def slot(self, pts: int) -> int:
        """First output index at which a source frame with `pts` is on screen."""
        return math.ceil((pts - self.first_pts) * self.time_base * self.fps)

    def pts_at(self, index: int) -> int:
        """Source timestamp of output frame `index` (where a seek for it must land at or before)."""
        return self.first_pts + math.floor(Fraction(index) / self.fps / self.time_base)

    def to_rgb(self, frame: av.VideoFrame) -> np.ndarray:
        """Convert with the source's own matrix and range (`colour.py`), then rotate for display."""
        if self.colour is None or Colour.of(frame) is None:
            array = frame.to_ndarray(format="rgb24", width=self.width, height=self.height)
        else:
            array = frame_to_rgb(frame, self.colour)
            if array.shape[:2] != (self.height, self.width):  # the stream changed size mid-way
                array = cv2.resize(array, (self.width, self.height), interpolation=cv2.INTER_AREA)
        if self.quarter_turns:
            array = np.ascontiguousarray(np.rot90(array, self.quarter_turns))
        return array


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video or still image; raises a one-line VideoError if it cannot be used as a video.

    Decodes the first frame (a file whose header parses but whose frames do not is rejected here, not halfway
    through inference) and demuxes, without decoding, every packet to find the true end of the stream.
    """
    return _scan(Path(path), Fraction(FPS))[0]


class VideoFrames:
    """A constant-`fps` view of a video file: `len()`, forward ranges and a ping-pong loop, all streaming."""

    def __init__(self, path: str | os.PathLike, fps: int | Fraction = FPS) -> None:
        self.path = Path(path)
        self.fps = Fraction(fps)
        self.info, self._timeline, self._still = _scan(self.path, self.fps)

    def __len__(self) -> int:
        return self.info.num_frames

    def iter_range(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames `start` .. `stop - 1` (RGB uint8 HxWx3), seeking near `start` and then decoding forward."""
        if not 0 <= start <= stop <= len(self):
            raise IndexError(f"frame range [{start}, {stop}) outside [0, {len(self)})")
        if self._still is not None:
            yield from (self._still.copy() for _ in range(start, stop))
            return
        decoder = self._decoder()
        try:
            yield from decoder.frames(start, stop)
        finally:
            decoder.close()

    def looped(self, total: int, block: int = 32) -> Iterator[tuple[int, np.ndarray]]:
        """Exactly `total` (source_index, frame) pairs, playing the video forward, reversed, forward, ...

        Matches upstream's `loop_video`, which concatenates whole copies of the clip and its reverse: the
        turn-around frame is repeated (0..n-1, n-1..0, 0..n-1, ...). `total < n` truncates the first pass.
        Reversed passes decode `block` frames forward from a seek and yield them reversed, so memory stays at
        `block` frames; the price is re-decoding from the keyframe before each block (more with long GOPs).
        """
        if block < 1 or total < 0:
            raise ValueError(f"need block >= 1 and total >= 0, got block={block}, total={total}")
        n = len(self)
        if n == 1 or self._still is not None:
            frame = next(self.iter_range(0, 1))
            yield from ((0, frame.copy()) for _ in range(total))
            return
        decoder = self._decoder()
        try:
            done, forward = 0, True
            while done < total:
                count = min(n, total - done)
                if forward:
                    yield from enumerate(decoder.frames(0, count))
                else:
                    for hi in range(n, n - count, -block):
                        lo = max(hi - block, n - count)
                        chunk = list(decoder.frames(lo, hi))
                        yield from zip(range(hi - 1, lo - 1, -1), reversed(chunk))
                done += count
                forward = not forward
        finally:
            decoder.close()

    def _decoder(self) -> _Decoder:
        assert self._timeline is not None, "stills are served from memory"
        return _Decoder(self.path, self._timeline)


class _SeekMissed(Exception):
    """A seek landed after the wanted frame (imprecise index); the decoder restarts from the beginning."""


class _Decoder:
    """One open container, reused across the ranges of a loop so each block costs a seek, not an open."""

    def __init__(self, path: Path, timeline: _Timeline) -> None:
        self.path = path
        self.timeline = timeline
        self._open()

    def _open(self) -> None:
        self.container = av.open(str(self.path))
        self.stream = _video_stream(self.container, self.path)
        self.stream.thread_type = "AUTO"
        self.fresh = True  # positioned at the start of the file: frame 0 needs no seek

    def close(self) -> None:
        self.container.close()

    def frames(self, start: int, stop: int) -> Iterator[np.ndarray]:
        """Output frames [start, stop); falls back to decoding from the file start if a seek cannot be trusted."""
        if start == stop:
            return
        from_start = start == 0 and self.fresh
        if not from_start:
            try:
                self.container.seek(self.timeline.pts_at(start), stream=self.stream, backward=True)
            except _DECODE_ERRORS:
                self._reopen()
                from_start = True
        self.fresh = False
        try:
            yield from self._resample(start, stop, from_start)
        except _SeekMissed:
            self._reopen()
            self.fresh = False
            yield from self._resample(start, stop, from_start=True)

    def _reopen(self) -> None:
        self.container.close()
        self._open()

    def _resample(self, start: int, stop: int, from_start: bool) -> Iterator[np.ndarray]:
        """Emit, for each output slot k, the last decoded frame whose slot <= k (see the module docstring).

        Only when decoding from the file start can a missing timestamp be counted on from the previous frame
        (raw elementary streams have none); after a seek it, like a seek that overshot, raises _SeekMissed.
        """
        timeline, k = self.timeline, start
        pending: av.VideoFrame | None = None
        last_pts: int | None = None
        for frame in self._decode():
            if frame.pts is None and not from_start:
                raise _SeekMissed
            pts = _next_pts(frame.pts, last_pts, timeline.frame_pts)
            last_pts = pts if last_pts is None else max(last_pts, pts)
            slot = timeline.slot(pts)
            if slot > k:
                if pending is None:
                    if not from_start:
                        raise _SeekMissed
                    pending = frame  # nothing precedes the stream's first frame: show it
                upto = min(slot, stop)
                yield from _repeat(timeline.to_rgb(pending), upto - k)
                k = upto
                if k >= stop:
                    return
            pending = frame
        if pending is None or last_pts is None or last_pts < timeline.last_pts:
            # frame-threaded decoding drops a damaged tail instead of raising: notice it by its timestamps
            reached = last_pts if last_pts is not None else timeline.first_pts
            seconds = float((reached - timeline.first_pts) * timeline.time_base)
            raise VideoError(f"{self.path} is corrupt or truncated: frames after {seconds:.2f}s cannot be decoded")
        yield from _repeat(timeline.to_rgb(pending), stop - k)

    def _decode(self) -> Iterator[av.VideoFrame]:
        try:
            yield from self.container.decode(self.stream)
        except _DECODE_ERRORS as exc:
            raise VideoError(f"{self.path} is corrupt or truncated: video decoding failed ({_reason(exc)})") from None


def _repeat(array: np.ndarray, count: int) -> Iterator[np.ndarray]:
    """Yield `array` `count` times as independent arrays (callers edit frames in place)."""
    for _ in range(count - 1):
        yield array.copy()
    if count > 0:
        yield array


def _scan(path: Path, fps: Fraction) -> tuple[VideoInfo, _Timeline | None, np.ndarray | None]:
    """Open, validate and measure `path`: a video gets its timeline, a still image its pixels (no timeline)."""
    if path.is_dir():
        raise VideoError(f"{path} is a directory, not a video")
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        container = av.open(str(path))
    except _DECODE_ERRORS as exc:
        still = _imread(path)
        if still is None:
            raise VideoError(f"cannot open {path} as a video or image ({_reason(exc)})") from None
        return _still_info(path, still, has_audio=False), None, still
    with container:
        if container.format.name in _NOT_VIDEO_FORMATS:
            raise VideoError(f"{path} is a text file, not a video or image")
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        has_audio = bool(container.streams.audio)
        is_image = container.format.name == "image2" or container.format.name.endswith("_pipe")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or Fraction(FPS)
        time_base = stream.time_base or Fraction(1, FPS)
        nominal = max(1, round(1 / (Fraction(rate) * time_base)))
        first, last, end, packets = _walk_packets(container, stream, nominal, path)
    turns = round((first.rotation or 0) / 90) % 4
    first_pts = _next_pts(first.pts, None, nominal)
    end, last = max(end, first_pts + 1), max(last, first_pts)
    colour = Colour.of(first)
    timeline = _Timeline(time_base, first_pts, last, nominal, fps, turns, first.width, first.height, colour)
    if is_image:
        still = _imread(path)
        if still is None:
            still = timeline.to_rgb(first)
        return _still_info(path, still, has_audio), None, still
    duration = (end - first_pts) * time_base
    width, height = (first.height, first.width) if turns % 2 else (first.width, first.height)
    source_fps = float(stream.average_rate) if stream.average_rate else packets / float(duration)
    info = VideoInfo(
        path=path,
        width=width,
        height=height,
        source_fps=source_fps,
        duration=float(duration),
        num_frames=max(1, math.floor(duration * fps + Fraction(1, 2))),  # nearest: half-slot tails round up
        is_image=False,
        has_audio=has_audio,
        colour=colour or Colour(),
    )
    return info, timeline, None


def _walk_packets(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, nominal: int, path: Path
) -> tuple[av.VideoFrame, int, int, int]:
    """Decode the first frame, then only demux: (first frame, last pts, end pts, packet count).

    Packets carry the stream's timing without the cost of decoding; the end is the largest pts + duration.
    """
    first: av.VideoFrame | None = None
    last: int | None = None
    end, packets, error = 0, 0, None
    try:
        for packet in container.demux(stream):
            if packet.size and not packet.is_discard:  # discarded: outside an MP4 edit list, never shown
                pts = _next_pts(packet.pts, last, nominal)
                last = pts if last is None else max(last, pts)
                end, packets = max(end, pts + (packet.duration or nominal)), packets + 1
            if first is None:
                first = next(iter(packet.decode()), None)
    except _DECODE_ERRORS as exc:
        error = exc  # a damaged tail: keep what was found; decoding reports the damage when it gets there
    if first is None or last is None:
        reason = f" ({_reason(error)})" if error else ""
        raise VideoError(f"{path} is corrupt or truncated: no video frame could be decoded{reason}")
    return first, last, end, packets


def _next_pts(pts: int | None, previous: int | None, nominal: int) -> int:
    """A frame's timestamp; streams without any (raw H.264) are timed at the nominal rate from 0."""
    if pts is not None:
        return pts
    return 0 if previous is None else previous + nominal


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    """The first real video stream; cover art embedded in audio files does not count."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise VideoError(f"{path} has no video stream")


def _imread(path: Path) -> np.ndarray | None:
    """RGB pixels of a still via OpenCV, which (unlike FFmpeg) applies the EXIF orientation of photos."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if image is None else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _still_info(path: Path, still: np.ndarray, has_audio: bool) -> VideoInfo:
    height, width = still.shape[:2]
    return VideoInfo(path, width, height, float(FPS), 1 / FPS, 1, True, has_audio)


def _reason(exc: BaseException | None) -> str:
    """First line of an FFmpeg error, so the VideoError message stays on one line."""
    text = str(exc).strip().splitlines() if exc else []
    return text[0] if text else type(exc).__name__
