"""Measuring "only the mouth changes": a pipeline run whose denoiser hands the crops back, compared with its source
in the file's own Y'CbCr codes (no RGB conversion of ours in the way), away from every pasted region.

Used by tests/test_fidelity.py and bench/fidelity.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from latentsync.face.align import Aligner
from latentsync.pipeline.denoise import ChunkDenoiser
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
from latentsync.video.colour import Colour, frame_to_rgb, rgb_to_frame

MARGIN = 16  # px around a pasted region that count as "near the face" (codec blocks straddle its edge)


def write_coded_clip(path: Path, frames: Iterable[np.ndarray], colour: Colour, fps: int = 25, crf: int = 12) -> Path:
    """Encode RGB frames as H.264 coded exactly as `colour` says (matrix, range, depth, tags)."""
    with av.open(str(path), "w") as out:
        stream = None
        for i, rgb in enumerate(frames):
            if stream is None:
                stream = out.add_stream("libx264", rate=fps, options={"crf": str(crf)})
                stream.height, stream.width = rgb.shape[:2]
                stream.pix_fmt = colour.pix_fmt
                colour.tag(stream.codec_context)
            frame = rgb_to_frame(rgb, colour)
            frame.pts = i
            out.mux(stream.encode(frame))
        assert stream is not None
        out.mux(stream.encode(None))
    return path


def coded_planes(path: Path, displayed: bool = False) -> list[np.ndarray]:
    """Per frame, Y', Cb and Cr at luma resolution (chroma repeated), float32 in 8-bit levels; or with
    `displayed`, RGB as a player shows the file (the matrix and range its tags say)."""
    planes = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if displayed:
                planes.append(frame_to_rgb(frame, Colour.of(frame)).astype(np.float32))
                continue
            scale = 1.0 if frame.format.name in ("yuv420p", "yuvj420p") else 0.25
            arrays = []
            for plane in frame.planes:
                dtype = np.uint8 if scale == 1.0 else np.dtype("<u2")
                data = np.frombuffer(plane, dtype).reshape(plane.height, -1)[:, : plane.width].astype(np.float32)
                arrays.append(np.repeat(np.repeat(data, 2, 0), 2, 1)[: frame.height, : frame.width] if arrays else data)
            planes.append(np.stack(arrays, -1) * scale)
    return planes


def stream_tags(path: Path) -> tuple[int, int, int, int, str]:
    """(matrix, primaries, transfer, range, pixel format) as the first decoded frame carries them."""
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return (int(frame.colorspace), int(frame.color_primaries), int(frame.color_trc), int(frame.color_range),
                frame.format.name)


@dataclass
class Untouched:
    """Output minus source, in 8-bit code levels, over pixels no paste came near."""

    mean_abs: float
    bias: float
    pixels: int


def identity_run(pipeline: LipSyncPipeline, video: Path, audio: Path | None, out: Path, monkeypatch,
                 options: RunOptions = RunOptions(steps=1)) -> list[tuple[int, int, int, int] | None]:
    """Run with a denoiser that returns the crops unchanged; per pasted face frame, in order, the box it touched."""
    boxes: list[tuple[int, int, int, int] | None] = []
    restore = Aligner.restore

    def recording_restore(self: Aligner, frame: np.ndarray, crop: np.ndarray, m: np.ndarray,
                          weight: np.ndarray | None = None) -> np.ndarray:
        boxes.append(self._roi(frame.shape, m))
        return restore(self, frame, crop, m, weight)

    monkeypatch.setattr(ChunkDenoiser, "batch", lambda self, chunks: [crops for crops, _ in chunks])
    monkeypatch.setattr(Aligner, "restore", recording_restore)
    pipeline.run(video, audio, out, options)
    return boxes


def by_frame(boxes: list, faceless: Iterable[int] = ()) -> dict[int, tuple[int, int, int, int]]:
    """Frame index -> pasted box: face frames are pasted in order, skipping the known face-less ones."""
    skip = set(faceless)
    frames = (i for i in range(len(boxes) + len(skip)) if i not in skip)
    return {i: box for i, box in zip(frames, boxes) if box is not None}


def untouched_stats(source: Path, output: Path, boxes: dict[int, tuple[int, int, int, int]],
                    region: tuple[slice, slice] | None = None, displayed: bool = False,
                    only: Iterable[int] | None = None) -> Untouched:
    """Compare every frame outside its pasted box (+ MARGIN); frames absent from `boxes` are compared whole.

    `region` restricts the comparison to part of the frame (e.g. its flat or its textured half); `displayed`
    compares RGB as players show the two files (see `coded_planes`); `only` limits it to those frames.
    """
    src, out = coded_planes(source, displayed), coded_planes(output, displayed)
    diffs = []
    frames = set(range(len(src))) if only is None else set(only)
    for i, (a, b) in enumerate(zip(src, out)):
        if i not in frames:
            continue
        keep = np.ones(a.shape[:2], bool)
        if i in boxes:
            x0, y0, x1, y1 = boxes[i]
            keep[max(y0 - MARGIN, 0) : y1 + MARGIN, max(x0 - MARGIN, 0) : x1 + MARGIN] = False
        if region is not None:
            inside = np.zeros_like(keep)
            inside[region] = True
            keep &= inside
        diffs.append((b - a)[keep].ravel())
    d = np.concatenate(diffs)
    return Untouched(float(np.abs(d).mean()), float(d.mean()), int(d.size // 3))
