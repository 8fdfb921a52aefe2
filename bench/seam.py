"""The paste seam on real faces: upstream's paste against the seamless one (`--paste`), same model, same speech.

    .venv/bin/python bench/seam.py                                   # the held-out people's clips, demo model
    .venv/bin/python bench/seam.py --model DIR --seconds 3 CLIP ...  # any clips, any model

Each clip is lip-synced to another clip's speech (the next one in the list, cut to `--seconds`) twice, and every
output frame with a face is measured against the source frame (`latentsync.eval.seam`): the gradient energy on the
regenerated region's edge over that just inside and outside (the source's own ratio in brackets) and the colour
step across the edge. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media.speech import write_audio  # noqa: E402

from latentsync.audio.load import load_audio  # noqa: E402
from latentsync.eval.seam import measure_seam, paste_region  # noqa: E402
from latentsync.face.align import Aligner  # noqa: E402
from latentsync.face.track import FaceTracker  # noqa: E402
from latentsync.models.whisper import SAMPLE_RATE  # noqa: E402
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions  # noqa: E402
from latentsync.video.reader import VideoFrames  # noqa: E402

CLIPS = Path(__file__).resolve().parents[2] / "shared/data/talking/clips"
HELD_OUT = ["grid_lwbsza.mpg", "hdtf_katiehill.mp4", "pcavs_Audio_Source_681100216.mp4", "real3d_may.mp4",
            "retalking_5.mp4", "tps_driving.mp4"]


def source_alignment(video: Path, count: int, resolution: int) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(frame, affine or None) for the first `count` frames, found as the pipeline finds them."""
    aligner, out, track = Aligner(resolution), [], None
    with FaceTracker("largest") as tracker:
        for frame in VideoFrames(video).iter_range(0, count):
            face = tracker(frame)
            m = None
            if face is not None:
                if tracker.track_id != track:
                    aligner.reset()
                    track = tracker.track_id
                m = aligner.fit(face.points3)
            out.append((frame, m))
    return out


def seam_of(output: Path, sources: list[tuple[np.ndarray, np.ndarray | None]], pipeline: LipSyncPipeline
            ) -> tuple[float, float, float]:
    """Mean (ratio, source ratio, step) over the frames with a face."""
    aligner = Aligner(pipeline.models.resolution)
    rows = []
    for frame, (source, m) in zip(VideoFrames(output).iter_range(0, len(sources)), sources):
        if m is not None:
            region, width = paste_region(aligner, source.shape, m, pipeline.mask)
            s = measure_seam(frame, source, region, width)
            rows.append((s.ratio, s.source_ratio, s.step))
    return tuple(np.mean(rows, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clips", nargs="*", type=Path, default=[CLIPS / name for name in HELD_OUT])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    pipeline = LipSyncPipeline.from_model(args.model)
    print("| clip | upstream: edge / around (source) | upstream: step | seamless: edge / around | seamless: step |")
    print("|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for i, clip in enumerate(args.clips):
            speech = args.clips[(i + 1) % len(args.clips)]
            wav = load_audio(speech, SAMPLE_RATE)[: int(args.seconds * SAMPLE_RATE)]
            audio = write_audio(Path(tmp) / "speech.wav", wav, SAMPLE_RATE)
            count = round(args.seconds * 25)
            sources = source_alignment(clip, count, pipeline.models.resolution)
            cells = []
            for mode in ("upstream", "seamless"):
                out = Path(tmp) / f"{mode}.mp4"
                pipeline.run(clip, audio, out, RunOptions(paste=mode))
                ratio, source_ratio, step = seam_of(out, sources, pipeline)
                cells += [f"{ratio:.2f} ({source_ratio:.2f})", f"{step:.1f}"]
            print(f"| {clip.name} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
