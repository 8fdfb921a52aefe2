"""Small test videos written with PyAV, whose frames carry their own index so tests can tell which was shown.

`index_frame(i)` draws i as 8 big black/white blocks (binary, most significant bit first) over a colour
gradient; `read_index` recovers it from a decoded frame despite codec noise, because each block is large and
flat and only its mean is compared with mid-grey.
"""

from __future__ import annotations

from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

BITS = 8  # indices 0..255
_GRID = (2, 4)  # rows x columns of bit blocks


def index_frame(index: int, width: int = 160, height: int = 120) -> np.ndarray:
    """RGB uint8 frame encoding `index`: the top 3/4 holds the bit blocks, the bottom a colour gradient."""
    if not 0 <= index < 2**BITS:
        raise ValueError(f"index {index} does not fit in {BITS} bits")
    frame = np.zeros((height, width, 3), np.uint8)
    band = height * 3 // 4
    rows, cols = _GRID
    for bit in range(BITS):
        r, c = divmod(bit, cols)
        if index >> (BITS - 1 - bit) & 1:
            frame[r * band // rows : (r + 1) * band // rows, c * width // cols : (c + 1) * width // cols] = 255
    x = np.linspace(0, 255, width, dtype=np.float32)
    frame[band:, :, 0] = x.astype(np.uint8)
    frame[band:, :, 1] = 255 - x.astype(np.uint8)
    frame[band:, :, 2] = 128
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of `index_frame` for a decoded (lossy) frame of the same size, judged away from block edges."""
    height, width = frame.shape[:2]
    band = height * 3 // 4
    rows, cols = _GRID
    value = 0
    for bit in range(BITS):
        r, c = divmod(bit, cols)
        y0, y1 = r * band // rows, (r + 1) * band // rows
        x0, x1 = c * width // cols, (c + 1) * width // cols
        inner = frame[y0 + 4 : y1 - 4, x0 + 4 : x1 - 4]
        value = value << 1 | int(inner.mean() > 128)
    return value


def write_clip(
    path: str | Path,
    frames: Iterable[np.ndarray] | np.ndarray,
    fps: int | Fraction = 25,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    audio: tuple[np.ndarray, int, int] | None = None,
    rotation: int = 0,
    options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
) -> Path:
    """Write RGB frames at a constant `fps`; `audio=(mono float wav, rate, channels)` adds an AAC track.

    Without `audio` the clip has no audio stream at all. `rotation` stores a display matrix (degrees
    counter-clockwise), as phones do for portrait recordings. `options` go to the muxer (e.g. faststart),
    `codec_options` to the encoder (e.g. a short GOP, so that seeks land mid-stream).
    """
    path = Path(path)
    with av.open(str(path), "w", options=options or {}) as out:
        stream = None
        audio_stream = None
        if audio is not None:
            wav, rate, channels = audio
            audio_stream = out.add_stream("aac", rate=rate, layout="mono" if channels == 1 else "stereo")
        for i, array in enumerate(frames):
            if stream is None:
                stream = out.add_stream(codec, rate=fps, options=codec_options or {})
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = pix_fmt
                if rotation:
                    stream.set_display_rotation(rotation)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        assert stream is not None, "write_clip needs at least one frame"
        out.mux(stream.encode(None))
        if audio_stream is not None:
            _encode_audio(out, audio_stream, wav, rate, channels)
    return path


def write_vfr_clip(
    path: str | Path, frames: Iterable[np.ndarray], times_ms: Iterable[int], codec: str = "libx264"
) -> Path:
    """A variable-frame-rate clip: frame i is presented at `times_ms[i]` (time_base 1/1000, irregular gaps)."""
    path = Path(path)
    tb = Fraction(1, 1000)
    with av.open(str(path), "w") as out:
        stream = None
        for array, t in zip(frames, times_ms, strict=True):
            if stream is None:
                stream = out.add_stream(codec, rate=25)
                stream.height, stream.width = array.shape[:2]
                stream.pix_fmt = "yuv420p"
                stream.time_base = stream.codec_context.time_base = tb
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            frame.pts, frame.time_base = t, tb
            out.mux(stream.encode(frame))
        assert stream is not None, "write_vfr_clip needs at least one frame"
        out.mux(stream.encode(None))
    return path


def truncate(src: str | Path, dst: str | Path, keep: float = 0.5) -> Path:
    """Copy the first `keep` fraction of a file's bytes: a download or copy that stopped half-way."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def _encode_audio(
    out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, wav: np.ndarray, rate: int, channels: int
) -> None:
    layout = "mono" if channels == 1 else "stereo"
    planar = np.repeat(wav.astype(np.float32)[None, :], channels, 0)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(planar), format="fltp", layout=layout)
    frame.sample_rate, frame.pts = rate, 0
    out.mux(stream.encode(frame))
    out.mux(stream.encode(None))
