"""Only the mouth changes: away from the pasted face, and in frames without a face, the output is the source up to
codec noise, for BT.601 / BT.709 / BT.2020, limited and full range, 8- and 10-bit sources; the tags are kept."""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from media.faces import astronaut_frames
from media.fidelity import by_frame, identity_run, stream_tags, untouched_stats, write_coded_clip
from media.speech import write_audio

from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions
from latentsync.video.colour import (
    RANGE_FULL,
    RANGE_LIMITED,
    RANGE_UNSPECIFIED,
    UNSPECIFIED,
    Colour,
    frame_to_rgb,
    rgb_to_frame,
)

FACELESS = range(10, 16)
CASES = {
    "bt601-limited-8bit-untagged": Colour(UNSPECIFIED, UNSPECIFIED, UNSPECIFIED, RANGE_UNSPECIFIED),
    "bt709-full-8bit": Colour(1, 1, 1, RANGE_FULL),
    "bt601-limited-8bit": Colour(6, 6, 6, RANGE_LIMITED),
    "bt709-limited-10bit": Colour(1, 1, 1, RANGE_LIMITED, bit_depth=10),
}


@pytest.fixture(scope="module")
def pipeline(tiny_model) -> LipSyncPipeline:
    return LipSyncPipeline.from_model(tiny_model, "cpu", "fp32")


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    """30 frames of 640x360: fine texture (grain of 1-2 px, std 6 levels, as in real footage) on the left three
    quarters, flat grey on the right; no face in 10..15."""
    grain = cv2.GaussianBlur(np.random.default_rng(1).normal(0, 14, (360, 640)), (0, 0), 1.0)[:, :, None]
    out = []
    for frame in astronaut_frames(30, size=(640, 360), fps=25, absent=(FACELESS.start, FACELESS.stop)):
        frame = np.clip(frame + grain, 0, 255).astype(np.uint8)
        frame[:, 480:] = 96
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def tone(tmp_path_factory) -> Path:
    t = np.arange(16000 * 30 // 25) / 16000
    return write_audio(tmp_path_factory.mktemp("audio") / "tone.wav", (0.2 * np.sin(440 * t)).astype(np.float32), 16000)


@pytest.mark.parametrize("case", list(CASES))
def test_untouched_pixels_equal_the_source(case, pipeline, frames, tone, tmp_path, monkeypatch):
    colour = CASES[case]
    video = write_coded_clip(tmp_path / "in.mp4", frames, colour)
    out = tmp_path / "out.mp4"
    # CRF 12 as the source: the comparison is about colour handling, not about x264's loss at the default 18.
    boxes = by_frame(identity_run(pipeline, video, tone, out, monkeypatch, RunOptions(steps=1, crf=12)), FACELESS)
    assert len(boxes) == 30 - len(FACELESS)
    assert stream_tags(out) == stream_tags(video)  # matrix, primaries, transfer, range and bit depth kept
    for name, region in {"textured": np.s_[:, :480], "flat": np.s_[:, 480:]}.items():
        for displayed in (False, True):
            stats = untouched_stats(video, out, boxes, region, displayed=displayed)
            assert stats.pixels > 100_000
            assert stats.mean_abs < 1.0 and abs(stats.bias) < 0.3, (name, displayed, stats)
            if name == "flat":  # no texture, no codec noise: only the colour round trip is left
                assert stats.mean_abs < 0.05, (name, displayed, stats)
    stats = untouched_stats(video, out, boxes, displayed=True, only=FACELESS)
    assert stats.pixels == len(FACELESS) * 640 * 360 and abs(stats.bias) < 0.3 and stats.mean_abs < 1.0


@pytest.mark.parametrize("depth", [8, 10])
@pytest.mark.parametrize("matrix,value_range", [(6, RANGE_LIMITED), (1, RANGE_FULL), (9, RANGE_LIMITED), (2, 0)])
def test_code_round_trip_is_exact(depth, matrix, value_range):
    """Codes -> RGB -> codes gives the codes back: 8-bit exactly, 10-bit within one 8-bit level (RGB is 8-bit)."""
    rng = np.random.default_rng(matrix)
    colour = Colour(matrix, matrix, matrix, value_range, bit_depth=depth)
    scale = 2 ** (depth - 8)
    frame = av.VideoFrame(64, 48, colour.pix_fmt)
    lows, highs = ((16, 16, 16), (235, 240, 240)) if value_range != RANGE_FULL else ((0, 0, 0), (255, 255, 255))
    # Codes inside the RGB gamut (a saturated chroma on a very dark or bright luma has no RGB colour to return to).
    expected = []
    for index, (plane, lo, hi) in enumerate(zip(frame.planes, lows, highs)):
        mid = (lo + hi) / 2
        spread = 80 * (hi - lo) / 219 if index == 0 else 15
        codes = np.rint(rng.uniform(mid - spread, mid + spread, (plane.height, plane.width)) * scale)
        codes = codes.astype(np.uint8 if depth == 8 else np.dtype("<u2"))
        padded = np.zeros((plane.height, plane.line_size // codes.itemsize), codes.dtype)
        padded[:, : plane.width] = codes
        plane.update(padded)
        expected.append(codes)
    back = rgb_to_frame(frame_to_rgb(frame, colour), colour)
    for index, (plane, codes) in enumerate(zip(back.planes, expected)):
        got = np.frombuffer(plane, codes.dtype).reshape(plane.height, -1)[:, : plane.width].astype(int)
        assert np.abs(got - codes.astype(int)).max() <= (0 if depth == 8 else scale), index
