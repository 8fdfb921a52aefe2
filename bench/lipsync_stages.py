"""Per-stage timing of `latentsync run` on a synthetic talking-head clip.

    .venv/bin/python bench/lipsync_stages.py --seconds 10 [--model DIR] [--steps 20] [--size 1280x720] [--cpu-only]

Makes its own input (the astronaut photo drifting in a 30 fps clip, TTS speech), runs the pipeline once and
prints a Markdown table: ms per frame for decode, face (landmarks + align + crop), audio, denoise (VAE + U-Net),
paste, encode, plus frames/s and peak RSS. With no --model it initialises the small CPU model.
Stages overlap in threads, so their sum can exceed the wall time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from media.clips import write_clip  # noqa: E402
from media.faces import astronaut_frames  # noqa: E402
from media.speech import speech, write_audio  # noqa: E402

from latentsync.models.create import create_model_dir  # noqa: E402
from latentsync.pipeline.lipsync import LipSyncPipeline, RunOptions  # noqa: E402

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "A journey of a thousand miles begins with a single step, so let us start walking today.",
]


def make_inputs(folder: Path, seconds: float, size: tuple[int, int]) -> tuple[Path, Path]:
    text = " ".join(SENTENCES[i % len(SENTENCES)] for i in range(int(seconds // 4) + 1))
    wav = speech(text, rate=44100)[: int(seconds * 44100)]
    audio = write_audio(folder / "speech.wav", wav, 44100, channels=2)
    video = folder / "clip.mp4"
    write_clip(video, astronaut_frames(int(seconds * 30), size=size, fps=30, seed=0), fps=30)
    return video, audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--model", help="model folder (default: a fresh small model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--cpu-only", action="store_true",
                        help="the denoiser hands the crops back unchanged: the throughput of the CPU stages alone")
    args = parser.parse_args()
    if args.cpu_only:
        from latentsync.pipeline.denoise import ChunkDenoiser

        ChunkDenoiser.batch = lambda self, chunks: [crops for crops, _ in chunks]  # type: ignore[method-assign]
    size = tuple(int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        t0 = time.perf_counter()
        video, audio = make_inputs(folder, args.seconds, size)
        print(f"inputs made in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        model = args.model or create_model_dir("small", folder / "model", seed=0).root
        pipeline = LipSyncPipeline.from_model(model, args.device, args.dtype)
        report = pipeline.run(video, audio, folder / "out.mp4", RunOptions(steps=args.steps))
    print(f"| input | {args.seconds:g} s, {size[0]}x{size[1]} 30 fps, {args.steps} steps, model {args.model or 'small (fresh)'} |")
    print("| stage | total s | ms/frame |\n|---|---:|---:|")
    for name, secs in report.stage_seconds.items():
        print(f"| {name} | {secs:.2f} | {1000 * secs / report.frames:.1f} |")
    print(f"| **wall** | {report.seconds:.2f} | {1000 * report.seconds / report.frames:.1f} ({report.frames / report.seconds:.2f} frames/s) |")
    print(f"\nframes {report.frames}, without face {report.frames_without_face}, peak RSS {report.peak_rss_mb:.0f} MB"
          + (f", peak VRAM {report.peak_vram_mb:.0f} MB" if report.peak_vram_mb else ""))


if __name__ == "__main__":
    main()
