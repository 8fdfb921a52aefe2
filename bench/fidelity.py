"""How far from the face the output equals the source: a run whose denoiser hands the crops back unchanged.

    .venv/bin/python bench/fidelity.py                                 # synthetic sources: BT.601/709, ranges, depths
    .venv/bin/python bench/fidelity.py --portrait ../shared/data/talking/clips/retalking_1.mp4   # a real face, 1080x1920
    .venv/bin/python bench/fidelity.py --video my.mp4                  # any file as it is

Differences are taken in the files' own Y'CbCr codes (8-bit levels; 10-bit codes / 4), over every pixel more than
16 px from any pasted region, and over whole frames that have no face. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media.faces import astronaut_frames  # noqa: E402
from media.speech import write_audio  # noqa: E402
from media.fidelity import by_frame, identity_run, stream_tags, untouched_stats, write_coded_clip  # noqa: E402

from latentsync.models.create import create_model_dir  # noqa: E402
from latentsync.pipeline.lipsync import LipSyncPipeline  # noqa: E402
from latentsync.video.colour import RANGE_FULL, RANGE_LIMITED, RANGE_UNSPECIFIED, UNSPECIFIED, Colour  # noqa: E402

CASES = {
    "BT.601 limited 8-bit, untagged": Colour(UNSPECIFIED, UNSPECIFIED, UNSPECIFIED, RANGE_UNSPECIFIED),
    "BT.601 limited 8-bit": Colour(6, 6, 6, RANGE_LIMITED),
    "BT.709 limited 8-bit": Colour(1, 1, 1, RANGE_LIMITED),
    "BT.709 full 8-bit": Colour(1, 1, 1, RANGE_FULL),
    "BT.601 full 8-bit": Colour(5, 5, 6, RANGE_FULL),
    "BT.709 limited 10-bit": Colour(1, 1, 1, RANGE_LIMITED, bit_depth=10),
    "BT.2020 limited 10-bit": Colour(9, 9, 14, RANGE_LIMITED, bit_depth=10),
}


def portrait(clip: Path, out: Path, seconds: float) -> Path:
    """A real clip as a phone shows it: 1080x1920, the clip 1080 wide in the middle, a blurred copy above/below."""
    frames = []
    with av.open(str(clip)) as container:
        for frame in container.decode(video=0):
            rgb = frame.to_ndarray(format="rgb24")
            fill = cv2.GaussianBlur(cv2.resize(rgb, (1080, 1920)), (0, 0), 12)
            h = round(rgb.shape[0] * 1080 / rgb.shape[1])
            y0 = (1920 - h) // 2
            fill[y0 : y0 + h] = cv2.resize(rgb, (1080, h), interpolation=cv2.INTER_CUBIC)
            frames.append(fill)
            if len(frames) >= seconds * 25:
                break
    untagged = Colour(UNSPECIFIED, UNSPECIFIED, UNSPECIFIED, RANGE_UNSPECIFIED)  # as the phone clip
    return write_coded_clip(out, frames, untagged, crf=16)


def textured_frames() -> list[np.ndarray]:
    """50 frames of 640x360 (face-less 20..29): fine grain over the left part, the right quarter flat grey."""
    grain = np.random.default_rng(1).normal(0, 12, (360, 640, 1))
    frames = []
    for frame in astronaut_frames(50, size=(640, 360), fps=25, absent=(20, 30), textured=True):
        frame = np.clip(frame + grain, 0, 255).astype(np.uint8)
        frame[:, 480:] = 96
        frames.append(frame)
    return frames


def measure(pipeline: LipSyncPipeline, video: Path, audio: Path | None, folder: Path, label: str,
            faceless: range = range(0), halves: bool = False) -> list[str]:
    out = folder / f"out-{abs(hash(label))}.mp4"
    with pytest.MonkeyPatch.context() as mp:
        boxes = by_frame(identity_run(pipeline, video, audio, out, mp), faceless)
    rows = []
    with av.open(str(video)) as c:
        width = c.streams.video[0].codec_context.width
    regions = {"whole": None}
    if halves:
        regions = {"textured": (slice(None), slice(0, width * 3 // 4)), "flat": (slice(None), slice(width * 3 // 4, None))}
    same_tags = stream_tags(video) == stream_tags(out)
    for name, region in regions.items():
        stats = untouched_stats(video, out, boxes, region)
        rows.append(f"| {label} | {name} | {stats.mean_abs:.3f} | {stats.bias:+.3f} | {stats.pixels} | {same_tags} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, help="measure this file as it is")
    parser.add_argument("--portrait", type=Path, help="make a 1080x1920 version of this real clip and measure it")
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = create_model_dir(Path(__file__).parents[1] / "tests/configs/unet_tiny.yaml", folder / "model",
                                 vae=Path(__file__).parents[1] / "tests/configs/vae_tiny", seed=0).root
        pipeline = LipSyncPipeline.from_model(model, "cpu", "fp32")
        print("| source | region | mean abs diff | mean bias | pixels | tags kept |\n|---|---|---:|---:|---:|---:|")
        if args.video or args.portrait:
            video = args.video or portrait(args.portrait, folder / "portrait.mp4", args.seconds)
            rows = measure(pipeline, video, args.portrait, folder, str(args.video or f"{args.portrait.name} 1080x1920"))
        else:
            frames = textured_frames()
            t = np.arange(2 * 16000) / 16000
            audio = write_audio(folder / "tone.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
            rows = []
            for label, colour in CASES.items():
                video = write_coded_clip(folder / f"{abs(hash(label))}.mp4", frames, colour)
                rows += measure(pipeline, video, audio, folder, label, faceless=range(20, 30), halves=True)
        print("\n".join(rows))


if __name__ == "__main__":
    main()
